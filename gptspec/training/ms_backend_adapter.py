"""The MindSpore backend of the training loop: ms_backend.Trainer behind backends.py's interface.

The Trainer does the whole update (forward, backward, loss scaling, clipping, AdamW with the spec's
lr_at) as one compiled graph; this adapter only feeds it batches and saves and restores it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backends import Hyper, StepResult, lm_metrics, n_targets
from .data import IGNORE_INDEX


class MindSporeBackend:
    name = "mindspore"

    def __init__(self, config, params: dict, hyper: Hyper, *, amp_level: str = "O0", mode: str = "graph"):
        import ms_backend

        if not hasattr(ms_backend, "Trainer"):
            raise ImportError("this ms_backend has no Trainer: use --backend numpy")
        self.config, self.hyper = config, hyper
        self.amp_level, self.mode = amp_level, mode
        self.trainer = ms_backend.Trainer(
            config, params, amp_level=amp_level, mode=mode, lr=hyper.lr, warmup_steps=hyper.warmup_steps,
            total_steps=hyper.total_steps, min_lr=hyper.min_lr, schedule=hyper.schedule, betas=hyper.betas,
            eps=hyper.eps, weight_decay=hyper.weight_decay, max_grad_norm=hyper.max_grad_norm,
            dropout=hyper.dropout, seed=hyper.seed)
        self._eval_model = None

    def train_step(self, step: int, micro_batches) -> StepResult:
        # The Trainer takes one batch per update: the micro-batches are joined back into it
        # (the same mean over every target; --grad-accum saves no memory on this backend).
        inputs = np.concatenate([b[0] for b in micro_batches])
        targets = np.concatenate([b[1] for b in micro_batches])
        masks = [b[2] for b in micro_batches]
        mask = None if masks[0] is None else np.concatenate(masks)
        result = self.trainer.step(inputs, targets, mask)
        return StepResult(loss=float(result.loss), grad_norm=float(result.grad_norm), lr=float(result.lr),
                          loss_scale=None if result.loss_scale is None else float(result.loss_scale),
                          skipped=bool(result.skipped))

    def evaluate(self, windows, batch_rows: int) -> dict:
        return lm_metrics(self.eval_loss, windows, batch_rows)

    def eval_loss(self, inputs, targets, attention_mask=None) -> tuple[float, int]:
        import ref_numpy

        count = n_targets(targets)
        if count == 0:
            return 0.0, 0
        logits = self._forward(inputs, attention_mask)
        return float(ref_numpy.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)) * count, count

    def _forward(self, inputs, attention_mask):
        import ms_backend

        # A GPTModel on the trainer's current weights, rebuilt after every update it has missed.
        params = self.trainer.params_numpy()
        model = ms_backend.GPTModel(self.config, params, amp_level=self.amp_level, mode="pynative")
        logits, _ = model.forward_numpy(inputs, attention_mask=attention_mask)
        return logits

    def params_numpy(self) -> dict:
        return self.trainer.params_numpy()

    def write_files(self, folder: Path) -> None:
        self.trainer.save(folder)

    def read_files(self, folder: Path) -> None:
        import ms_backend

        self.trainer = ms_backend.Trainer.load(folder)
        if self.trainer.config != self.config:
            raise ValueError(f"{folder} holds a model of another config than this run's ({self.config})")
