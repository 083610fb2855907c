"""gptspec finetune: fine-tune GPT-1 or GPT-2 on GPT-1's four tasks: classify, entail, similar, choice.

A head on the _classify_ token; loss = task loss + --lm-coef x language modelling.

    gptspec finetune --task classify --data train.csv --valid valid.csv --model openai-gpt --out clf/
    gptspec classify --weights clf/ "what a great film" "dull and far too long"

--task entail: premise, hypothesis, label columns; similar: text_a, text_b, label (both orders are
read, their classify states summed); choice: context, answers (a JSONL list, or CSV columns
answers_0, answers_1, ...), label = the right answer's index (one score per answer, softmax).
"""
from __future__ import annotations

import argparse

from gptspec.training.classify_task import TASKS
from gptspec.training.options import RECOMPUTE_HELP, add_model_arguments

RUN_DEFAULTS = dict(
    task="classify", data=None, valid=None, text_column=None, premise_column="premise",
    hypothesis_column="hypothesis", text_a_column="text_a", text_b_column="text_b", context_column="context",
    answers_column="answers", label_column="label", seq_len=None,
    model=None, weights=None, config=None, n_layer=None, n_embd=None, n_head=None, n_ctx=None, vocab=None,
    train_tokenizer=None, backend=None, amp="O0", dropout=0.0, lm_coef=0.5, lr=6.25e-5, min_lr=0.0, warmup=0,
    schedule="linear", weight_decay=0.01, max_grad_norm=1.0, batch_size=8, grad_accum=1, steps=None, epochs=None, seed=0)
FREE_DEFAULTS = dict(eval_every=None, save_every=None, recompute=False)


def register(subparsers):
    parser = subparsers.add_parser("finetune", help="fine-tune a GPT for text classification (GPT-1's head)",
                                   description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=TASKS,
                        help="classify: (text, label) rows; entail: (premise, hypothesis, label); similar: "
                             "(text_a, text_b, label); choice: (context, answers, index of the right one)")
    parser.add_argument("--data", nargs="+", metavar="FILE", help=".jsonl or .csv rows with a text and a label column")
    parser.add_argument("--valid", nargs="+", metavar="FILE", help="held-out rows: accuracy each epoch, best kept")
    parser.add_argument("--text-column", help="classify: default 'text'")
    parser.add_argument("--premise-column", help="entail: default 'premise'")
    parser.add_argument("--hypothesis-column", help="entail: default 'hypothesis'")
    parser.add_argument("--text-a-column", help="similar: default 'text_a'")
    parser.add_argument("--text-b-column", help="similar: default 'text_b'")
    parser.add_argument("--context-column", help="choice: default 'context'")
    parser.add_argument("--answers-column", help="choice: default 'answers' (CSV: answers_0, answers_1, ...)")
    parser.add_argument("--label-column",
                        help="default 'label' (strings or integers; choice: the right answer's index)")
    parser.add_argument("--seq-len", type=int, help="tokens per row (default: the longest row, at most n_ctx)")
    add_model_arguments(parser, model="published weights (e.g. openai-gpt, gpt2)", weights="a checkpoint folder",
                        config="a new, randomly initialised model of this preset's shape",
                        train_tokenizer="with --config: learn a BPE of N tokens")
    parser.add_argument("--backend", choices=("numpy", "mindspore"),
                        help="default: mindspore (graph mode) when installed, else numpy")
    parser.add_argument("--amp", choices=("O0", "O1", "O2", "O3"), help="MindSpore mixed precision (default O0)")
    parser.add_argument("--recompute", action="store_true", default=None, help=RECOMPUTE_HELP)
    parser.add_argument("--dropout", type=float, help="dropout rate while training (default 0; GPT-1 used 0.1)")
    parser.add_argument("--lm-coef", type=float, help="weight of the auxiliary LM loss (default 0.5, GPT-1's)")
    for name, kind, text in (("lr", float, "default 6.25e-5 (GPT-1)"), ("min-lr", float, "default 0"),
                             ("warmup", int, "steps, default 0"), ("weight-decay", float, "default 0.01"),
                             ("max-grad-norm", float, "default 1.0; 0: off"), ("batch-size", int, "default 8"),
                             ("grad-accum", int, "micro-batches per update, default 1"),
                             ("steps", int, "default: --epochs"), ("epochs", float, "default 3"),
                             ("seed", int, "default 0")):
        parser.add_argument(f"--{name}", type=kind, help=text)
    parser.add_argument("--schedule", choices=("cosine", "linear"), help="default linear (GPT-1)")
    parser.add_argument("--out", metavar="DIR", help="the run's folder")
    parser.add_argument("--eval-every", type=int, metavar="N", help="held-out accuracy every N steps (default: each epoch)")
    parser.add_argument("--save-every", type=int, metavar="N")
    parser.add_argument("--resume", metavar="DIR")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    parser.set_defaults(func=run)


def run(args) -> int:
    from gptspec.training.classify_task import Classification
    from gptspec.training.run import run_task

    return run_task(args, Classification(RUN_DEFAULTS, FREE_DEFAULTS))
