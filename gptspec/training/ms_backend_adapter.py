"""The MindSpore backend of the training loop: ms_backend.Trainer behind backends.py's interface.

The Trainer does the whole update (forward, backward, loss scaling, clipping, AdamW with the spec's
lr_at) as one compiled graph; this adapter only feeds it batches and saves and restores it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backends import Hyper, StepResult, dropout_seed, lm_metrics, n_targets
from .data import IGNORE_INDEX


class MindSporeBackend:
    name = "mindspore"

    def __init__(self, config, params: dict, hyper: Hyper, *, amp_level: str = "O0", mode: str = "graph"):
        self.config, self.hyper = config, hyper
        self.trainer = make_trainer(config, params, hyper, amp_level=amp_level, mode=mode)

    def train_step(self, step: int, micro_batches) -> StepResult:
        # The Trainer takes one batch per update: the micro-batches are joined back into it
        # (the same mean over every target; --grad-accum saves no memory on this backend).
        inputs = np.concatenate([b[0] for b in micro_batches])
        targets = np.concatenate([b[1] for b in micro_batches])
        masks = [b[2] for b in micro_batches]
        mask = None if masks[0] is None else np.concatenate(masks)
        return trainer_step(self.trainer, self.hyper, step, inputs, targets, mask)

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
        # The Trainer's own model (its current float32 master weights, its AMP level), op by op.
        logits, _ = self.trainer.model.forward_numpy(inputs, attention_mask=attention_mask)
        return logits

    def params_numpy(self) -> dict:
        return self.trainer.params_numpy()

    def write_files(self, folder: Path) -> None:
        self.trainer.save(folder)

    def read_files(self, folder: Path) -> None:
        self.trainer.resume(folder)      # refuses another config or missing optimizer/scaler state


def make_trainer(config, params: dict, hyper: Hyper, *, amp_level: str, mode: str, **head):
    """An ms_backend.Trainer with the run's hyper-parameters; `head` (head=, lm_coef=) for fine-tuning."""
    try:
        from ms_backend import Trainer
    except ImportError as error:
        raise ImportError(f"--backend mindspore needs ms_backend.Trainer ({error}); or use --backend numpy") from None
    # float32 (O0) cannot overflow where float16 does: loss scaling only with mixed precision.
    return Trainer(
        config, params, amp_level=amp_level, dtype=None if amp_level == "O0" else "float16", mode=mode,
        lr=hyper.lr, warmup_steps=hyper.warmup_steps, total_steps=hyper.total_steps, min_lr=hyper.min_lr,
        schedule=hyper.schedule, betas=hyper.betas, eps=hyper.eps, weight_decay=hyper.weight_decay,
        max_grad_norm=hyper.max_grad_norm, loss_scale=None if amp_level == "O0" else "dynamic",
        dropout=hyper.dropout, seed=hyper.seed, **head)


def trainer_step(trainer, hyper: Hyper, step: int, *batch, **named) -> StepResult:
    """Update `step` of the loop as trainer.step(*batch, **named), as the loop's StepResult.

    Dropout: the Trainer draws the step's masks from the generator the NumPy backend uses for its
    first micro-batch (backends.dropout_seed), so with --grad-accum 1 both backends drop the same
    elements and a resumed run the same as an uninterrupted one.  (With more micro-batches the
    NumPy backend draws per micro-batch and this one for the joined batch: other masks.)"""
    if step != trainer.step_count:
        raise RuntimeError(f"the loop is at step {step} but the Trainer at {trainer.step_count}")
    if hyper.dropout > 0:
        trainer.rng = np.random.default_rng(dropout_seed(hyper.seed, step, 0))
    result = trainer.step(*batch, **named)
    return StepResult(loss=float(result.loss), grad_norm=float(result.grad_norm), lr=float(result.lr),
                      loss_scale=None if result.loss_scale is None else float(result.loss_scale),
                      skipped=bool(result.skipped))
