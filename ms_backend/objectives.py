"""What a Trainer minimises: the spec's language-modelling loss, or GPT-1's fine-tuning loss for one
of its four tasks (read beside ref_numpy/train.py's loss_and_grads and ref_numpy/classifier.py).

An objective does three things for the Trainer (train.py):

    arrays(config, *batch)      the arguments of Trainer.step -> one micro-batch's NumPy arrays,
                                after the spec's checks (so bad input gets the spec's messages)
    counts(arrays)              what the step's loss is a mean over, in this micro-batch
    loss(model, drops, batch, totals)   the micro-batch's share of the step's loss, on Tensors
    loss_at_top(..., top)       the same from the last block's output (Trainer(recompute=True))

    LanguageModel()                    step(inputs, targets, attention_mask=None)
        loss = sum over targets of -log p(target) / totals["targets"]
    Classifier(head, task, lm_coef)    step(ids, labels, attention_mask=None, clf_positions)
        loss = sum over examples of -log p(label) / totals["examples"]
               + lm_coef x sum over the rows' LM targets of -log p(next token) / totals["targets"]

`totals` are the counts of the whole step (every micro-batch, and under data parallel every rank),
so the micro-batches' summed gradients are exactly the gradients of the whole batch's mean loss:
--grad-accum and data parallel change only the rounding.

The classifier's tasks (ids/mask/clf_positions per example; labels [E]):
    classify, entail   ids [E, T], clf_positions [E]          logits = h @ w + b        [E, n_classes]
    similar            ids [E, 2, T] (a+b, b+a), clf [E, 2]    logits = (h_ab + h_ba) @ w + b
    choice             ids [E, N, T] (one row per answer)      scores = (h @ w + b).reshape(E, N)
The model reads the R rows of a micro-batch in the spec's order: classify E rows; similar the E
a+b rows, then the E b+a rows; choice example by example, answer by answer.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from ref_numpy import IGNORE_INDEX, GPTConfig, check_targets, prepare_inputs
from ref_numpy.classifier import (NO_LM_TARGETS, check_choice_head, check_head, check_labels, check_lm_coef,
                                  check_positions, fine_tuning_lm_targets)
from ref_numpy.data import EXAMPLE_LAYOUTS, example_rows

from .amp import to
from .classifier import ClassifierHead, at_positions, final_hidden
from .layers import dropout as apply_dropout
from .model import attention_mask_4d

TASKS = ("classify", "entail", "similar", "choice")


def cross_entropy(logits, targets, *, ignore_index=IGNORE_INDEX, n_targets=None):
    """ref_numpy.cross_entropy on Tensors: the sum over the non-ignored targets of
    -log softmax(logits)[target], divided by `n_targets` (default: their number, i.e. the mean).

    logits [..., V] (any float dtype; computed in float32, as the spec upcasts), targets int
    [...] with ignore_index where there is nothing to predict.  The log-sum-exp is shifted by the
    row max, which is a constant for the gradient (d/d top of top + log sum exp(x - top) = 0)."""
    x = to(logits, ms.float32)
    x = x.reshape(-1, x.shape[-1])  # [N, V]
    t = targets.reshape(-1)
    keep = t != ignore_index
    safe = ops.where(keep, t, ops.zeros_like(t))  # any valid index; the row is masked below
    top = ops.stop_gradient(x.max(axis=-1, keepdims=True))
    lse = top[:, 0] + ops.log(ops.exp(x - top).sum(axis=-1))
    picked = ops.gather_elements(x, 1, safe[:, None])[:, 0]
    per_target = ops.where(keep, lse - picked, ops.zeros_like(lse))
    count = keep.astype(ms.float32).sum() if n_targets is None else n_targets
    return per_target.sum() / count


def model_inputs(config: GPTConfig, ids, attention_mask) -> dict:
    """prepare_inputs's checks -> {"ids", "position_ids", "mask"} (mask all ones when None: the
    same positions and attention as no mask, and one compiled graph per shape)."""
    inputs = prepare_inputs(config, ids, attention_mask=attention_mask)
    mask = np.ones_like(inputs.ids) if inputs.attention_mask is None else inputs.attention_mask
    return {"ids": inputs.ids, "position_ids": inputs.position_ids, "mask": mask}


def run_model(model, drops, batch):
    """(logits [R, T, V], the hidden state lm_head reads [R, T, C]) of a training forward."""
    n_tokens = batch["ids"].shape[1]
    logits, _, intermediates = model.run(batch["ids"], batch["position_ids"],
                                         attention_mask_4d(n_tokens, n_tokens, batch["mask"]), drops=drops)
    return logits, final_hidden(model, intermediates)


class LanguageModel:
    """The spec's next-token loss (ref_numpy.loss_and_grads)."""
    cells = ()          # no parameters besides the model's
    extra_masks = ()    # dropout masks besides the model's

    def bind(self, config: GPTConfig) -> "LanguageModel":
        return self

    def arrays(self, config: GPTConfig, inputs, targets, attention_mask=None) -> dict:
        """inputs, targets int [B, T] (IGNORE_INDEX where nothing is predicted), mask 0/1 or None.
        A micro-batch may have no target (its share of the step is 0); the step must have one."""
        arrays = model_inputs(config, inputs, attention_mask)
        arrays["targets"] = check_targets(targets, arrays["ids"].shape, config.n_vocab, require_one=False)
        return arrays

    def counts(self, arrays: dict) -> dict:
        return {"targets": int(np.count_nonzero(arrays["targets"] != IGNORE_INDEX))}

    def check_totals(self, totals: dict) -> None:
        """The whole step needs a target (check_targets's message)."""
        if totals["targets"] == 0:
            raise ValueError(f"every entry of targets equals ignore_index={IGNORE_INDEX}: the mean loss over no "
                             f"targets is undefined")

    def n_examples(self, arrays: dict) -> int:
        return len(arrays["ids"])

    def row_index(self, arrays: dict, first: int, global_examples: int) -> np.ndarray:
        """The model rows, within a micro-batch of `global_examples` examples, of this one's
        examples (which start at example `first`): under data parallel, which rows of the whole
        micro-batch's dropout masks are this rank's."""
        return np.arange(first, first + self.n_examples(arrays))

    def loss(self, model, drops, batch, totals):
        return self.loss_from(*run_model(model, drops, batch), drops, batch, totals)

    def loss_at_top(self, model, drops, batch, totals, top):
        """The same loss from the last block's output `top` [R, T, C] (block-wise recompute)."""
        return self.loss_from(*model.final(top), drops, batch, totals)

    def loss_from(self, logits, hidden, drops, batch, totals):
        return cross_entropy(logits, batch["targets"], n_targets=totals["targets"])


class Classifier:
    """GPT-1's fine-tuning loss for `task` (TASKS): the head's cross-entropy over the examples plus
    lm_coef x the LM loss of the same rows, from one forward pass (ref_numpy.classifier_loss_and_grads,
    similarity_loss_and_grads, choice_loss_and_grads).  head {"w", "b"}: [C, n_classes], [n_classes]
    (choice: [C, 1], [1], one score per answer row)."""
    extra_masks = ("head",)  # dropout on each row's h before the head, drawn after the model's

    def __init__(self, head: dict, task: str = "classify", lm_coef: float = 0.5):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task, self.lm_coef = task, float(check_lm_coef(lm_coef))
        self.head_values = head
        self.head = None      # the Cell, built by bind() for a config

    def bind(self, config: GPTConfig) -> "Classifier":
        """Check the head against `config` (the spec's checks) and make its Cell (the head's trained
        Parameters: one Trainer's own, so an objective serves one Trainer)."""
        if self.head is not None:
            raise ValueError("this Classifier objective already belongs to a Trainer (it holds that Trainer's head "
                             "Parameters): give each Trainer its own Classifier(head, task, lm_coef)")
        dtype = self.head_values["w"].dtype if isinstance(self.head_values, dict) and "w" in self.head_values \
            else np.float32
        if self.task == "choice":
            check_choice_head(config, self.head_values, dtype)
            self.n_classes = None
        else:
            self.n_classes = check_head(config, self.head_values, dtype)
        self.head = ClassifierHead(self.head_values)
        return self

    @property
    def cells(self):
        return (self.head,)

    def arrays(self, config: GPTConfig, ids, labels, attention_mask=None, clf_positions=None) -> dict:
        if clf_positions is None:
            raise ValueError("clf_positions is required by a classifier objective: each example's classify token")
        ids, positions = np.asarray(ids), np.asarray(clf_positions)
        mask = None if attention_mask is None else np.asarray(attention_mask)
        if ids.ndim != (2 if self.task in ("classify", "entail") else 3):
            raise ValueError(f"ids for task {self.task} must be {EXAMPLE_LAYOUTS[self.task]}, got shape {ids.shape}")
        n_examples = ids.shape[0]
        if self.task == "choice" and ids.shape[1] < 2:
            raise ValueError(f"ids for task choice has {ids.shape[1]} answer per example: need n_choices >= 2")
        rows, mask_rows, position_rows = (example_rows(self.task, a) for a in (ids, mask, positions))
        arrays = model_inputs(config, rows, mask_rows)
        n_rows, n_tokens = arrays["ids"].shape
        arrays["positions"] = check_positions(position_rows, None if mask is None else arrays["mask"], n_rows,
                                              n_tokens)
        n_classes = ids.shape[1] if self.task == "choice" else self.n_classes
        arrays["labels"] = check_labels(labels, n_examples, n_classes)
        arrays["targets"] = self._lm_targets(arrays["ids"], None if mask is None else arrays["mask"])
        return arrays

    def _lm_targets(self, ids, mask):
        """[R, T] LM targets: hidden[:, :-1] predicts ids[:, 1:] (shift_targets), IGNORE_INDEX in the
        last column; all ignored when lm_coef == 0."""
        targets = np.full(ids.shape, IGNORE_INDEX, np.int64)
        lm_targets = fine_tuning_lm_targets(ids, mask, self.lm_coef, require_one=False)   # check_totals: the step
        if lm_targets is not None:
            targets[:, :-1] = lm_targets
        return targets

    def counts(self, arrays: dict) -> dict:
        return {"examples": len(arrays["labels"]),
                "targets": int(np.count_nonzero(arrays["targets"] != IGNORE_INDEX))}

    def check_totals(self, totals: dict) -> None:
        """The whole step needs an LM target when lm_coef > 0 (the spec's message); a micro-batch
        alone may have none."""
        if self.lm_coef > 0 and totals["targets"] == 0:
            raise ValueError(NO_LM_TARGETS)

    def n_examples(self, arrays: dict) -> int:
        return len(arrays["labels"])

    def row_index(self, arrays: dict, first: int, global_examples: int) -> np.ndarray:
        mine = np.arange(first, first + self.n_examples(arrays))
        if self.task == "similar":   # the a+b rows of all examples, then their b+a rows
            return np.concatenate([mine, global_examples + mine])
        if self.task == "choice":    # every answer row of each example
            n_choices = len(arrays["ids"]) // len(mine)
            return (mine[:, None] * n_choices + np.arange(n_choices)).reshape(-1)
        return mine

    def scores(self, h, n_examples):
        """h [R, C] (each row's classify-token state) -> the task's logits [E, n]."""
        if self.task == "similar":
            return self.head(h[:n_examples] + h[n_examples:])
        if self.task == "choice":
            return self.head(h).reshape(n_examples, -1)
        return self.head(h)

    def loss(self, model, drops, batch, totals):
        return self.loss_from(*run_model(model, drops, batch), drops, batch, totals)

    def loss_at_top(self, model, drops, batch, totals, top):
        """The same loss from the last block's output `top` [R, T, C] (block-wise recompute)."""
        return self.loss_from(*model.final(top), drops, batch, totals)

    def loss_from(self, logits, hidden, drops, batch, totals):
        """logits [R, T, V] and the final hidden state [R, T, C] -> the micro-batch's share of the loss."""
        h = at_positions(hidden, batch["positions"])  # [R, C]
        if drops is not None:  # the head computes in float32, its dropout too
            h = apply_dropout(h, drops["head"], ms.float32)
        task_logits = self.scores(h, batch["labels"].shape[0])
        loss = cross_entropy(task_logits, batch["labels"], n_targets=totals["examples"])
        if self.lm_coef > 0:
            loss = loss + self.lm_coef * cross_entropy(logits, batch["targets"], n_targets=totals["targets"])
        return loss

    def logits(self, model, batch):
        """The task's logits [E, n] with the current weights, no dropout (held-out evaluation)."""
        _, hidden = run_model(model, None, batch)
        return self.scores(at_positions(hidden, batch["positions"]), batch["labels"].shape[0])


def sum_counts(objective, micro_arrays: list) -> dict:
    """The objective's counts (targets; for the classifier also examples) summed over micro-batches."""
    totals: dict[str, int] = {}
    for arrays in micro_arrays:
        for name, count in objective.counts(arrays).items():
            totals[name] = totals.get(name, 0) + count
    return totals


def as_tensors(arrays: dict) -> dict:
    """A micro-batch's arrays as an input of a compiled step: mutable, so the graph reads its
    Tensors as variables (compiled once per shape, not once per call)."""
    return ms.mutable({name: Tensor(value) for name, value in arrays.items()})


def count_tensors(totals: dict) -> dict:
    """The step's totals as float32 scalars (a loss's normalisers), mutable as as_tensors."""
    return ms.mutable({name: Tensor(float(value), ms.float32) for name, value in totals.items()})
