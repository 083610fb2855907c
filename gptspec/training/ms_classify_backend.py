"""MindSpore's fine-tuning backend: ms_backend.Trainer with GPT-1's classifier head.

The Trainer computes the spec's combined loss (classification cross-entropy + lm_coef x the rows'
LM loss, ref_numpy.classifier_loss_and_grads) by autodiff and does the whole update (loss scaling
at O1-O3, clipping, AdamW with the spec's lr_at) as one compiled graph; this adapter feeds it the
rows, evaluates with its current weights and saves and restores it.

Tasks: classify and entail (one sequence per example).  similar (two orders, states summed) and
choice (one score per answer) have no MindSpore head yet: they are refused, and train on
--backend numpy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backends import Hyper, StepResult
from .classify_backend import ClassifierBackend
from .ms_backend_adapter import make_trainer, trainer_step

TASKS = ("classify", "entail")


class MindSporeClassifierBackend(ClassifierBackend):
    name = "mindspore"

    def __init__(self, config, params: dict, head: dict, hyper: Hyper, *, lm_coef: float, labels: list[str],
                 special: dict[str, int], task: str = "classify", amp_level: str = "O0", mode: str = "graph"):
        if task not in TASKS:
            raise ValueError(f"--backend mindspore fine-tunes --task {' or '.join(TASKS)}; --task {task} (its "
                             f"two-sequence head) runs on --backend numpy")
        super().__init__(config, hyper, lm_coef=lm_coef, labels=labels, special=special, task=task)
        self.trainer = make_trainer(config, params, hyper, amp_level=amp_level, mode=mode, head=head, lm_coef=lm_coef)

    def train_step(self, step: int, micro_batches) -> StepResult:
        # The Trainer takes one batch per update: the micro-batches are joined back into it.  The
        # classification term is the same mean over the batch's rows as the NumPy backend's; the LM
        # term is the mean over every LM target of the batch, where the NumPy backend averages each
        # micro-batch's token mean by its rows (the two agree with --grad-accum 1).
        ids, labels, positions, mask = (np.concatenate(parts) for parts in zip(*micro_batches))
        return trainer_step(self.trainer, step, ids, labels, mask, clf_positions=positions)

    def logits(self, ids, positions, attention_mask):
        """[n, n_classes]: the Trainer's model (its AMP level, current float32 master weights)."""
        return self.trainer.classifier_logits_numpy(ids, positions, attention_mask)

    def params_numpy(self) -> dict:
        return self.trainer.params_numpy()

    def head_numpy(self) -> dict:
        return self.trainer.head_numpy()

    def write_files(self, folder: Path) -> None:
        self.trainer.save(folder)                      # weights, optimizer, scaler, dropout generator
        self.write_classifier_files(folder, self.trainer.head_numpy())

    def read_files(self, folder: Path) -> None:
        self.check_resumable(folder)
        self.trainer.resume(folder)     # refuses another config, a missing head or optimizer state
