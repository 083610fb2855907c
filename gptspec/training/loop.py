"""The training loop, written once above both backends (backends.py says what a backend supplies).

Each step: take the next --batch-size rows (BatchOrder), keep this rank's share of them (rank
`r` of `world_size` takes rows r, r + world_size, ...; one process is rank 0 of 1), cut it into
--grad-accum micro-batches, let the backend make one optimizer update, log a row. Every
--eval-every steps the held-out loss and perplexity; every --save-every steps and at the end a
checkpoint (checkpoint.py). Ctrl-C (SIGINT) or SIGTERM lets the current step finish, saves, and stops:
nothing is lost, and `--resume` continues exactly there. Only rank 0 writes files.

Data parallel: a signal may reach one rank only (a scheduler preempting one worker), or reach the
ranks on either side of a step's end. So after every step the ranks agree whether any of them was
asked to stop (`any_rank`, one small all-reduce), stop after the same step, and wait for each other
once more after rank 0 has saved: msrun tears the whole job down when a worker exits with an error
status, which must not happen while rank 0 is still writing.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .checkpoint import BEST_FILE, LOG_FILE, RunFolder
from .data import BatchOrder


@dataclass
class LoopOptions:
    total_steps: int
    batch_size: int                  # rows per optimizer step, over all ranks
    grad_accum: int = 1
    eval_every: int | None = None
    save_every: int | None = None
    progress: bool = False
    rank: int = 0                    # the data-parallel seam: under msrun, this process's rank
    world_size: int = 1
    keep_best: str | None = None     # a metric to maximise (valid_accuracy): DIR/best.json names its step
    any_rank: Callable[[bool], bool] = bool  # data parallel: is the flag set on any rank (a collective)


class Interrupted(Exception):
    """Ctrl-C: the run stopped after saving step `step`."""

    def __init__(self, step: int, folder: Path):
        super().__init__(f"interrupted: saved step {step} in {folder}; continue with --resume {folder}")
        self.step, self.folder = step, folder


def describe(step: int, metrics: dict) -> str:
    """'step 100: held-out loss 5.0247, perplexity 152.12' (or accuracy for classification)."""
    names = {"valid_loss": "held-out loss", "valid_perplexity": "perplexity", "valid_accuracy": "accuracy"}
    return f"step {step}: " + ", ".join(f"{names.get(k, k)} {v:.4f}" for k, v in metrics.items())


def perplexity_text(loss: float) -> str:
    """exp(loss) with 2 decimals, or 'inf (overflow)' for a loss beyond float64 (a diverged run)."""
    try:
        return f"{math.exp(loss):.2f}"
    except OverflowError:
        return "inf (overflow)"


def guarded(command: str, folder: RunFolder, body: Callable[[], int]) -> int:
    """body()'s exit status. Ctrl-C (after saving) -> 130 with the resume hint; a second Ctrl-C (no
    save) -> 130 with one line saying what DIR keeps. Any failure before the new run's first
    checkpoint undoes its start (RunFolder.abandon_if_unsaved), so nothing is lost or left behind."""
    try:
        return body()
    except Interrupted as stop:
        print(f"gptspec {command}: {stop}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        folder.abandon_if_unsaved()
        kept = folder.latest_step()
        print(f"gptspec {command}: aborted by a second Ctrl-C without saving this step; " +
              (f"{folder.path} keeps step {kept}: continue with --resume {folder.path}" if kept is not None
               else f"no checkpoint was saved in {folder.path}"), file=sys.stderr)
        return 130
    except BaseException:
        folder.abandon_if_unsaved()
        raise


class StopOnSigint:
    """While active, the first Ctrl-C (SIGINT) or SIGTERM only sets `requested` (the loop saves and
    stops after the current step); a second one raises KeyboardInterrupt as usual.

    SIGTERM too, because MindSpore's graph runtime installs its own SIGINT handler while it runs a
    step, and that handler turns Ctrl-C into a SIGTERM to the process (seen with MindSpore 2.10);
    a job scheduler's SIGTERM (preemption) then also saves before exiting."""
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, say: Callable[[str], None]):
        self.requested, self.say, self.previous = False, say, {}

    def __enter__(self):
        for signum in self.SIGNALS:
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:      # not the main thread: signals cannot be caught here
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.say(f"{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
                 f"(Ctrl-C again to abort without saving)")

    def rearm(self) -> None:
        """Install the SIGINT handler again after a backend step (MindSpore's runtime replaces it)."""
        if signal.SIGINT in self.previous:
            signal.signal(signal.SIGINT, self._handle)

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False


def run_loop(backend, train, valid, order: BatchOrder, options: LoopOptions,
             folder: RunFolder, *, start_step: int, save: Callable[[int], None],
             say: Callable[[str], None] = print) -> dict:
    """Train from `start_step` to options.total_steps. `save(step)` writes a checkpoint.

    `train` and `valid` are datasets (TokenWindows, or the classification rows of finetune):
    `rows(index)` is a micro-batch for the backend, `count_tokens(micro_batch)` its real tokens.
    `backend.evaluate(valid, batch_rows)` returns the held-out metrics ({"valid_loss": ...}).
    Returns {"steps", "before", "after" (metrics or None), "seconds"}; raises Interrupted on Ctrl-C."""
    writer = options.rank == 0
    micro_rows = _micro_batch_rows(options)
    log = LogFile(folder.path / LOG_FILE, start_step) if writer else None
    bar = ProgressLine(options.total_steps, start_step, enabled=options.progress and writer)
    summary = {"steps": start_step, "before": None, "after": None}
    best = _read_best(folder) if options.keep_best else None
    if valid is not None and len(valid) and start_step == 0:
        summary["before"] = backend.evaluate(valid, micro_rows)
        bar.write(describe(start_step, summary["before"]), say)
        if log:
            log.append({"step": start_step, **summary["before"]})
    started = time.perf_counter()
    step = start_step
    with StopOnSigint(lambda text: bar.write(text, say)) as sigint:
        while step < options.total_steps:
            micro_batches = [train.rows(rows) for rows in _my_micro_batches(order.take(options.batch_size), options)]
            tic = time.perf_counter()
            result = backend.train_step(step, micro_batches)
            seconds = time.perf_counter() - tic
            sigint.rearm()
            step += 1
            n_tokens = sum(train.count_tokens(micro) for micro in micro_batches)
            row = {"step": step, "loss": result.loss, "lr": result.lr, "loss_scale": result.loss_scale,
                   "tokens_per_s": n_tokens * options.world_size / seconds if seconds > 0 else None,
                   "grad_norm": result.grad_norm}
            if result.skipped:
                row["skipped"] = True
            if not math.isfinite(result.loss) and not result.skipped:
                raise ValueError(f"step {step}: the loss is {result.loss} (the run diverged); lower --lr or use "
                                 f"--max-grad-norm")
            last = step == options.total_steps
            if valid is not None and len(valid) and options.eval_every and (step % options.eval_every == 0 or last):
                metrics = backend.evaluate(valid, micro_rows)
                row.update(metrics)
                summary["after"] = metrics
                bar.write(describe(step, metrics), say)
            if log:
                log.append(row)
            bar.update(step, row)
            improved = options.keep_best and options.keep_best in row and (
                best is None or row[options.keep_best] > best[options.keep_best])
            stop = options.any_rank(sigint.requested)       # every rank calls it after every step
            if writer and (last or stop or improved or (options.save_every and step % options.save_every == 0)):
                save(step)
            if writer and improved:
                best = {"step": step, options.keep_best: row[options.keep_best], "folder": f"checkpoints/step-{step}"}
                _write_best(folder, best)
            if stop and not last:
                options.any_rank(False)     # a barrier: no rank exits before rank 0 has saved
                bar.close()
                raise Interrupted(step, folder.path)
    bar.close()
    summary["steps"] = step
    summary["seconds"] = time.perf_counter() - started
    return summary


def _micro_batch_rows(options: LoopOptions) -> int:
    """Rows of one rank's micro-batch (also the held-out batches' size)."""
    return max(1, options.batch_size // options.grad_accum // options.world_size)


def _my_micro_batches(rows, options: LoopOptions) -> list:
    """This rank's micro-batches of a batch's rows: the batch splits into --grad-accum micro-batches
    in order, and each of those into world_size contiguous parts, rank r's the r-th -- so micro-batch
    k is the same rows (and, by the Trainer's placement, the same dropout masks) whatever the
    number of ranks.  (--batch-size is a multiple of --grad-accum, and under msrun each micro-batch
    splits over the ranks: options.py and run.data_parallel check both.)"""
    size = len(rows) // options.grad_accum
    part = size // options.world_size
    return [rows[k * size + options.rank * part:k * size + (options.rank + 1) * part]
            for k in range(options.grad_accum)]


def _read_best(folder: RunFolder) -> dict | None:
    path = folder.path / BEST_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _write_best(folder: RunFolder, best: dict) -> None:
    """DIR/best.json: the step (and its checkpoints/step-N folder) with the best held-out metric."""
    temporary = folder.path / f".{BEST_FILE}.tmp"
    temporary.write_text(json.dumps(best) + "\n", encoding="utf-8")
    temporary.replace(folder.path / BEST_FILE)


class LogFile:
    """DIR/log.jsonl, one JSON object per line. Opening it at step s drops rows after s (a resumed
    run rewrites what the interrupted one logged after its last checkpoint)."""

    def __init__(self, path: Path, start_step: int):
        self.path = path
        rows = []
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    if row["step"] <= start_step:
                        rows.append(line)
        path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")

    def append(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


class ProgressLine:
    """tqdm's bar on stderr when enabled (the `train` extra); otherwise a line every tenth of the run."""

    def __init__(self, total: int, initial: int, *, enabled: bool):
        self.total, self.bar = total, None
        self.every = max(1, total // 10)
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, file=sys.stderr, unit="step", dynamic_ncols=True)
        self.enabled = enabled

    def update(self, step: int, row: dict) -> None:
        postfix = {"loss": f"{row['loss']:.4f}", "lr": f"{row['lr']:.2e}"}
        if row.get("tokens_per_s"):
            postfix["tok/s"] = f"{row['tokens_per_s']:.0f}"
        if row.get("loss_scale") is not None:
            postfix["scale"] = f"{row['loss_scale']:g}"
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)
        elif self.enabled or step % self.every == 0 or step == self.total:
            print(f"step {step}/{self.total} " + " ".join(f"{k} {v}" for k, v in postfix.items()),
                  file=sys.stderr, flush=True)

    def write(self, text: str, say) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            say(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def plot_losses(log_path: Path, out: Path) -> Path | None:
    """DIR/loss.png: training loss per step and held-out loss; None (said by the caller) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_log(log_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    valid = [(r["step"], r["valid_loss"]) for r in rows if "valid_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*np.array(train).T, lw=1, label="training loss (batch)")
    if valid:
        ax.plot(*np.array(valid).T, "o-", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
