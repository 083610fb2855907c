"""gptspec train: train a GPT language model on text files (or --demo: on Python's own docs, offline).

    gptspec train --data notes/*.txt --config gpt2 --n-layer 4 --n-embd 256 --n-head 4 --n-ctx 256 \\
        --train-tokenizer 4096 --pack --steps 2000 --out run/
    gptspec train --resume run/                       # continue, bit for bit, after Ctrl-C or a crash
    gptspec generate --weights run/ --prompt "..."     # run/ always holds the latest checkpoint
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np

# Options that define a run, with their defaults. run.json stores them; --resume refuses changes.
RUN_DEFAULTS = dict(
    data=None, valid=None, valid_fraction=0.05, split_on_blank_lines=False, loss_on="all", pack=False,
    seq_len=None, model=None, weights=None, config=None, n_layer=None, n_embd=None, n_head=None, n_ctx=None,
    vocab=None, train_tokenizer=None, backend=None, amp="O0", lr=3e-4, min_lr=0.0, warmup=0,
    schedule="cosine", weight_decay=0.1, max_grad_norm=1.0, batch_size=8, grad_accum=1, steps=None,
    epochs=None, dropout=0.0, seed=0, demo=False)
# Options a resumed run may change: they decide what is logged and saved, not what is computed.
FREE_DEFAULTS = dict(eval_every=None, save_every=None)
PATH_OPTIONS = ("data", "valid", "weights", "vocab")

# --demo: a small GPT-2 with its own BPE on pydoc_data.topics; ~2 minutes on a 2-core CPU. The NumPy
# spec is its default backend: on CPU it runs this small model several times faster than MindSpore's
# graph (--demo --backend mindspore computes the same losses, more slowly).
DEMO = dict(demo=True, config="gpt2", n_layer=4, n_embd=128, n_head=4, n_ctx=128, train_tokenizer=2048,
            pack=True, seq_len=128, batch_size=16, lr=2e-3, min_lr=2e-4, warmup=30, steps=300, weight_decay=0.1,
            dropout=0.0, backend="numpy")
DEMO_FREE = dict(eval_every=50, save_every=100)
DEMO_PROMPTS = ("The for statement", "A class definition")
MIN_BPE_VOCAB = 257     # a byte-level BPE: the 256 bytes and <|endoftext|>, before any merge


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
    model.add_argument("--model", metavar="NAME", help="published weights (fetched): continue training them")
    model.add_argument("--weights", metavar="DIR", help="a checkpoint folder: continue training it")
    model.add_argument("--config", metavar="NAME", help="a new model of this preset's shape (e.g. gpt2), random init")
    for name in ("n-layer", "n-embd", "n-head", "n-ctx"):
        model.add_argument(f"--{name}", type=int, metavar="N", help=f"with --config: override {name.replace('-', '_')}")
    model.add_argument("--vocab", metavar="DIR", help="tokenizer folder (default: the checkpoint's own)")
    model.add_argument("--train-tokenizer", type=int, metavar="N",
                       help="with --config: learn a byte-level BPE of N tokens on the training text")
    backend = parser.add_argument_group("backend")
    backend.add_argument("--backend", choices=("numpy", "mindspore"),
                         help="default: mindspore (graph mode) when installed, else numpy")
    backend.add_argument("--amp", choices=("O0", "O1", "O2", "O3"), help="MindSpore mixed precision (default O0)")
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


def resolve_options(args, run_defaults=RUN_DEFAULTS, free_defaults=FREE_DEFAULTS, demo=DEMO,
                    demo_free=DEMO_FREE) -> tuple[dict, dict]:
    """(run options, free options): defaults, --demo's settings, or the resumed run's own.
    (`gptspec finetune` passes its own defaults.)"""
    given = {k: getattr(args, k) for k in run_defaults if getattr(args, k, None) is not None}
    for name in PATH_OPTIONS:
        if name in given:
            given[name] = ([str(Path(p).resolve()) for p in given[name]] if isinstance(given[name], list)
                           else str(Path(given[name]).resolve()))
    free_given = {k: getattr(args, k) for k in free_defaults if getattr(args, k) is not None}
    if args.resume:
        from gptspec.training.checkpoint import RunFolder

        stored = RunFolder(args.resume).identity()
        command = "finetune" if "labels" in stored else "train"
        if not isinstance(stored.get("options"), dict) or set(run_defaults) - set(stored["options"]):
            raise ValueError(f"--resume {args.resume} is a `gptspec {command}` run, not one of this command: "
                             f"continue it with `gptspec {command} --resume {args.resume}`")
        opts, free = stored["options"], {**stored["free"], **free_given}
        changed = [f"--{k.replace('_', '-')} {v!r} (the run has {opts.get(k)!r})" for k, v in given.items()
                   if opts.get(k) != v and not (k == "demo" and v)]
        if changed:
            raise ValueError(f"--resume {args.resume} continues the run with its own options; these differ: "
                             f"{'; '.join(changed)}")
        return opts, free
    base = {**run_defaults, **(demo if getattr(args, "demo", None) else {})}
    opts = {**base, **given}
    free = {**free_defaults, **(demo_free if getattr(args, "demo", None) else {}), **free_given}
    if not opts.get("demo") and not opts["data"]:
        raise ValueError("--data FILE ... is required (or --demo for the offline demo on Python's docs)")
    return opts, free


def check_numbers(opts: dict, free: dict) -> None:
    """Every number option in range, each with a one-line error naming it."""
    def positive(name, value, allow_none=True):
        if value is None and allow_none:
            return
        if value is None or value <= 0:
            raise ValueError(f"--{name} must be a positive number, got {value}")

    for name, value in {**opts, **free}.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    for name in ("batch_size", "grad_accum", "steps", "epochs", "seq_len", "train_tokenizer", "lr"):
        positive(name.replace("_", "-"), opts.get(name))
    if opts.get("train_tokenizer") is not None and opts["train_tokenizer"] < MIN_BPE_VOCAB:
        raise ValueError(f"--train-tokenizer {opts['train_tokenizer']} is too small: a byte-level BPE holds the "
                         f"256 bytes and <|endoftext|>, so give --train-tokenizer {MIN_BPE_VOCAB} or more")
    for name, value in free.items():
        positive(name.replace("_", "-"), value)
    if opts["steps"] is not None and opts["epochs"] is not None:
        raise ValueError("give --steps or --epochs, not both")
    if opts["batch_size"] % opts["grad_accum"]:
        raise ValueError(f"--batch-size {opts['batch_size']} must be a multiple of --grad-accum {opts['grad_accum']}")
    for name in ("min_lr", "weight_decay", "warmup", "max_grad_norm"):
        if opts[name] < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {opts[name]}")
    if opts["min_lr"] > opts["lr"]:
        raise ValueError(f"--min-lr {opts['min_lr']} must not exceed --lr {opts['lr']} (the schedule decays "
                         f"from --lr down to --min-lr)")
    if not 0 <= opts.get("dropout", 0) < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {opts['dropout']}")
    if not 0 <= opts.get("valid_fraction", 0) < 1:
        raise ValueError(f"--valid-fraction must be in [0, 1), got {opts['valid_fraction']}")


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) for commands that cannot train data-parallel yet (finetune: its loss is a
    mean over rows, which needs the global row count): rank 0 of 1, and a multi-process launch is
    refused rather than having every process train alone and write the same folder."""
    world = int(os.environ.get("MS_WORKER_NUM", os.environ.get("RANK_SIZE", "1")) or 1)
    if world > 1:
        raise ValueError(f"this command under msrun ({world} workers) is not supported yet: run one process "
                         f"(gptspec train trains data-parallel under msrun)")
    return 0, 1


def data_parallel_rank() -> tuple[int, int]:
    """(rank, world size): rank 0 of 1 in one process; under msrun, this process's place in the
    data-parallel job (ms_backend.distributed joins the cluster -- msrun's scheduler process, which
    runs this command too, serves the cluster inside that call and exits there).  The loop gives
    each rank its share of every --batch-size rows and only rank 0 writes."""
    if "MS_ROLE" not in os.environ:     # msrun's variable (ms_backend.distributed.under_msrun)
        return 0, 1
    from ms_backend.distributed import init_data_parallel

    topology = init_data_parallel()
    return topology.rank, topology.world_size


def data_parallel(backend, opts: dict, rank: int, world_size: int):
    """Under msrun: check that --batch-size splits over the ranks, and run the MindSpore Trainer
    data-parallel (the global target count, the gradient all-reduce).  One process: unchanged."""
    if world_size == 1:
        return backend
    from ms_backend.distributed import DataParallelTrainer, Topology, check_global_batch

    if opts["backend"] != "mindspore":
        raise ValueError(f"--backend {opts['backend']} cannot train data-parallel under msrun "
                         f"({world_size} workers): use --backend mindspore, or run one process")
    check_global_batch(opts["batch_size"], Topology(rank, world_size), what="--batch-size")
    backend.trainer = DataParallelTrainer(backend.trainer, Topology(rank, world_size))
    return backend


def run(args) -> int:
    from gptspec.training import setup
    from gptspec.training.checkpoint import RunFolder
    from gptspec.training.loop import guarded

    rank, world_size = data_parallel_rank()
    opts, free = resolve_options(args)
    out = args.resume or args.out or ("gptspec-demo" if opts["demo"] else None)
    if out is None:
        raise ValueError("--out DIR is required: the run's folder (checkpoints, log.jsonl, loss.png)")
    if args.resume and args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        raise ValueError("--resume DIR continues in DIR itself; leave out --out")
    check_numbers(opts, free)
    if opts["backend"] is None:
        opts["backend"] = setup.default_backend()
    setup.check_amp_backend(opts)
    folder = RunFolder(out)
    with setup.run_folder_session(folder, args, writer=rank == 0) as session:
        prepared = prepare(args, opts, free, folder, session, rank, world_size)
        return guarded("train", folder, lambda: train_and_report(args, opts, free, folder, prepared, rank, world_size))


def prepare(args, opts, free, folder, session, rank, world_size) -> dict:
    """Everything the run needs, every check done; then (rank 0) the run folder started or resumed."""
    from gptspec.training import setup
    from gptspec.training.backends import Hyper

    say = print
    start_state = checkpoint = None
    if args.resume:
        checkpoint, start_state = session.resume_point()
        resumed = dict(opts, model=None, config=None, weights=str(checkpoint), vocab=str(checkpoint),
                       train_tokenizer=None, n_layer=None, n_embd=None, n_head=None, n_ctx=None)
    train_docs, valid_docs = setup.load_documents(opts)
    setup.warn_about_files("train", opts)
    config, params, tokenizer = setup.build_model(resumed if args.resume else opts, train_docs, say)
    if opts["seq_len"] is None:
        opts["seq_len"] = min(1024, config.n_ctx)
    if opts["seq_len"] > config.n_ctx:
        raise ValueError(f"--seq-len {opts['seq_len']} is longer than the model's context n_ctx={config.n_ctx}")
    train, valid, notes = setup.build_windows(opts, config, tokenizer, train_docs, valid_docs)
    for note in notes:
        say(note)
    if opts["steps"] is None:
        opts["steps"] = max(1, math.ceil((opts["epochs"] or 1) * len(train) / opts["batch_size"]))
    if opts["warmup"] > opts["steps"]:
        raise ValueError(f"--warmup {opts['warmup']} is longer than the run ({opts['steps']} steps)")
    identity = {"options": opts, "free": free, "config": config.to_dict(),
                "data_sha256": setup.data_fingerprint(train, valid)}
    if args.resume:
        stored = folder.identity()
        if stored["config"] != identity["config"]:
            raise ValueError(f"--resume {folder.path}: the checkpoint's config {config} is not the run's "
                             f"{stored['config']}")
        if stored["data_sha256"] != identity["data_sha256"]:
            raise ValueError(f"--resume {folder.path}: the data files changed since the run began (their token "
                             f"windows differ); a resumed run must see the same data")
    hyper = Hyper(lr=opts["lr"], total_steps=opts["steps"], warmup_steps=opts["warmup"], min_lr=opts["min_lr"],
                  schedule=opts["schedule"], weight_decay=opts["weight_decay"],
                  max_grad_norm=opts["max_grad_norm"] or None, dropout=opts["dropout"], seed=opts["seed"])
    backend = data_parallel(setup.make_backend(opts, config, params, hyper), opts, rank, world_size)
    session.begin(identity, checkpoint)      # the first write: every check above has passed
    return dict(config=config, tokenizer=tokenizer, train=train, valid=valid, backend=backend,
                checkpoint=checkpoint, start_state=start_state)


def train_and_report(args, opts, free, folder, prepared, rank, world_size) -> int:
    from gptspec.training import setup
    from gptspec.training.checkpoint import PLOT_FILE
    from gptspec.training.data import BatchOrder
    from gptspec.training.loop import LoopOptions, plot_losses, run_loop

    say = print
    backend, train, start_state = prepared["backend"], prepared["train"], prepared["start_state"]
    config, tokenizer = prepared["config"], prepared["tokenizer"]
    if start_state is not None:
        backend.read_files(prepared["checkpoint"])
        order = BatchOrder.from_state(start_state["data"])
        say(f"resuming {folder.path} at step {start_state['step']} of {opts['steps']}")
    else:
        order = BatchOrder(len(train), opts["seed"])
    say(f"training {config.arch} ({config.n_layer} layers, n_embd {config.n_embd}, n_vocab {config.n_vocab}) "
        f"on {len(train)} windows of {opts['seq_len']} tokens, backend {backend.name}, {opts['steps']} steps "
        f"of {opts['batch_size']} rows")

    save = setup.checkpoint_writer(folder, backend, tokenizer, order)

    options = LoopOptions(total_steps=opts["steps"], batch_size=opts["batch_size"], grad_accum=opts["grad_accum"],
                          eval_every=free["eval_every"] or max(1, opts["steps"] // 10), save_every=free["save_every"],
                          progress=args.progress if args.progress is not None else sys.stderr.isatty(),
                          rank=rank, world_size=world_size)
    if world_size > 1:
        options.any_rank = backend.trainer.any_rank
    summary = run_loop(backend, train, prepared["valid"], order, options, folder,
                       start_step=start_state["step"] if start_state else 0, save=save, say=say)
    if rank != 0:       # data parallel: the other ranks hold the same model and write nothing
        return 0
    if plot_losses(folder.path / "log.jsonl", folder.path / PLOT_FILE) is None:
        say("loss.png not drawn: matplotlib is not installed (pip install 'gptspec[plot]')")
    report(summary, folder, opts, say)
    if opts["demo"]:
        demo_samples(config, backend.params_numpy(), tokenizer, opts["seed"], say)
    return 0


def report(summary: dict, folder, opts: dict, say) -> None:
    from gptspec.training.backends import LOG_FLOAT_MAX
    from gptspec.training.checkpoint import checkpoint_problem
    from gptspec.training.loop import perplexity_text

    problem = checkpoint_problem(folder.path)
    where = f"latest checkpoint in {folder.path}" if problem is None else f"but {folder.path} is damaged: {problem}"
    say(f"trained to step {summary['steps']} in {summary['seconds']:.1f} s; {where}")
    before, after = [summary[k] and summary[k]["valid_loss"] for k in ("before", "after")]
    if before is not None and after is not None:
        say(f"held-out perplexity: {perplexity_text(before)} before, {perplexity_text(after)} after "
            f"(loss {before:.4f} -> {after:.4f} nats/token)")
    elif after is not None:
        say(f"held-out perplexity: {perplexity_text(after)} (loss {after:.4f} nats/token)")
    if after is not None and not after < LOG_FLOAT_MAX:
        say("the held-out loss exploded: the run diverged; lower --lr, or clip with --max-grad-norm")


def demo_samples(config, params, tokenizer, seed: int, say) -> None:
    import ref_numpy

    for i, prompt in enumerate(DEMO_PROMPTS):
        ids = tokenizer.encode_ordinary(prompt)
        out = ref_numpy.generate(config, params, np.array(ids), 48, top_k=20, temperature=0.8, seed=seed + i,
                                 eos_id=tokenizer.eot_token)
        text = tokenizer.decode([t for t in out.tolist() if t != tokenizer.eot_token])
        say(f"--- sample {i + 1} ---\n{text}")
