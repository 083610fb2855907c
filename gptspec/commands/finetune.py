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
import math
import sys

import numpy as np

from gptspec.commands.train import check_numbers, distributed_rank, resolve_options
from gptspec.training.ms_classify_backend import TASKS as MINDSPORE_TASKS

RUN_DEFAULTS = dict(
    task="classify", data=None, valid=None, text_column=None, premise_column="premise",
    hypothesis_column="hypothesis", text_a_column="text_a", text_b_column="text_b", context_column="context",
    answers_column="answers", label_column="label", seq_len=None,
    model=None, weights=None, config=None, n_layer=None, n_embd=None, n_head=None, n_ctx=None, vocab=None,
    train_tokenizer=None, backend=None, amp="O0", dropout=0.0, lm_coef=0.5, lr=6.25e-5, min_lr=0.0, warmup=0,
    schedule="linear", weight_decay=0.01, max_grad_norm=1.0, batch_size=8, grad_accum=1, steps=None, epochs=None, seed=0)
DEFAULT_EPOCHS = 3
TASKS = ("classify", "entail", "similar", "choice")
FREE_DEFAULTS = dict(eval_every=None, save_every=None)


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
    parser.add_argument("--model", metavar="NAME", help="published weights (e.g. openai-gpt, gpt2)")
    parser.add_argument("--weights", metavar="DIR", help="a checkpoint folder")
    parser.add_argument("--config", metavar="NAME", help="a new, randomly initialised model of this preset's shape")
    for name in ("n-layer", "n-embd", "n-head", "n-ctx"):
        parser.add_argument(f"--{name}", type=int, metavar="N", help=f"with --config: override {name.replace('-', '_')}")
    parser.add_argument("--vocab", metavar="DIR", help="tokenizer folder (default: the checkpoint's own)")
    parser.add_argument("--train-tokenizer", type=int, metavar="N", help="with --config: learn a BPE of N tokens")
    parser.add_argument("--backend", choices=("numpy", "mindspore"),
                        help="default: mindspore (graph mode) when installed and the task is classify or entail "
                             "(similar and choice train on numpy only), else numpy")
    parser.add_argument("--amp", choices=("O0", "O1", "O2", "O3"), help="MindSpore mixed precision (default O0)")
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
    from gptspec.training import setup
    from gptspec.training.checkpoint import RunFolder
    from gptspec.training.loop import guarded

    rank, world_size = distributed_rank()
    opts, free = resolve_options(args, RUN_DEFAULTS, FREE_DEFAULTS, {}, {})
    out = args.resume or args.out
    if out is None:
        raise ValueError("--out DIR is required: the run's folder")
    check_numbers({**opts, "valid_fraction": 0}, free)
    if opts["lm_coef"] < 0:
        raise ValueError(f"--lm-coef must be >= 0, got {opts['lm_coef']}")
    if opts["backend"] is None:
        opts["backend"] = setup.default_backend() if opts["task"] in MINDSPORE_TASKS else "numpy"
    check_backend_options(opts)
    folder = RunFolder(out)
    with setup.run_folder_session(folder, args, writer=rank == 0) as session:
        prepared = prepare(args, opts, free, folder, session)
        return guarded("finetune", folder, lambda: finetune_and_report(args, opts, free, folder, prepared))


def prepare(args, opts, free, folder, session) -> dict:
    """The rows, the model and head, the backend, every check done; then the run folder started or resumed."""
    import ref_numpy
    from gptspec.training import setup
    from gptspec.training.backends import Hyper
    from gptspec.training.classify_backend import load_classifier
    from gptspec.training.classify_data import encode_task, longest_row, read_task_rows, special_ids, task_labels
    from gptspec.training.data import Document

    say, task = print, opts["task"]
    train_rows = read_task_rows(task, opts["data"], opts, argument="--data")
    valid_rows = read_task_rows(task, opts["valid"], opts, argument="--valid") if opts["valid"] else None
    labels = task_labels(task, train_rows)
    setup.warn_about_files("finetune", opts)
    start_state = checkpoint = None
    if args.resume:
        checkpoint, start_state = session.resume_point()
        config, params, head, saved = load_classifier(checkpoint)
        tokenizer = ref_numpy.Tokenizer.from_dir(checkpoint)
        special = saved["special_tokens"]
        if saved.get("task", "classify") != task:
            raise ValueError(f"--resume {folder.path}: the checkpoint was fine-tuned for --task {saved.get('task')}, "
                             f"not {task}")
    else:
        config, params, tokenizer = setup.build_model(opts, [Document("\n".join(t)) for t, _, _ in train_rows], say)
        special = special_ids(tokenizer.n_vocab)
        tokenizer = type(tokenizer)({**tokenizer.vocab, **special}, tokenizer.ranks, name=tokenizer.name)
        params = ref_numpy.add_tokens(params, len(special), seed=opts["seed"])
        config = config.replace(n_vocab=tokenizer.n_vocab)
        head = (ref_numpy.init_choice_head(config, opts["seed"]) if task == "choice" else
                ref_numpy.init_classifier(config, len(labels), opts["seed"]))
    if opts["seq_len"] is None:
        opts["seq_len"] = min(config.n_ctx, longest_row(task, train_rows + (valid_rows or []), tokenizer))
    if opts["seq_len"] > config.n_ctx:
        raise ValueError(f"--seq-len {opts['seq_len']} is longer than the model's context n_ctx={config.n_ctx}")
    train = encode_task(task, train_rows, tokenizer, special, labels, seq_len=opts["seq_len"], argument="--data")
    valid = (encode_task(task, valid_rows, tokenizer, special, labels, seq_len=opts["seq_len"], argument="--valid")
             if valid_rows else None)
    for note in train.notes + (valid.notes if valid else []):
        say(note)
    steps_per_epoch = max(1, math.ceil(len(train) / opts["batch_size"]))
    if opts["steps"] is None:
        opts["steps"] = max(1, math.ceil((opts["epochs"] or DEFAULT_EPOCHS) * steps_per_epoch))
    if opts["warmup"] > opts["steps"]:
        raise ValueError(f"--warmup {opts['warmup']} is longer than the run ({opts['steps']} steps)")
    identity = {"options": opts, "free": free, "config": config.to_dict(), "labels": labels}
    if args.resume and folder.identity()["config"] != identity["config"]:
        raise ValueError(f"--resume {folder.path}: the checkpoint's config is not the run's")
    hyper = Hyper(lr=opts["lr"], total_steps=opts["steps"], warmup_steps=opts["warmup"], min_lr=opts["min_lr"],
                  schedule=opts["schedule"], weight_decay=opts["weight_decay"],
                  max_grad_norm=opts["max_grad_norm"] or None, dropout=opts["dropout"], seed=opts["seed"])
    backend = make_classifier_backend(opts, config, params, head, hyper, labels=labels, special=special)
    session.begin(identity, checkpoint)      # the first write: every check above has passed
    return dict(config=config, tokenizer=tokenizer, train=train, valid=valid, labels=labels, backend=backend,
                checkpoint=checkpoint, start_state=start_state, steps_per_epoch=steps_per_epoch)


def finetune_and_report(args, opts, free, folder, prepared) -> int:
    from gptspec.training import setup
    from gptspec.training.data import BatchOrder
    from gptspec.training.loop import LoopOptions, run_loop

    say = print
    backend, train, valid, start_state = prepared["backend"], prepared["train"], prepared["valid"], prepared["start_state"]
    config, labels, task = prepared["config"], prepared["labels"], opts["task"]
    if start_state is not None:
        backend.read_files(prepared["checkpoint"])
        order = BatchOrder.from_state(start_state["data"])
    else:
        order = BatchOrder(len(train), opts["seed"])
    what = f"{len(labels)} answers each" if task == "choice" else f"{len(labels)} labels {labels}"
    say(f"fine-tuning {config.arch} ({config.n_layer} layers) for {task} on {len(train)} examples, {what}, "
        f"{opts['steps']} steps of {opts['batch_size']}, backend {backend.name}")

    save = setup.checkpoint_writer(folder, backend, prepared["tokenizer"], order)

    options = LoopOptions(total_steps=opts["steps"], batch_size=opts["batch_size"], grad_accum=opts["grad_accum"],
                          eval_every=free["eval_every"] or prepared["steps_per_epoch"], save_every=free["save_every"],
                          progress=args.progress if args.progress is not None else sys.stderr.isatty(),
                          keep_best="valid_accuracy" if valid else None)
    summary = run_loop(backend, train, valid, order, options, folder,
                       start_step=start_state["step"] if start_state else 0, save=save, say=say)
    say(f"fine-tuned to step {summary['steps']} in {summary['seconds']:.1f} s; latest checkpoint in {folder.path}")
    if summary["before"] and summary["after"]:
        say(f"held-out accuracy: {summary['before']['valid_accuracy']:.3f} before, "
            f"{summary['after']['valid_accuracy']:.3f} after")
    best = folder.path / "best.json"
    if best.is_file():
        say(f"best held-out accuracy kept: {best.read_text().strip()}")
    return 0


def check_backend_options(opts: dict) -> None:
    """Refuse a backend that cannot run the task or the precision, before anything is read or written."""
    from gptspec.training.setup import check_amp_backend

    check_amp_backend(opts)
    if opts["backend"] == "mindspore" and opts["task"] not in MINDSPORE_TASKS:
        raise ValueError(f"--backend mindspore fine-tunes --task {' or '.join(MINDSPORE_TASKS)}; --task "
                         f"{opts['task']} runs on --backend numpy")


def make_classifier_backend(opts: dict, config, params, head, hyper, *, labels, special):
    from gptspec.training.classify_backend import NumpyClassifierBackend

    common = dict(lm_coef=opts["lm_coef"], labels=labels, special=special, task=opts["task"])
    if opts["backend"] == "numpy":
        return NumpyClassifierBackend(config, params, head, hyper, **common)
    from gptspec.training.ms_classify_backend import MindSporeClassifierBackend

    return MindSporeClassifierBackend(config, params, head, hyper, amp_level=opts["amp"], **common)


TEXT_FORMS = {"classify": "a text", "entail": "'premise<TAB>hypothesis'", "similar": "'text_a<TAB>text_b'",
              "choice": "'context<TAB>answer<TAB>answer...' (2 answers or more)"}


def classify_texts(folder, texts: list[str]) -> tuple[list[tuple[list[str], np.ndarray]], list[str]]:
    """([(names, probabilities)] per text, truncation notes) of a fine-tuned checkpoint on `texts`.
    An entail or similar model takes 'first<TAB>second'; a choice model 'context<TAB>answer<TAB>...'
    with any number >= 2 of answers (its head scores each answer alone), and its names are the answer
    indices."""
    import ref_numpy
    from gptspec.training.backends import Hyper
    from gptspec.training.classify_backend import NumpyClassifierBackend, load_classifier
    from gptspec.training.classify_data import encode_task, longest_row

    config, params, head, saved = load_classifier(folder)
    tokenizer = ref_numpy.Tokenizer.from_dir(folder)
    labels, task = saved["labels"], saved.get("task", "classify")
    rows = []
    for i, text in enumerate(texts):
        parts = tuple(text.split("\t")) if task != "classify" else (text,)
        if (task in ("entail", "similar") and len(parts) != 2) or (task == "choice" and len(parts) < 3):
            raise ValueError(f"text {i + 1}: a {task} model takes {TEXT_FORMS[task]}, got {text!r}")
        rows.append((parts, "0" if task == "choice" else labels[0], f"text {i + 1}"))
    seq_len = min(config.n_ctx, longest_row(task, rows, tokenizer))
    # choice examples may differ in their number of answers: each is encoded on its own
    groups = [[row] for row in rows] if task == "choice" else [rows]
    results, notes = [], []
    for group in groups:
        names = [str(k) for k in range(len(group[0][0]) - 1)] if task == "choice" else labels
        encoded = encode_task(task, group, tokenizer, saved["special_tokens"], names, seq_len=seq_len,
                              argument="text")
        notes += [note for note in encoded.notes if "lost the tail" in note]
        backend = NumpyClassifierBackend(config, params, head, Hyper(lr=1.0, total_steps=1), lm_coef=0.0,
                                         labels=labels, special=saved["special_tokens"], task=task)
        results += [(names, p) for p in backend.probabilities(encoded.ids, encoded.positions, encoded.attention_mask)]
    return results, notes
