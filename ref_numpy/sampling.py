"""Choosing the next token: logits processors and a seeded draw.

Every processor takes logits [B, V] and returns logits [B, V] with removed tokens set to
-inf.  The processed distribution is computed in float64 whatever the model's dtype, and
the draw is an inverse-CDF lookup of one uniform number per row, so two backends whose
processed distributions agree draw the same token for the same seed.
"""
from __future__ import annotations

import numpy as np

from .validation import check_sampling_args

TOP_P_CONVENTIONS = ("hf", "openai")


def apply_temperature(logits, temperature):
    """Divide by temperature (> 0): < 1 sharpens the distribution, > 1 flattens it."""
    return logits / temperature


def top_k_filter(logits, k):
    """Keep the k largest logits of each row -- and every logit tied with the k-th, so the
    result does not depend on how a sort orders equal values."""
    if k >= logits.shape[-1]:
        return logits
    kth_largest = -np.partition(-logits, k - 1, axis=-1)[..., k - 1:k]  # [B, 1]
    return np.where(logits >= kth_largest, logits, -np.inf)


def top_p_filter(logits, p, convention="hf"):
    """Nucleus filtering: keep the most probable tokens until their mass reaches p.

    convention="hf" (Hugging Face): the *smallest* set whose probability mass is >= p.
    convention="openai" (OpenAI's GPT-2 `sample.py`): the *largest* prefix whose mass is
        <= p (at least one token), plus every token tied with the last one kept.
    The two differ by one token: HF includes the token that crosses p, OpenAI does not.
    """
    if convention not in TOP_P_CONVENTIONS:
        raise ValueError(f"top_p convention must be one of {TOP_P_CONVENTIONS}, got {convention!r}")
    order = np.argsort(-logits, axis=-1, kind="stable")  # most probable first
    sorted_logits = np.take_along_axis(logits, order, axis=-1)
    sorted_probs = _softmax64(sorted_logits)
    cumulative = np.cumsum(sorted_probs, axis=-1)
    if convention == "hf":
        keep_sorted = (cumulative - sorted_probs) < p  # mass *before* this token is still short of p
        keep = np.empty_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        return np.where(keep, logits, -np.inf)
    n_keep = np.maximum((cumulative <= p).sum(axis=-1, keepdims=True), 1)
    threshold = np.take_along_axis(sorted_logits, n_keep - 1, axis=-1)
    return np.where(logits >= threshold, logits, -np.inf)


def _softmax64(logits):
    logits = np.asarray(logits, dtype=np.float64)
    e = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def processed_probs(logits, *, temperature=1.0, top_k=None, top_p=None, top_p_convention="hf"):
    """logits [B, V] -> float64 probabilities [B, V] after temperature, top-k, top-p (that
    order, as in both OpenAI's and Hugging Face's samplers).  temperature must be > 0."""
    logits = apply_temperature(np.asarray(logits, dtype=np.float64), temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p, top_p_convention)
    return _softmax64(logits)


def draw(probs, uniforms):
    """Inverse-CDF sampling: the first token whose cumulative probability exceeds u * total.
    probs [B, V], uniforms [B] in [0, 1).  Tokens of probability 0 are never chosen."""
    cumulative = np.cumsum(probs, axis=-1)
    targets = uniforms * cumulative[:, -1]
    tokens = [np.searchsorted(row, t, side="right") for row, t in zip(cumulative, targets)]
    return np.minimum(np.array(tokens, dtype=np.int64), probs.shape[-1] - 1)


def next_tokens(logits, rng, *, greedy=False, temperature=1.0, top_k=None, top_p=None, top_p_convention="hf"):
    """Pick one token per row of logits [B, V].

    Greedy (or temperature 0): the argmax, lowest id on ties.  Otherwise one draw per row
    from `rng` (a numpy Generator).  One uniform is consumed per row per step even in greedy
    mode, so the random stream stays aligned whatever mode each step runs in."""
    check_sampling_args(temperature=temperature, top_k=top_k, top_p=top_p)
    uniforms = rng.random(logits.shape[0])
    if greedy or temperature == 0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    probs = processed_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                            top_p_convention=top_p_convention)
    return draw(probs, uniforms)
