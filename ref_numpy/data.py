"""Batches for language-model training: token lists -> a static-shape batch -> inputs and targets.

A model is trained to predict token t+1 from tokens 0..t, so one row of L token ids gives L - 1
training examples at once (the GPT-1 paper's inputs text[0:-1] and targets text[1:]):

    ids            [ A,  B,  C,  D ]
    inputs         [ A,  B,  C ]          ids[:, :-1]
    targets        [ B,  C,  D ]          ids[:, 1:]

Rows of a batch have different lengths, so they are first padded (or truncated) to one static
length, with an attention mask that is 1 on real tokens and 0 on padding.  A target is then
ignored (set to `ignore_index`, which `cross_entropy` skips) wherever the target itself is padding
or the position that would predict it is padding:

    right padding   ids [A, B, C, P, P]  mask [1, 1, 1, 0, 0]
                    inputs  [A, B, C, P]     targets [B, C, -, -]
    left padding    ids [P, P, A, B, C]  mask [0, 0, 1, 1, 1]
                    inputs  [P, P, A, B]     targets [-, -, B, C]   (A follows only padding:
                                                                     nothing predicts it)
"""
from __future__ import annotations

import numpy as np

from .loss import IGNORE_INDEX

PAD_SIDES = ("left", "right")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _token_row(sequence, index: int) -> np.ndarray:
    """sequences[index] -> int64 [n], checked: integer ids >= 0, at least one of them."""
    row = np.asarray(sequence)
    if row.ndim != 1:
        raise ValueError(f"sequences[{index}] must be a flat sequence of token ids, got shape {row.shape}")
    if row.size == 0:
        raise ValueError(f"sequences[{index}] is empty: a row without tokens has nothing to train on "
                         f"(drop it before batching)")
    if row.dtype == bool or not np.issubdtype(row.dtype, np.integer):
        raise TypeError(f"sequences[{index}] must hold integer token ids, got dtype {row.dtype}")
    if row.min() < 0:
        raise ValueError(f"sequences[{index}] contains the negative token id {row.min()}")
    return row.astype(np.int64, copy=False)


def pad_or_truncate(sequences, length, pad_id, *, side="right"):
    """Put variable-length token lists into one [B, length] batch with an attention mask.

    sequences  B >= 1 non-empty sequences of token ids (lists, tuples or 1-D integer arrays).
               An empty sequence is refused rather than turned into a row of pure padding: such a
               row contributes no target and usually means a bug upstream.
    length     the static row length, an int >= 2 (training needs at least one input and one
               target per row; `shift_targets` turns length L into L - 1 of each).
    pad_id     the int id written into padding slots.  Its value never matters to the loss (the
               mask hides it and its targets are ignored), but it must be a valid id for the
               embedding lookup, e.g. 0 or the end-of-text token.
    side       "right" (real tokens first, GPT-1/GPT-2 training) or "left" (padding first, as
               for batched generation).

    A sequence longer than `length` keeps its FIRST `length` tokens, on either side (the tail is
    cut, as GPT-1's fine-tuning code cuts each text to max_len).

    Returns (ids int64 [B, length], attention_mask int64 [B, length]; 1 = real token, 0 = padding).
    """
    if not _is_int(length):
        raise TypeError(f"length must be an int, got {type(length).__name__}")
    if length < 2:
        raise ValueError(f"length must be >= 2 (one input and one target per row), got {length}")
    if not _is_int(pad_id):
        raise TypeError(f"pad_id must be an int token id, got {type(pad_id).__name__}")
    if pad_id < 0:
        raise ValueError(f"pad_id must be a token id >= 0, got {pad_id}")
    if side not in PAD_SIDES:
        raise ValueError(f"side must be one of {PAD_SIDES}, got {side!r}")
    if isinstance(sequences, (str, bytes)) or not hasattr(sequences, "__len__"):
        raise TypeError(f"sequences must be a list of token-id sequences, got {type(sequences).__name__}")
    if len(sequences) == 0:
        raise ValueError("sequences is empty: need at least one row")
    rows = [_token_row(sequence, i)[:length] for i, sequence in enumerate(sequences)]  # keep the head

    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, row in enumerate(rows):
        start = 0 if side == "right" else length - len(row)
        ids[i, start:start + len(row)] = row
        mask[i, start:start + len(row)] = 1
    return ids, mask


def shift_targets(ids, attention_mask=None, *, ignore_index=IGNORE_INDEX):
    """Next-token inputs and targets from a batch of rows.

    ids             int [B, L], L >= 2
    attention_mask  0/1 [B, L] (1 = real token; left, right or no padding) or None
    ignore_index    the int written where there is no target (cross_entropy's ignore_index).
                    It must not be the id of a real target token, or that token would be
                    silently skipped.

    Returns (inputs int64 [B, L-1] = ids[:, :-1],
             targets int64 [B, L-1] = ids[:, 1:], with ignore_index wherever the target or the
                                      position predicting it is padding,
             attention_mask int64 [B, L-1] = attention_mask[:, :-1], or None without a mask).
    """
    arr = np.asarray(ids)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"ids must be integer token ids, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"ids must have shape [B, L], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] < 2:
        raise ValueError(f"ids has shape {arr.shape}: need at least one row of at least 2 tokens "
                         f"(an input and its target)")
    if not _is_int(ignore_index):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    arr = arr.astype(np.int64, copy=False)
    inputs, targets = arr[:, :-1].copy(), arr[:, 1:].copy()
    if attention_mask is None:
        mask = None
        counted = np.ones(targets.shape, dtype=bool)
    else:
        mask = np.asarray(attention_mask)
        if mask.shape != arr.shape:
            raise ValueError(f"attention_mask has shape {mask.shape}, expected the shape of ids {arr.shape}")
        if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
            raise TypeError(f"attention_mask must hold integers 0/1 or booleans, got dtype {mask.dtype}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must contain only 0 (padding) and 1 (real token)")
        mask = mask.astype(np.int64)
        counted = (mask[:, 1:] == 1) & (mask[:, :-1] == 1)  # a real target with a real predictor
        mask = mask[:, :-1]
    if (targets[counted] == ignore_index).any():
        raise ValueError(f"ignore_index={ignore_index} is the id of a real target token in ids: that token "
                         f"would be skipped by the loss; use an id outside the vocabulary (e.g. {IGNORE_INDEX})")
    targets[~counted] = ignore_index
    return inputs, targets, mask


# Fine-tuning batches (classifier.py's tasks): one array per example -> the rows the model reads
EXAMPLE_LAYOUTS = {"classify": "[E, T]", "entail": "[E, T]", "similar": "[E, 2, T] (a+b, b+a)",
                   "choice": "[E, N, T] (one row per answer)"}


def example_rows(task: str, array):
    """A fine-tuning batch's per-example array (ids, attention mask or classify positions) -> the
    model's rows, in the order classifier.py's functions read them: classify and entail [E, ...]
    unchanged; similar [E, 2, ...] -> the E a+b rows, then the E b+a rows; choice [E, N, ...] ->
    [E*N, ...], example by example.  None stays None."""
    if task not in EXAMPLE_LAYOUTS:
        raise ValueError(f"task must be one of {tuple(EXAMPLE_LAYOUTS)}, got {task!r}")
    if array is None or task in ("classify", "entail"):
        return array
    array = np.asarray(array)
    if array.ndim < 2 or (task == "similar" and array.shape[1] != 2):
        raise ValueError(f"a {task} batch's arrays are per example {EXAMPLE_LAYOUTS[task]}, got shape {array.shape}")
    if task == "similar":
        return np.concatenate([array[:, 0], array[:, 1]])
    return array.reshape(-1, *array.shape[2:])
