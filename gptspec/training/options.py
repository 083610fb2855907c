"""The run options of `gptspec train` and `gptspec finetune`, resolved and checked once for both.

`opts` is the plain dict run.json stores (a resumed run takes its own and refuses changes);
`free` holds what a resumed run may change (what is logged and saved, not what is computed).
"""
from __future__ import annotations

import math
from pathlib import Path

from .backends import Hyper

PATH_OPTIONS = ("data", "valid", "weights", "vocab")
MIN_BPE_VOCAB = 257     # a byte-level BPE: the 256 bytes and <|endoftext|>, before any merge


def add_model_arguments(group, *, model: str, weights: str, config: str, train_tokenizer: str) -> None:
    """Where the model comes from (setup.build_model reads these): --model, --weights or --config
    with its size overrides, and the tokenizer (--vocab, --train-tokenizer); the helps are the command's."""
    group.add_argument("--model", metavar="NAME", help=model)
    group.add_argument("--weights", metavar="DIR", help=weights)
    group.add_argument("--config", metavar="NAME", help=config)
    for name in ("n-layer", "n-embd", "n-head", "n-ctx"):
        group.add_argument(f"--{name}", type=int, metavar="N", help=f"with --config: override {name.replace('-', '_')}")
    group.add_argument("--vocab", metavar="DIR", help="tokenizer folder (default: the checkpoint's own)")
    group.add_argument("--train-tokenizer", type=int, metavar="N", help=train_tokenizer)


RECOMPUTE_HELP = ("MindSpore: keep only each block's input and run its forward again in the backward "
                  "(ms_backend.Trainer(recompute=True)): the same updates up to rounding, a fraction of the "
                  "activation memory, ~2x the step time; a resumed run may switch it")


def resolve_options(args, run_defaults: dict, free_defaults: dict, demo: dict | None = None,
                    demo_free: dict | None = None) -> tuple[dict, dict]:
    """(run options, free options): the command's defaults, --demo's settings, or the resumed run's own."""
    demo, demo_free = demo or {}, demo_free or {}
    given = {k: getattr(args, k) for k in run_defaults if getattr(args, k, None) is not None}
    for name in PATH_OPTIONS:
        if name in given:
            given[name] = ([str(Path(p).resolve()) for p in given[name]] if isinstance(given[name], list)
                           else str(Path(given[name]).resolve()))
    free_given = {k: getattr(args, k) for k in free_defaults if getattr(args, k) is not None}
    if args.resume:
        from .checkpoint import RunFolder

        stored = RunFolder(args.resume).identity()
        command = "finetune" if "labels" in stored else "train"
        if not isinstance(stored.get("options"), dict) or set(run_defaults) - set(stored["options"]):
            raise ValueError(f"--resume {args.resume} is a `gptspec {command}` run, not one of this command: "
                             f"continue it with `gptspec {command} --resume {args.resume}`")
        opts, free = stored["options"], {**free_defaults, **stored["free"], **free_given}
        changed = [f"--{k.replace('_', '-')} {v!r} (the run has {opts.get(k)!r})" for k, v in given.items()
                   if opts.get(k) != v and not (k == "demo" and v)]
        if changed:
            raise ValueError(f"--resume {args.resume} continues the run with its own options; these differ: "
                             f"{'; '.join(changed)}")
        return opts, free
    wants_demo = bool(getattr(args, "demo", None))
    opts = {**run_defaults, **(demo if wants_demo else {}), **given}
    free = {**free_defaults, **(demo_free if wants_demo else {}), **free_given}
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
    for name in ("eval_every", "save_every"):
        positive(name.replace("_", "-"), free.get(name))
    if opts["steps"] is not None and opts["epochs"] is not None:
        raise ValueError("give --steps or --epochs, not both")
    if opts["batch_size"] % opts["grad_accum"]:
        raise ValueError(f"--batch-size {opts['batch_size']} must be a multiple of --grad-accum {opts['grad_accum']}")
    for name in ("min_lr", "weight_decay", "warmup", "max_grad_norm", "lm_coef"):
        if opts.get(name, 0) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {opts[name]}")
    if opts["min_lr"] > opts["lr"]:
        raise ValueError(f"--min-lr {opts['min_lr']} must not exceed --lr {opts['lr']} (the schedule decays "
                         f"from --lr down to --min-lr)")
    if not 0 <= opts.get("dropout", 0) < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {opts['dropout']}")
    if not 0 <= opts.get("valid_fraction", 0) < 1:
        raise ValueError(f"--valid-fraction must be in [0, 1), got {opts['valid_fraction']}")


def settle_seq_len(opts: dict, config, default) -> None:
    """--seq-len: `default()` when not given; never longer than the model's context."""
    if opts["seq_len"] is None:
        opts["seq_len"] = default()
    if opts["seq_len"] > config.n_ctx:
        raise ValueError(f"--seq-len {opts['seq_len']} is longer than the model's context n_ctx={config.n_ctx}")


def settle_steps(opts: dict, default: int) -> None:
    """--steps: `default` (from --epochs) when not given; the warmup must fit in the run."""
    if opts["steps"] is None:
        opts["steps"] = max(1, default)
    if opts["warmup"] > opts["steps"]:
        raise ValueError(f"--warmup {opts['warmup']} is longer than the run ({opts['steps']} steps)")


def hyper_from(opts: dict) -> Hyper:
    """The backends' optimizer and schedule settings from the run options (--max-grad-norm 0: no clipping)."""
    return Hyper(lr=opts["lr"], total_steps=opts["steps"], warmup_steps=opts["warmup"], min_lr=opts["min_lr"],
                 schedule=opts["schedule"], weight_decay=opts["weight_decay"],
                 max_grad_norm=opts["max_grad_norm"] or None, dropout=opts["dropout"], seed=opts["seed"])
