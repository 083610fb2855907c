"""Next-token cross-entropy and its gradient.

logits [..., V] (usually [B, T, V]), targets int [...] with `ignore_index` where there is
nothing to predict (padding).  The loss is the mean over the N non-ignored targets of

    -log softmax(logits)[target] = logsumexp(logits) - logits[target]

and its gradient with respect to the logits is, row by row,

    (softmax(logits) - onehot(target)) / N        (a zero row where the target is ignored).
"""
from __future__ import annotations

import numpy as np

# The target id that means "nothing to predict here" (padding, a prompt trained without loss): the
# one value every backend, data pipeline and check of this project uses (PyTorch's convention).
IGNORE_INDEX = -100


def _upcast(logits):
    """The reduction runs in at least float32: exp/sum in float16 lose ~3 digits over 50k logits."""
    return logits.astype(np.promote_types(logits.dtype, np.float32), copy=False)


def log_sum_exp(x, axis=-1):
    """log(sum(exp(x))) along `axis`, [..., V] -> [...].  Shifted by the row max so exp() never
    overflows (the max term is exp(0) = 1, so the sum is >= 1 and its log is finite)."""
    top = np.max(x, axis=axis, keepdims=True)
    e = x - top
    np.exp(e, out=e)  # in place: with V = 50257 this array is the largest of the whole step
    return (top + np.log(np.sum(e, axis=axis, keepdims=True))).squeeze(axis)


def cross_entropy(logits, targets, *, ignore_index=IGNORE_INDEX) -> float:
    """Mean over the non-ignored targets of -log softmax(logits)[target].

    logits [..., V] float; targets int [...] (ids in [0, V) or ignore_index; validate them with
    ref_numpy.check_targets).  Computed with log-sum-exp in at least float32."""
    x = _upcast(logits).reshape(-1, logits.shape[-1])  # [N, V]
    t = np.asarray(targets).reshape(-1)
    keep = np.flatnonzero(t != ignore_index)  # the rows that count
    picked = x[keep, t[keep]]  # the target's logit in each of them
    return float(np.mean(log_sum_exp(x)[keep] - picked))  # every row's lse: cheaper than copying x[keep]


def cross_entropy_backward(logits, targets, *, ignore_index=IGNORE_INDEX):
    """d loss / d logits, [..., V] in the dtype of logits: (softmax - onehot) / N on the rows with
    a target, zero on ignored rows; N = number of non-ignored targets."""
    x = _upcast(logits).reshape(-1, logits.shape[-1])  # [N_all, V]
    t = np.asarray(targets).reshape(-1)
    keep = t != ignore_index
    n = np.count_nonzero(keep)
    d = x - log_sum_exp(x)[:, None]
    np.exp(d, out=d)  # softmax, from the same log-sum-exp as the loss (in place: [N, V] is large)
    d[np.flatnonzero(keep), t[keep]] -= 1  # - onehot(target)
    d[~keep] = 0
    d /= n
    return d.astype(logits.dtype, copy=False).reshape(logits.shape)
