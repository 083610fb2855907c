"""The one run body of `gptspec train` and `gptspec finetune`: options -> run folder -> data, model and
backend -> the loop -> the report.  The commands only parse their arguments and pick the task:

    LanguageModelling (lm_task.py)   `train`: text windows, next-token loss, perplexity
    Classification (classify_task.py)   `finetune`: GPT-1's head, accuracy, the best checkpoint kept

A task supplies what differs (its data, model, backend, identity, messages); this module does the
rest once: option checks, the processes' ranks, the run folder's session (lock, start, resume),
Ctrl-C handling (loop.guarded) and the loop's options.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .options import check_numbers, hyper_from, resolve_options, settle_seq_len, settle_steps


@dataclass
class Built:
    """What a task builds before its data is encoded: the model (and head), its tokenizer, the raw
    data, and with --resume the checkpoint to continue from."""
    config: object
    tokenizer: object
    model: dict                 # task-specific: {"params": ...} (+ "head", "special", "labels")
    data: dict                  # task-specific raw data (documents, rows)
    checkpoint: Path | None = None
    start_state: dict | None = None


@dataclass
class Prepared:
    """Everything the loop needs, every check done."""
    built: Built
    train: object
    valid: object
    backend: object


class Task:
    """What `train` and `finetune` do differently (the subclasses); the run body calls these."""
    command = "?"
    out_hint = "the run's folder"
    default_epochs = 1

    def __init__(self, run_defaults: dict, free_defaults: dict, demo: dict | None = None,
                 demo_free: dict | None = None):
        self.run_defaults, self.free_defaults = run_defaults, free_defaults
        self.demo, self.demo_free = demo or {}, demo_free or {}

    def ranks(self) -> tuple[int, int]:
        """(rank, world size) of this process: both tasks train data-parallel under msrun."""
        return data_parallel_rank()

    def default_out(self, opts: dict) -> str | None:
        return None

    def check(self, opts: dict) -> None:
        """Option checks after check_numbers: the backend (MindSpore when installed) and --amp."""
        from . import setup

        if opts["backend"] is None:
            opts["backend"] = setup.default_backend()
        setup.check_amp_backend(opts)

    def build(self, args, opts: dict, session, say) -> Built:
        raise NotImplementedError

    def default_seq_len(self, opts: dict, built: Built) -> int:
        raise NotImplementedError

    def encode(self, opts: dict, built: Built) -> tuple[object, object, list[str]]:
        """(training data, held-out data or None, notes) as the loop's datasets."""
        raise NotImplementedError

    def default_steps(self, opts: dict, train) -> int:
        raise NotImplementedError

    def identity(self, opts: dict, free: dict, built: Built, train, valid) -> dict:
        return {"options": opts, "free": free, "config": built.config.to_dict()}

    def check_resumed(self, folder, identity: dict, built: Built) -> None:
        stored = folder.identity()
        if stored["config"] != identity["config"]:
            raise ValueError(f"--resume {folder.path}: the checkpoint's config {built.config} is not the run's "
                             f"{stored['config']}")

    def make_backend(self, opts: dict, built: Built, hyper, rank: int, world_size: int, *, recompute: bool = False):
        raise NotImplementedError

    def announce(self, opts: dict, prepared: Prepared, say) -> None:
        raise NotImplementedError

    def default_eval_every(self, opts: dict, prepared: Prepared) -> int:
        return max(1, opts["steps"] // 10)

    def keep_best(self, prepared: Prepared) -> str | None:
        return None

    def report(self, summary: dict, folder, opts: dict, prepared: Prepared, say) -> None:
        raise NotImplementedError


# -- processes ------------------------------------------------------------------------------------
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
    """Under msrun: check that --batch-size and each of its --grad-accum micro-batches split over the
    ranks, and run the MindSpore Trainer data-parallel (the global counts, the gradient all-reduce,
    each rank its rows of the whole micro-batch's dropout masks).  One process: unchanged."""
    if world_size == 1:
        return backend
    from ms_backend.distributed import DataParallelTrainer, Topology, check_global_batch

    if opts["backend"] != "mindspore":
        raise ValueError(f"--backend {opts['backend']} cannot train data-parallel under msrun "
                         f"({world_size} workers): use --backend mindspore, or run one process")
    check_global_batch(opts["batch_size"], Topology(rank, world_size), what="--batch-size")
    if opts["grad_accum"] > 1:
        check_global_batch(opts["batch_size"] // opts["grad_accum"], Topology(rank, world_size),
                           what=f"each micro-batch (--batch-size {opts['batch_size']} / --grad-accum {opts['grad_accum']})")
    backend.trainer = DataParallelTrainer(backend.trainer, Topology(rank, world_size))
    return backend


# -- the run body ---------------------------------------------------------------------------------
def run_task(args, task: Task) -> int:
    """`gptspec train` / `gptspec finetune` after argument parsing: the exit status."""
    from .checkpoint import RunFolder
    from .loop import guarded
    from .setup import run_folder_session

    rank, world_size = task.ranks()
    opts, free = resolve_options(args, task.run_defaults, task.free_defaults, task.demo, task.demo_free)
    out = args.resume or args.out or task.default_out(opts)
    if out is None:
        raise ValueError(f"--out DIR is required: {task.out_hint}")
    if args.resume and args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        raise ValueError("--resume DIR continues in DIR itself; leave out --out")
    check_numbers(opts, free)
    task.check(opts)
    folder = RunFolder(out)
    with run_folder_session(folder, args, writer=rank == 0) as session:
        prepared = prepare(task, args, opts, free, session, rank, world_size)
        return guarded(task.command, folder,
                       lambda: train_and_report(task, args, opts, free, folder, prepared, rank, world_size))


def prepare(task: Task, args, opts: dict, free: dict, session, rank: int, world_size: int, say=print) -> Prepared:
    """Everything the run needs, every check done; then (rank 0) the run folder started or resumed."""
    built = task.build(args, opts, session, say)
    settle_seq_len(opts, built.config, lambda: task.default_seq_len(opts, built))
    train, valid, notes = task.encode(opts, built)
    for note in notes:
        say(note)
    settle_steps(opts, task.default_steps(opts, train))
    identity = task.identity(opts, free, built, train, valid)
    if args.resume:
        task.check_resumed(session.folder, identity, built)
    backend = task.make_backend(opts, built, hyper_from(opts), rank, world_size, recompute=free["recompute"])
    session.begin(identity, built.checkpoint)      # the first write: every check above has passed
    return Prepared(built=built, train=train, valid=valid, backend=backend)


def train_and_report(task: Task, args, opts: dict, free: dict, folder, prepared: Prepared, rank: int,
                     world_size: int, say=print) -> int:
    from .data import BatchOrder
    from .loop import LoopOptions, run_loop
    from .setup import checkpoint_writer

    backend, built = prepared.backend, prepared.built
    start_state = built.start_state
    if start_state is not None:
        backend.read_files(built.checkpoint)
        order = BatchOrder.from_state(start_state["data"])
        say(f"resuming {folder.path} at step {start_state['step']} of {opts['steps']}")
    else:
        order = BatchOrder(len(prepared.train), opts["seed"])
    task.announce(opts, prepared, say)
    save = checkpoint_writer(folder, backend, built.tokenizer, order)
    options = LoopOptions(total_steps=opts["steps"], batch_size=opts["batch_size"], grad_accum=opts["grad_accum"],
                          eval_every=free["eval_every"] or task.default_eval_every(opts, prepared),
                          save_every=free["save_every"],
                          progress=args.progress if args.progress is not None else sys.stderr.isatty(),
                          rank=rank, world_size=world_size, keep_best=task.keep_best(prepared))
    if world_size > 1:
        options.any_rank = backend.trainer.any_rank
    summary = run_loop(backend, prepared.train, prepared.valid, order, options, folder,
                       start_step=start_state["step"] if start_state else 0, save=save, say=say)
    if rank != 0:       # data parallel: the other ranks hold the same model and write nothing
        return 0
    task.report(summary, folder, opts, prepared, say)
    return 0
