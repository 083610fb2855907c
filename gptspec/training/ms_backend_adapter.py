"""The MindSpore backend of the training loop: ms_backend.Trainer behind backends.py's interface.

The Trainer does the whole update (forward, backward, loss scaling, clipping, AdamW with the spec's
lr_at) as one compiled graph; this adapter only feeds it batches and saves and restores it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backends import Hyper, StepResult, dropout_seed, lm_metrics, token_loss_sum


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
        return trainer_step(self.trainer, step, inputs, targets, mask)

    def evaluate(self, windows, batch_rows: int) -> dict:
        return lm_metrics(self.eval_loss, windows, batch_rows)

    def eval_loss(self, inputs, targets, attention_mask=None) -> tuple[float, int]:
        return token_loss_sum(self._forward, inputs, targets, attention_mask)

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
    """An ms_backend.Trainer with the run's hyper-parameters; `head` (head=, lm_coef=) for fine-tuning.
    Its dropout generator is a StepSeededDropout, handed over once (see there)."""
    try:
        from ms_backend import Trainer
    except ImportError as error:
        raise ImportError(f"--backend mindspore needs ms_backend.Trainer ({error}); or use --backend numpy") from None
    # float32 (O0) cannot overflow where float16 does: loss scaling only with mixed precision.
    trainer = Trainer(
        config, params, amp_level=amp_level, dtype=None if amp_level == "O0" else "float16", mode=mode,
        lr=hyper.lr, warmup_steps=hyper.warmup_steps, total_steps=hyper.total_steps, min_lr=hyper.min_lr,
        schedule=hyper.schedule, betas=hyper.betas, eps=hyper.eps, weight_decay=hyper.weight_decay,
        max_grad_norm=hyper.max_grad_norm, loss_scale=None if amp_level == "O0" else "dynamic",
        dropout=hyper.dropout, seed=hyper.seed, **head)
    trainer.rng = StepSeededDropout(hyper.seed, lambda: trainer.step_count)
    return trainer


class StepSeededDropout(np.random.Generator):
    """The MindSpore backend's dropout generator, its only one: given to the Trainer once, as
    Trainer.rng, from which the Trainer draws every mask of a step (ref_numpy.dropout_scale:
    `random`).  Step k's draws are those of numpy.random.default_rng(backends.dropout_seed(seed,
    k, 0)) -- the generator of the NumPy backend's first micro-batch of step k -- so with
    --grad-accum 1 both backends drop the same elements, and the masks depend on the run's seed
    and the step only: the first draw of a step (the Trainer's step count, `step_of()`) starts
    that step's stream.  Its state is an ordinary PCG64 state, which Trainer.save writes and
    Trainer.resume restores; the resumed step count then picks the stream, so a resumed run draws
    exactly the masks of the uninterrupted one.  (With more micro-batches the NumPy backend draws
    per micro-batch, this one for the joined batch: other masks.)"""

    def __init__(self, seed: int, step_of):
        super().__init__(np.random.PCG64(dropout_seed(seed, 0, 0)))
        self.seed, self.step_of, self.step = seed, step_of, None

    def random(self, *args, **kwargs):
        step = self.step_of()
        if step != self.step:
            self.bit_generator.state = np.random.PCG64(dropout_seed(self.seed, step, 0)).state
            self.step = step
        return super().random(*args, **kwargs)


def trainer_step(trainer, step: int, *batch, **named) -> StepResult:
    """Update `step` of the loop as trainer.step(*batch, **named), as the loop's StepResult.
    (Dropout: the Trainer draws from its StepSeededDropout, see there.)"""
    if step != trainer.step_count:
        raise RuntimeError(f"the loop is at step {step} but the Trainer at {trainer.step_count}")
    result = trainer.step(*batch, **named)
    return StepResult(loss=float(result.loss), grad_norm=float(result.grad_norm), lr=float(result.lr),
                      loss_scale=None if result.loss_scale is None else float(result.loss_scale),
                      skipped=bool(result.skipped))
