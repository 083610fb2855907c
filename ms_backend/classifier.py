"""GPT-1's fine-tuning head in MindSpore, as ref_numpy/classifier.py (read that first).

    hidden = the model's final hidden state [B, T, C]     (after ln_f for GPT-2)
    h      = hidden[b, clf_positions[b]]       [B, C]
    logits = h @ head["w"] + head["b"]         [B, n_classes]     float32, like the LM logits at O0-O2
    loss   = cross_entropy(logits, labels) + lm_coef * LM loss of the same rows (one forward pass)

The checks are the spec's (check_head, check_labels, check_positions, shift_targets), so bad input
gets its messages.
"""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from ref_numpy import GPTConfig, prepare_inputs, shift_targets
from ref_numpy.classifier import check_head, check_labels, check_positions

from .amp import to

HEAD_NAMES = ("head.w", "head.b")  # the head's Parameter names (the model's are the params dict's)


def check_lm_coef(lm_coef) -> float:
    """lm_coef >= 0, finite (ref_numpy.classifier_loss_and_grads checks it inline, same message)."""
    if isinstance(lm_coef, bool) or not isinstance(lm_coef, (int, float, np.integer, np.floating)) \
            or not math.isfinite(lm_coef) or lm_coef < 0:
        raise ValueError(f"lm_coef must be a finite number >= 0, got {lm_coef!r}")
    return float(lm_coef)


class ClassifierHead(nn.Cell):
    """w [C, n_classes], b [n_classes] as float32 Parameters; computes in float32."""

    def __init__(self, config: GPTConfig, head: dict):
        super().__init__()
        self.n_classes = check_head(config, head, head["w"].dtype if isinstance(head, dict) and "w" in head
                                    else np.float32)
        self.w = Parameter(Tensor(np.asarray(head["w"], np.float32)), name=HEAD_NAMES[0])
        self.b = Parameter(Tensor(np.asarray(head["b"], np.float32)), name=HEAD_NAMES[1])

    def construct(self, h):
        return ops.matmul(to(h, ms.float32), self.w) + self.b

    def numpy(self) -> dict:
        return {"w": np.array(self.w.asnumpy()), "b": np.array(self.b.asnumpy())}


def final_hidden(model, intermediates):
    """The hidden state lm_head reads, from GPTModel.run's intermediates: ln_f's output (GPT-2),
    the last block's output (GPT-1)."""
    return intermediates[-1] if model.has_ln_f else intermediates[-1][-1]


def at_positions(hidden, positions):
    """hidden [B, T, C], positions int [B] -> [B, C]: each row's classify token."""
    B, _, C = hidden.shape
    index = ops.broadcast_to(positions.reshape(B, 1, 1), (B, 1, C))
    return ops.gather_elements(hidden, 1, index)[:, 0]


def classifier_batch(config: GPTConfig, head: ClassifierHead, ids, labels, clf_positions, attention_mask,
                     lm_coef: float, ignore_index: int):
    """The spec's checks, then NumPy arrays: ids, position ids, mask (ones when None), LM targets
    [B, T] (ignore_index in the last column: the spec's shift_targets predicts ids[:, 1:] from
    hidden[:, :-1]), their count, labels [B], positions [B]."""
    inputs = prepare_inputs(config, ids, attention_mask=attention_mask)
    ids, mask = inputs.ids, inputs.attention_mask
    batch, n_tokens = ids.shape
    positions = check_positions(clf_positions, mask, batch, n_tokens)
    labels = check_labels(labels, batch, head.n_classes)
    lm_targets = np.full((batch, n_tokens), ignore_index, np.int64)
    if lm_coef > 0:
        if n_tokens < 2:
            raise ValueError("ids has one token per row: the LM loss needs at least 2 (or pass lm_coef=0)")
        _, shifted, _ = shift_targets(ids, mask, ignore_index=ignore_index)
        if (shifted == ignore_index).all():
            raise ValueError("no row has two real tokens in a row: the LM loss has no targets (pass lm_coef=0)")
        lm_targets[:, :-1] = shifted
    mask = np.ones_like(ids) if mask is None else mask
    return ids, inputs.position_ids, mask, lm_targets, int(np.count_nonzero(lm_targets != ignore_index)), labels, \
        positions
