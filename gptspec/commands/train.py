"""gptspec train: train a GPT language model on text files (or --demo: on Python's own docs, offline).

    gptspec train --data notes/*.txt --config gpt2 --n-layer 4 --n-embd 256 --n-head 4 --n-ctx 256 \\
        --train-tokenizer 4096 --pack --steps 2000 --out run/
    gptspec train --resume run/                       # continue, bit for bit, after Ctrl-C or a crash
    gptspec generate --weights run/ --prompt "..."     # run/ always holds the latest checkpoint
"""
from __future__ import annotations

import argparse

from gptspec.training.options import RECOMPUTE_HELP, add_model_arguments

# Options that define a run, with their defaults. run.json stores them; --resume refuses changes.
RUN_DEFAULTS = dict(
    data=None, valid=None, valid_fraction=0.05, split_on_blank_lines=False, loss_on="all", pack=False,
    seq_len=None, model=None, weights=None, config=None, n_layer=None, n_embd=None, n_head=None, n_ctx=None,
    vocab=None, train_tokenizer=None, backend=None, amp="O0", lr=3e-4, min_lr=0.0, warmup=0,
    schedule="cosine", weight_decay=0.1, max_grad_norm=1.0, batch_size=8, grad_accum=1, steps=None,
    epochs=None, dropout=0.0, seed=0, demo=False)
# Options a resumed run may change: they decide what is logged and saved, or how much memory the same
# computation takes (--recompute), not what is computed.
FREE_DEFAULTS = dict(eval_every=None, save_every=None, recompute=False)

# --demo: a small GPT-2 with its own BPE on pydoc_data.topics; ~2 minutes on a 2-core CPU. The NumPy
# spec is its default backend: on CPU it runs this small model several times faster than MindSpore's
# graph (--demo --backend mindspore computes the same losses, more slowly).
DEMO = dict(demo=True, config="gpt2", n_layer=4, n_embd=128, n_head=4, n_ctx=128, train_tokenizer=2048,
            pack=True, seq_len=128, batch_size=16, lr=2e-3, min_lr=2e-4, warmup=30, steps=300, weight_decay=0.1,
            dropout=0.0, backend="numpy")
DEMO_FREE = dict(eval_every=50, save_every=100)


def register(subparsers):
    parser = subparsers.add_parser("train", help="train a GPT language model on text files (--demo: offline demo)",
                                   description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data", nargs="+", metavar="FILE", help="text files (one document each) or .jsonl files "
                                                                "with \"prompt\" and \"completion\" fields")
    data.add_argument("--valid", nargs="+", metavar="FILE", help="held-out files for --eval-every")
    data.add_argument("--valid-fraction", type=float, metavar="F",
                      help="without --valid, hold out the last F of the training windows (default 0.05; 0: none)")
    data.add_argument("--split-on-blank-lines", action="store_true", default=None,
                      help="one document per blank-line-separated paragraph instead of per file")
    data.add_argument("--loss-on", choices=("all", "completion"),
                      help="completion: no loss on the prompt tokens of .jsonl rows (default all)")
    data.add_argument("--pack", action="store_true", default=None,
                      help="join documents with <|endoftext|> and cut into windows, instead of one padded "
                           "or truncated document per row")
    data.add_argument("--seq-len", type=int, metavar="L", help="tokens per row (default min(1024, n_ctx))")
    model = parser.add_argument_group("model")
    add_model_arguments(model, model="published weights (fetched): continue training them",
                        weights="a checkpoint folder: continue training it",
                        config="a new model of this preset's shape (e.g. gpt2), random init",
                        train_tokenizer="with --config: learn a byte-level BPE of N tokens on the training text")
    backend = parser.add_argument_group("backend")
    backend.add_argument("--backend", choices=("numpy", "mindspore"),
                         help="default: mindspore (graph mode) when installed, else numpy")
    backend.add_argument("--amp", choices=("O0", "O1", "O2", "O3"), help="MindSpore mixed precision (default O0)")
    backend.add_argument("--recompute", action="store_true", default=None, help=RECOMPUTE_HELP)
    optim = parser.add_argument_group("optimization")
    optim.add_argument("--lr", type=float, help="peak learning rate (default 3e-4)")
    optim.add_argument("--min-lr", type=float, help="learning rate at the end of the schedule (default 0)")
    optim.add_argument("--warmup", type=int, metavar="STEPS", help="linear warmup steps (default 0)")
    optim.add_argument("--schedule", choices=("cosine", "linear"), help="decay after warmup (default cosine)")
    optim.add_argument("--weight-decay", type=float, help="AdamW decay on matrices and embeddings (default 0.1)")
    optim.add_argument("--max-grad-norm", type=float, help="clip the global gradient norm (default 1.0; 0: off)")
    optim.add_argument("--batch-size", type=int, help="rows per optimizer step, over all ranks (default 8)")
    optim.add_argument("--grad-accum", type=int, metavar="K", help="split each batch into K micro-batches (default 1)")
    optim.add_argument("--steps", type=int, help="optimizer steps (default: --epochs 1)")
    optim.add_argument("--epochs", type=float, help="passes over the training windows, instead of --steps")
    optim.add_argument("--dropout", type=float, help="dropout rate while training (default 0)")
    optim.add_argument("--seed", type=int, help="seed of the init, the shuffling and dropout (default 0)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", help="the run's folder (default gptspec-demo for --demo)")
    out.add_argument("--eval-every", type=int, metavar="N", help="held-out loss every N steps (default: 10 times a run)")
    out.add_argument("--save-every", type=int, metavar="N", help="checkpoint every N steps (default: at the end only)")
    out.add_argument("--resume", metavar="DIR", help="continue the run in DIR with its own options")
    out.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar on stderr (default: when stderr is a terminal)")
    parser.add_argument("--demo", action="store_true", default=None,
                        help="train a small GPT-2 with its own BPE on Python's docs (pydoc_data.topics), offline")
    parser.set_defaults(func=run)


def run(args) -> int:
    from gptspec.training.lm_task import LanguageModelling
    from gptspec.training.run import run_task

    return run_task(args, LanguageModelling(RUN_DEFAULTS, FREE_DEFAULTS, DEMO, DEMO_FREE))
