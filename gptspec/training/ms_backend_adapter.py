"""The MindSpore backend of the training loop: ms_backend.Trainer behind backends.py's interface.

The Trainer does the whole update (forward, backward, loss scaling, clipping, AdamW with the spec's
lr_at) in compiled graphs, on the objective's MindSpore counterpart (objectives.py ->
ms_backend.objectives); with several micro-batches (--grad-accum) it sums their gradients on the
device, one micro-batch's activations at a time.  This adapter feeds it micro-batches, evaluates
with its current weights, and saves and restores it.  Dropout: the Trainer draws micro-batch k of
step s from ref_numpy.dropout_seed(seed, s, k), as the NumPy backend does -- its only generator.
"""
from __future__ import annotations

from pathlib import Path

from ref_numpy.optim import StepResult

from .backends import Hyper


class MindSporeBackend:
    name = "mindspore"

    def __init__(self, config, params: dict, hyper: Hyper, objective, head=None, *, amp_level: str = "O0",
                 mode: str = "graph", recompute: bool = False):
        self.config, self.hyper, self.objective = config, hyper, objective
        self.trainer = make_trainer(config, params, hyper, objective.ms_objective(head), amp_level=amp_level,
                                    mode=mode, recompute=recompute)

    def train_step(self, step: int, micro_batches) -> StepResult:
        if step != self.trainer.step_count:
            raise RuntimeError(f"the loop is at step {step} but the Trainer at {self.trainer.step_count}")
        return self.trainer.accumulate_step([self.objective.ms_arguments(micro) for micro in micro_batches])

    def evaluate(self, valid, batch_rows: int) -> dict:
        return self.objective.evaluate(self, valid, batch_rows)

    def logits(self, inputs, attention_mask):
        """[B, T, V]: the Trainer's own model (its float32 master weights, its AMP level), op by op."""
        return self.trainer.model.forward_numpy(inputs, attention_mask=attention_mask)[0]

    def task_logits(self, ids, positions, attention_mask):
        """The classifier's logits: the Trainer's model and head (compiled, no dropout)."""
        return self.trainer.classifier_logits_numpy(ids, positions, attention_mask)

    def params_numpy(self) -> dict:
        return self.trainer.params_numpy()

    def head_numpy(self) -> dict | None:
        return self.trainer.head_numpy()

    def write_files(self, folder: Path) -> None:
        self.trainer.save(folder)               # weights, optimizer, scaler, objective (and head)
        self.objective.write_files(folder, self.trainer.head_numpy())

    def read_files(self, folder: Path) -> None:
        self.objective.check_resumable(folder, self.config)
        self.trainer.resume(folder)     # refuses another config, objective, or missing optimizer state


def make_trainer(config, params: dict, hyper: Hyper, objective, *, amp_level: str, mode: str, recompute: bool = False):
    """An ms_backend.Trainer with the run's hyper-parameters, on `objective` (ms_backend.objectives)."""
    try:
        from ms_backend import Trainer
    except ImportError as error:
        raise ImportError(f"--backend mindspore needs ms_backend.Trainer ({error}); or use --backend numpy") from None
    # float32 (O0) cannot overflow where float16 does: loss scaling only with mixed precision.
    return Trainer(
        config, params, objective=objective, amp_level=amp_level, dtype=None if amp_level == "O0" else "float16",
        mode=mode, lr=hyper.lr, warmup_steps=hyper.warmup_steps, total_steps=hyper.total_steps, min_lr=hyper.min_lr,
        schedule=hyper.schedule, betas=hyper.betas, eps=hyper.eps, weight_decay=hyper.weight_decay,
        max_grad_norm=hyper.max_grad_norm, loss_scale=None if amp_level == "O0" else "dynamic",
        dropout=hyper.dropout, seed=hyper.seed, recompute=recompute)
