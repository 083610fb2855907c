"""What a training run minimises and measures, for either backend (backends.py):

    LanguageModelling()             `gptspec train`: a micro-batch is (inputs, targets, mask)
    Classification(task, lm_coef)   `gptspec finetune`: (ids, labels, positions, mask), GPT-1's head

An objective says what a micro-batch counts (`counts`: the step's loss is a mean over the whole
batch's targets -- and, for the classifier, examples; `sum_counts` adds them up), computes a micro-batch's share of that loss
and its gradients by the spec (`spec_loss_and_grads`, the NumPy backend), names the MindSpore
Trainer's objective and arguments (`ms_objective`, `ms_arguments`), evaluates held-out data
(`evaluate`) and writes the files a checkpoint needs beyond the weights (`write_files`).

Both backends weight micro-batches the same way: micro-batch k's loss sums over its targets (and
examples) divided by the whole batch's counts, so `--grad-accum K` computes the same update as
K = 1 (and under msrun, the ranks the same as one process), up to rounding.
"""
from __future__ import annotations

import json
import math

import numpy as np

import ref_numpy

from .data import n_targets

LOG_FLOAT_MAX = math.log(np.finfo(np.float64).max)     # exp of more overflows: perplexity inf


def sum_counts(counts: list[dict]) -> dict:
    """The counts the step's loss is a mean over: the micro-batches' `objective.counts`, summed."""
    totals: dict[str, int] = {}
    for micro_counts in counts:
        for name, count in micro_counts.items():
            totals[name] = totals.get(name, 0) + count
    return totals


class LanguageModelling:
    """The spec's next-token loss: the mean over the batch's targets (ref_numpy.loss_and_grads)."""

    def counts(self, micro) -> dict:
        return {"targets": n_targets(micro[1])}

    def check_totals(self, step: int, totals: dict) -> None:
        if totals["targets"] == 0:
            raise ValueError(f"step {step + 1}: every target of the batch is ignored (padding or prompt)")

    def spec_loss_and_grads(self, config, params, head, micro, counts, totals, *, dropout, seed):
        """(this micro-batch's share of the batch's loss, its gradients, None): the micro-batch's
        mean loss weighted by its share of the batch's targets (`counts`: this micro-batch's, `totals`:
        the batch's).  A micro-batch without targets: None."""
        inputs, targets, mask = micro
        share = counts["targets"] / totals["targets"]
        if share == 0:
            return None
        loss, grads = ref_numpy.loss_and_grads(config, params, inputs, targets, attention_mask=mask,
                                               dropout=dropout, seed=seed)
        return share * float(loss), scaled(grads, share), None

    def ms_objective(self, head):
        from ms_backend.objectives import LanguageModel

        return LanguageModel()

    def ms_arguments(self, micro) -> tuple:
        return tuple(micro)                     # inputs, targets, attention_mask

    def evaluate(self, backend, windows, batch_rows: int) -> dict:
        """Held-out loss (the mean over every target of `windows`, in batches of `batch_rows`) and
        perplexity exp(loss), with the backend's current weights."""
        total, count = 0.0, 0
        for start in range(0, len(windows), batch_rows):
            inputs, targets, mask = windows.rows(slice(start, start + batch_rows))
            n = n_targets(targets)
            if n:
                logits = backend.logits(inputs, mask)
                total += float(ref_numpy.cross_entropy(logits, targets)) * n
                count += n
        loss = total / count if count else float("nan")
        return {"valid_loss": loss, "valid_perplexity": math.exp(loss) if loss < LOG_FLOAT_MAX else math.inf}

    def write_files(self, folder, head) -> None:
        """Nothing besides the weights."""

    def check_resumable(self, folder, config) -> None:
        """Nothing besides the weights, whose config the backend checks when it loads them."""


class Classification:
    """GPT-1's fine-tuning loss for `task` (classify, entail, similar, choice): the head's
    cross-entropy, a mean over the batch's examples, plus lm_coef x the LM loss of the same rows, a
    mean over the batch's LM targets (ref_numpy.classifier_loss_and_grads and its two siblings).
    labels, special: the label set and the special tokens' ids, saved beside the head."""

    def __init__(self, task: str, lm_coef: float, labels: list, special: dict):
        self.task, self.lm_coef = task, float(ref_numpy.classifier.check_lm_coef(lm_coef))
        self.labels, self.special = labels, special

    def counts(self, micro) -> dict:
        ids, _, _, mask = micro
        rows = ref_numpy.data.example_rows(self.task, ids)
        mask_rows = ref_numpy.data.example_rows(self.task, mask)
        lm_targets = 0 if self.lm_coef == 0 else n_targets(ref_numpy.shift_targets(rows, mask_rows)[1])
        return {"examples": len(ids), "targets": lm_targets}

    def check_totals(self, step: int, totals: dict) -> None:
        if totals["examples"] == 0:
            raise ValueError(f"step {step + 1}: the batch has no examples")

    def spec_loss_and_grads(self, config, params, head, micro, counts, totals, *, dropout, seed):
        """(this micro-batch's share of the batch's loss, its gradients, the head's).  The spec's
        functions return a micro-batch's own means L2 + c L1; weighted by w = its share of the
        examples, with c = lm_coef x (its share of the LM targets) / w, that is exactly
        (sum of its task losses) / batch examples + lm_coef x (sum of its LM losses) / batch targets."""
        ids, labels, positions, mask = micro
        weight = counts["examples"] / totals["examples"]
        lm_coef = 0.0 if counts["targets"] == 0 else self.lm_coef * counts["targets"] / totals["targets"] / weight
        common = dict(lm_coef=lm_coef, dropout=dropout, seed=seed)
        if self.task == "similar":
            loss, grads, head_grads = ref_numpy.similarity_loss_and_grads(
                config, params, head, ids[:, 0], ids[:, 1], labels, positions[:, 0], positions[:, 1],
                attention_mask_ab=mask[:, 0], attention_mask_ba=mask[:, 1], **common)
        elif self.task == "choice":
            n, k, length = ids.shape
            loss, grads, head_grads = ref_numpy.choice_loss_and_grads(
                config, params, head, ids.reshape(n * k, length), labels, positions.reshape(n * k), k,
                attention_mask=mask.reshape(n * k, length), **common)
        else:
            loss, grads, head_grads = ref_numpy.classifier_loss_and_grads(
                config, params, head, ids, labels, positions, attention_mask=mask, **common)
        return weight * float(loss), scaled(grads, weight), scaled(head_grads, weight)

    def ms_objective(self, head):
        from ms_backend.objectives import Classifier

        return Classifier(head, task=self.task, lm_coef=self.lm_coef)

    def ms_arguments(self, micro) -> tuple:
        ids, labels, positions, mask = micro
        return ids, labels, mask, positions

    def evaluate(self, backend, rows, batch_rows: int) -> dict:
        """Held-out classification loss (mean -log p(label)) and accuracy, with the backend's
        current weights (`backend.task_logits`)."""
        nll, correct = 0.0, 0
        for start in range(0, len(rows), batch_rows):
            ids, labels, positions, mask = rows.rows(slice(start, start + batch_rows))
            p = probabilities(backend.task_logits(ids, positions, mask))
            nll -= float(np.sum(np.log(np.maximum(p[np.arange(len(labels)), labels], 1e-300))))
            correct += int(np.sum(p.argmax(axis=-1) == labels))
        return {"valid_loss": nll / len(rows), "valid_accuracy": correct / len(rows)}

    def write_files(self, folder, head) -> None:
        """The head and the label set beside the weights: classify_backend.load_classifier reads them."""
        from .classify_backend import HEAD_FILE, LABELS_FILE

        with open(folder / HEAD_FILE, "wb") as f:
            np.savez(f, **head)
        (folder / LABELS_FILE).write_text(json.dumps({"task": self.task, "labels": self.labels,
                                                      "special_tokens": self.special, "lm_coef": self.lm_coef},
                                                     indent=2) + "\n", encoding="utf-8")

    def check_resumable(self, folder, config) -> tuple:
        """load_classifier(folder), refused when it holds another model or label set than this run's."""
        from .classify_backend import load_classifier

        saved_config, params, head, saved = load_classifier(folder)
        if saved_config != config or saved["labels"] != self.labels:
            raise ValueError(f"{folder} holds another model or label set than this run's")
        return saved_config, params, head, saved


def scaled(grads, share: float):
    """share x every gradient (nested dicts; in the gradients' dtype)."""
    flat = ref_numpy.flatten_params(grads)
    return ref_numpy.unflatten_params({name: g * g.dtype.type(share) for name, g in flat.items()})


def probabilities(logits) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    logits = np.asarray(logits, np.float64)
    logits = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=-1, keepdims=True)
