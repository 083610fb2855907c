"""What the Ctrl-C / resume tests of the training CLI share: a signal sent during a chosen step,
and two logs compared without their timings."""
from __future__ import annotations

import os
import signal

from gptspec.training.loop import read_log


def signal_during_step(backend_class, at_step: int, *, signum=signal.SIGINT, only_if=lambda backend: True):
    """Replace backend_class.train_step (returned: the original, to restore) by one that sends this
    process `signum` while running step `at_step` (0-based) on the backends `only_if` accepts."""
    original = backend_class.train_step

    def train_step(self, step, micro_batches):
        if step == at_step and only_if(self):
            os.kill(os.getpid(), signum)
        return original(self, step, micro_batches)

    backend_class.train_step = train_step
    return original


def interrupt_during_step(monkeypatch, backend_class, at_step: int) -> None:
    """signal_during_step with SIGINT (Ctrl-C), undone by monkeypatch.undo()."""
    monkeypatch.setattr(backend_class, "train_step", backend_class.train_step)  # remembered for undo()
    signal_during_step(backend_class, at_step)


def logs_without_timings(folder) -> list[dict]:
    """folder/log.jsonl's rows without tokens_per_s (the only entry a resumed run may change)."""
    return [{k: v for k, v in row.items() if k != "tokens_per_s"} for row in read_log(folder / "log.jsonl")]
