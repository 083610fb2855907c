"""The NumPy spec's fine-tuning backend: GPT-1's classifier head and its combined loss.

One update: the task's loss and gradients on each micro-batch (ref_numpy.classifier_loss_and_grads
for classify and entail, similarity_loss_and_grads for similar, choice_loss_and_grads for choice:
task cross-entropy + lm_coef x the rows' LM loss), weighted by its share of the batch's examples;
clip_grad_norm over the model's and the head's gradients together; adamw_step on both (AdamW is
element-wise, so two states with the same step count are one optimizer). Dropout masks are drawn
from backends.dropout_seed(seed, step, micro-batch), as the LM backend draws them. Held-out
metrics: the classification loss and the accuracy.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

import ref_numpy

from .backends import (OPTIMIZER_FILE, OPTIMIZER_LAYOUT, Hyper, StepResult, adamw, add_scaled,
                       check_optimizer_files, clip, dropout_seed, load_tree, save_tree)

HEAD_FILE = "classifier_head.npz"
LABELS_FILE = "labels.json"


class ClassifierBackend:
    """What both fine-tuning backends share: held-out metrics from their logits, and the files that
    make a checkpoint a classifier (the head, the label set); subclasses give logits, train_step,
    params_numpy and the head's current values."""
    name = "?"

    def __init__(self, config, hyper: Hyper, *, lm_coef: float, labels: list[str], special: dict[str, int],
                 task: str):
        self.config, self.hyper, self.lm_coef, self.task = config, hyper, lm_coef, task
        self.labels, self.special = labels, special

    def probabilities(self, ids, positions, attention_mask=None) -> np.ndarray:
        """[n, n_classes] softmax of the head's logits (choice: [n, K], over each example's answers)."""
        return probabilities(self.logits(ids, positions, attention_mask))

    def evaluate(self, rows, batch_rows: int) -> dict:
        """Held-out classification loss (mean -log p(label)) and accuracy."""
        nll, correct = 0.0, 0
        for start in range(0, len(rows), batch_rows):
            ids, labels, positions, mask = rows.rows(slice(start, start + batch_rows))
            p = self.probabilities(ids, positions, mask)
            nll -= float(np.sum(np.log(np.maximum(p[np.arange(len(labels)), labels], 1e-300))))
            correct += int(np.sum(p.argmax(axis=-1) == labels))
        return {"valid_loss": nll / len(rows), "valid_accuracy": correct / len(rows)}

    def write_classifier_files(self, folder: Path, head: dict) -> None:
        """The head and the label set beside the weights: load_classifier reads them back."""
        with open(folder / HEAD_FILE, "wb") as f:
            np.savez(f, **head)
        (folder / LABELS_FILE).write_text(json.dumps({"task": self.task, "labels": self.labels,
                                                      "special_tokens": self.special, "lm_coef": self.lm_coef},
                                                     indent=2) + "\n", encoding="utf-8")

    def check_resumable(self, folder: Path) -> tuple:
        """load_classifier(folder), refused when it holds another model or label set than this run's."""
        config, params, head, saved = load_classifier(folder)
        if config != self.config or saved["labels"] != self.labels:
            raise ValueError(f"{folder} holds another model or label set than this run's")
        return config, params, head, saved


class NumpyClassifierBackend(ClassifierBackend):
    name = "numpy"

    def __init__(self, config, params: dict, head: dict, hyper: Hyper, *, lm_coef: float, labels: list[str],
                 special: dict[str, int], task: str = "classify"):
        super().__init__(config, hyper, lm_coef=lm_coef, labels=labels, special=special, task=task)
        self.params = ref_numpy.cast_params(params, np.float32)
        self.head = {name: np.asarray(value, np.float32) for name, value in head.items()}
        self.optimizer = {"model": ref_numpy.adamw_init(self.params), "head": ref_numpy.adamw_init(self.head)}

    def train_step(self, step: int, micro_batches) -> StepResult:
        total = sum(len(ids) for ids, *_ in micro_batches)
        loss, grads, head_grads = 0.0, None, None
        for k, (ids, labels, positions, mask) in enumerate(micro_batches):
            share = len(ids) / total
            micro_loss, g, hg = self.loss_and_grads(ids, labels, positions, mask,
                                                    dropout_seed=dropout_seed(self.hyper.seed, step, k))
            loss += share * float(micro_loss)
            grads = add_scaled(grads, g, share)
            head_grads = add_scaled(head_grads, hg, share)
        both, norm = clip({"model": grads, "head": head_grads}, self.hyper)
        lr = self.hyper.lr_at(step)
        optimizer, hyper = self.optimizer, self.hyper
        self.params, optimizer["model"] = adamw(self.params, both["model"], optimizer["model"], hyper, lr)
        self.head, optimizer["head"] = adamw(self.head, both["head"], optimizer["head"], hyper, lr)
        return StepResult(loss=loss, grad_norm=float(norm), lr=lr)

    def loss_and_grads(self, ids, labels, positions, mask, dropout_seed=None):
        """The task's (loss, grads, head_grads) on a micro-batch: ids, mask [n, L] (classify, entail)
        or [n, K, L] (similar: K = 2 orders; choice: K = answers), positions [n] or [n, K], labels [n].
        Dropout (hyper.dropout) with the masks of numpy.random.default_rng(dropout_seed)."""
        common = dict(lm_coef=self.lm_coef, dropout=self.hyper.dropout, seed=dropout_seed)
        if self.task == "similar":
            return ref_numpy.similarity_loss_and_grads(
                self.config, self.params, self.head, ids[:, 0], ids[:, 1], labels, positions[:, 0], positions[:, 1],
                attention_mask_ab=mask[:, 0], attention_mask_ba=mask[:, 1], **common)
        if self.task == "choice":
            n, k, length = ids.shape
            return ref_numpy.choice_loss_and_grads(
                self.config, self.params, self.head, ids.reshape(n * k, length), labels, positions.reshape(n * k),
                k, attention_mask=mask.reshape(n * k, length), **common)
        return ref_numpy.classifier_loss_and_grads(self.config, self.params, self.head, ids, labels, positions,
                                                   attention_mask=mask, **common)

    def logits(self, ids, positions, attention_mask):
        """[n, n_classes] (or [n, K] answer scores for choice); shapes as loss_and_grads."""
        return task_logits(self.task, self.config, self.params, self.head, ids, positions, attention_mask)

    def params_numpy(self) -> dict:
        return self.params

    def write_files(self, folder: Path) -> None:
        import weights

        weights.save(self.params, self.config, folder, format="safetensors")
        self.write_classifier_files(folder, self.head)
        save_tree(self.optimizer, folder / OPTIMIZER_FILE, folder / OPTIMIZER_LAYOUT)

    def read_files(self, folder: Path) -> None:
        _, params, head, _ = self.check_resumable(folder)
        check_optimizer_files(folder)
        self.params, self.head = params, head
        self.optimizer = load_tree(folder / OPTIMIZER_FILE, folder / OPTIMIZER_LAYOUT)


def task_logits(task: str, config, params: dict, head: dict, ids, positions, attention_mask) -> np.ndarray:
    """The spec's logits of a fine-tuned model for `task`: [n, n_classes], or for choice [n, K] answer
    scores.  ids, attention_mask [n, L] (classify, entail) or [n, K, L] (similar: K = 2 orders;
    choice: K = answers); positions [n] or [n, K] (each sequence's classify token)."""
    if task == "similar":
        return ref_numpy.similarity_logits(config, params, head, ids[:, 0], ids[:, 1], positions[:, 0],
                                           positions[:, 1], attention_mask_ab=attention_mask[:, 0],
                                           attention_mask_ba=attention_mask[:, 1])
    if task == "choice":
        n, k, length = ids.shape
        return ref_numpy.choice_logits(config, params, head, ids.reshape(n * k, length), positions.reshape(n * k), k,
                                       attention_mask=attention_mask.reshape(n * k, length))
    return ref_numpy.classifier_logits(config, params, head, ids, positions, attention_mask=attention_mask)


def probabilities(logits) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    logits = np.asarray(logits, np.float64)
    logits = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=-1, keepdims=True)


def load_classifier(folder) -> tuple:
    """(config, params, head, {"labels", "special_tokens", "lm_coef"}) of a fine-tuned checkpoint."""
    import weights
    from gptspec.common import checked_weights

    if not Path(folder).is_dir():
        raise ValueError(f"--weights {folder} does not exist" if not Path(folder).exists() else
                         f"--weights {folder} is a file; give the fine-tuning run's folder")
    folder = checked_weights(Path(folder))
    for name in (HEAD_FILE, LABELS_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"{folder} is not a fine-tuned classifier: {name} is missing (make one with "
                             f"`gptspec finetune`)")
    config, params = weights.load(folder)
    try:
        with np.load(folder / HEAD_FILE, allow_pickle=False) as stored:
            head = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{folder / HEAD_FILE} is damaged ({type(error).__name__}: {error})") from None
    try:
        saved = json.loads((folder / LABELS_FILE).read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or not {"labels", "special_tokens"} <= set(saved):
            raise ValueError("no 'labels' and 'special_tokens' in it")
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{folder / LABELS_FILE} is damaged ({error})") from None
    return config, params, head, saved

