"""Checks on user input, shared by every backend so all give the same messages.

Each check turns a bad input into a ValueError/TypeError that names the argument and
the problem, instead of a NumPy traceback from deep inside the model.
"""
from __future__ import annotations

import numpy as np

from .config import GPTConfig
from .loss import IGNORE_INDEX


def as_token_ids(ids, config: GPTConfig, name: str = "ids") -> np.ndarray:
    """ids: int array-like [B, T] or [T] (taken as B = 1) -> int64 [B, T], range-checked."""
    arr = np.asarray(ids)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be integer token ids, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [B, T] or [T], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}): need at least one token per row")
    low, high = arr.min(), arr.max()
    if low < 0 or high >= config.n_vocab:
        bad = low if low < 0 else high
        raise ValueError(f"{name} contains token id {bad}, outside the vocabulary [0, {config.n_vocab})")
    return arr.astype(np.int64, copy=False)


def past_length(past, config: GPTConfig, batch: int) -> int:
    """Validate a KV cache (one (k, v) per layer, each [B, H, S_past, D]) and return S_past."""
    if past is None:
        return 0
    if len(past) != config.n_layer:
        raise ValueError(f"past has {len(past)} layer entries, config has n_layer={config.n_layer}")
    expected = (batch, config.n_head, None, config.head_dim)
    for i, layer in enumerate(past):
        if len(layer) != 2:
            raise ValueError(f"past[{i}] must be a (k, v) pair, got {len(layer)} items")
        for which, t in zip("kv", layer):
            shape = tuple(t.shape)
            if len(shape) != 4 or any(e is not None and e != s for e, s in zip(expected, shape)):
                raise ValueError(f"past[{i}] {which} has shape {shape}, expected [{batch}, "
                                 f"{config.n_head}, S_past, {config.head_dim}]")
            if shape[2] != past[0][0].shape[2]:
                raise ValueError(f"past[{i}] {which} has length {shape[2]}, past[0] has {past[0][0].shape[2]}")
    return int(past[0][0].shape[2])


def check_length(n_past: int, n_new: int, config: GPTConfig) -> None:
    if n_past + n_new > config.n_ctx:
        raise ValueError(f"sequence too long: {n_past} cached + {n_new} new tokens = {n_past + n_new} "
                         f"exceeds n_ctx={config.n_ctx}")


def as_attention_mask(attention_mask, batch: int, total: int) -> np.ndarray | None:
    """attention_mask [B, S_past + T] of 0/1 (1 = real token) -> int64, or None."""
    if attention_mask is None:
        return None
    mask = np.asarray(attention_mask)
    if mask.shape != (batch, total):
        raise ValueError(f"attention_mask has shape {mask.shape}, expected (batch, past + new tokens) = "
                         f"{(batch, total)}")
    if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
        raise TypeError(f"attention_mask must hold integers 0/1 or booleans, got dtype {mask.dtype}")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("attention_mask must contain only 0 (padding) and 1 (real token)")
    return mask.astype(np.int64)


def default_position_ids(attention_mask, n_past: int, batch: int, n_new: int) -> np.ndarray:
    """Positions of the n_new newest tokens, [B, T].

    Without a mask: n_past, n_past + 1, ...  With a (left-padding) mask: the number of real
    tokens before each one, cumsum(mask) - 1, so a padded row uses exactly the positions the
    unpadded row would.  Padding slots get position 0; their output is never used.
    """
    if attention_mask is None:
        return np.broadcast_to(np.arange(n_past, n_past + n_new), (batch, n_new)).copy()
    positions = np.cumsum(attention_mask, axis=-1) - 1
    positions = np.where(attention_mask == 0, 0, positions)
    return positions[:, -n_new:]


def as_position_ids(position_ids, config: GPTConfig, batch: int, n_new: int) -> np.ndarray:
    arr = np.asarray(position_ids)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"position_ids must be integers, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = np.broadcast_to(arr, (batch, arr.shape[0]))
    if arr.shape != (batch, n_new):
        raise ValueError(f"position_ids has shape {arr.shape}, expected {(batch, n_new)}")
    if arr.min() < 0 or arr.max() >= config.n_ctx:
        raise ValueError(f"position_ids must lie in [0, {config.n_ctx}), got range "
                         f"[{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)


def check_generation_args(*, max_new_tokens, temperature, top_k, top_p, eos_id, config: GPTConfig,
                          prompt_length: int) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if prompt_length + max_new_tokens > config.n_ctx:
        raise ValueError(f"prompt length {prompt_length} + max_new_tokens {max_new_tokens} = "
                         f"{prompt_length + max_new_tokens} exceeds n_ctx={config.n_ctx}; "
                         f"shorten the prompt or ask for fewer tokens")
    check_sampling_args(temperature=temperature, top_k=top_k, top_p=top_p)
    if eos_id is not None and not (isinstance(eos_id, (int, np.integer)) and 0 <= eos_id < config.n_vocab):
        raise ValueError(f"eos_id must be a token id in [0, {config.n_vocab}), got {eos_id!r}")


def check_sampling_args(*, temperature, top_k, top_p) -> None:
    if not isinstance(temperature, (int, float, np.floating)) or not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float, np.floating)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must lie in (0, 1] or be None, got {top_p!r}")


# Training inputs (issue 11): shared by ref_numpy.loss_and_grads and the MindSpore trainer.

def check_targets(targets, expected_shape, n_vocab: int, ignore_index: int = IGNORE_INDEX, name: str = "targets", *,
                  require_one: bool = True) -> np.ndarray:
    """targets int [B, T] -> int64, checked: the shape of the inputs it goes with, every id in
    [0, n_vocab) or equal to `ignore_index`, and at least one not ignored (else the mean loss
    over the non-ignored targets is 0 / 0).  require_one=False allows none: one micro-batch of a
    larger batch, whose mean is taken over the whole batch's targets."""
    arr = np.asarray(targets)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be integer token ids, got dtype {arr.dtype}")
    if arr.shape != tuple(expected_shape):
        raise ValueError(f"{name} has shape {arr.shape}, but the inputs have shape {tuple(expected_shape)}: "
                         f"one target per input position")
    bad = (arr != ignore_index) & ((arr < 0) | (arr >= n_vocab))
    if bad.any():
        raise ValueError(f"{name} contains id {arr[bad].flat[0]}, outside the vocabulary [0, {n_vocab}) "
                         f"and not ignore_index={ignore_index}")
    if require_one and (arr == ignore_index).all():
        raise ValueError(f"every entry of {name} equals ignore_index={ignore_index}: the mean loss over "
                         f"no targets is undefined")
    return arr.astype(np.int64, copy=False)


def check_dropout(dropout, name: str = "dropout") -> float:
    """A dropout probability p in [0, 1) (p = 1 would drop everything and scale by 1/0)."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating, np.integer)) \
            or not 0 <= dropout < 1:
        raise ValueError(f"{name} must be a probability in [0, 1), got {dropout!r}")
    return float(dropout)
