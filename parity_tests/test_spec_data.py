"""ref_numpy.pad_or_truncate and shift_targets: the batch layout of LM training, both padding sides."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ref_numpy import pad_or_truncate, shift_targets

IGNORE = -100
SIDES = ("left", "right")


def counted_pairs(inputs, targets, row):
    """(input token, target token) of every counted example of one row, in order."""
    keep = targets[row] != IGNORE
    return list(zip(inputs[row][keep].tolist(), targets[row][keep].tolist()))


def check_batch(sequences, length, pad_id, side):
    ids, mask = pad_or_truncate(sequences, length, pad_id, side=side)
    assert ids.shape == mask.shape == (len(sequences), length)
    assert ids.dtype == mask.dtype == np.int64
    inputs, targets, shifted_mask = shift_targets(ids, mask, ignore_index=IGNORE)
    assert inputs.shape == targets.shape == shifted_mask.shape == (len(sequences), length - 1)
    np.testing.assert_array_equal(shifted_mask, mask[:, :-1])
    np.testing.assert_array_equal(inputs, ids[:, :-1])
    for row, sequence in enumerate(sequences):
        kept = list(sequence[:length])  # truncation keeps the head
        real = ids[row][mask[row] == 1].tolist()
        assert real == kept
        assert (ids[row][mask[row] == 0] == pad_id).all()
        n = len(kept)
        expected_mask = [1] * n + [0] * (length - n) if side == "right" else [0] * (length - n) + [1] * n
        assert mask[row].tolist() == expected_mask
        # every consecutive pair of real tokens is one example, and nothing else is
        assert counted_pairs(inputs, targets, row) == list(zip(kept[:-1], kept[1:]))
    return ids, mask, inputs, targets


sequence_lists = st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=9), min_size=1, max_size=4)


@given(sequences=sequence_lists, length=st.integers(2, 8), pad_id=st.integers(0, 6), side=st.sampled_from(SIDES))
def test_padded_batch_holds_exactly_the_consecutive_pairs(sequences, length, pad_id, side):
    check_batch(sequences, length, pad_id, side)


def test_every_small_case_exhaustively():
    """All rows over the alphabet {0, 1} of 1..4 tokens, lengths 2..5, both sides, both pad ids."""
    rows = [list(r) for n in range(1, 5) for r in itertools.product((0, 1), repeat=n)]
    for length, side, pad_id in itertools.product(range(2, 6), SIDES, (0, 1)):
        check_batch(rows, length, pad_id, side)


@given(sequences=sequence_lists, length=st.integers(2, 8))
def test_left_and_right_padding_give_the_same_examples(sequences, length):
    examples = {}
    for side in SIDES:
        ids, mask = pad_or_truncate(sequences, length, 0, side=side)
        inputs, targets, _ = shift_targets(ids, mask, ignore_index=IGNORE)
        examples[side] = [counted_pairs(inputs, targets, row) for row in range(len(sequences))]
    assert examples["left"] == examples["right"]


def test_worked_examples_from_the_docstring():
    A, B, C, P = 5, 6, 7, 0
    ids, mask = pad_or_truncate([[A, B, C]], 5, P, side="right")
    assert ids.tolist() == [[A, B, C, P, P]] and mask.tolist() == [[1, 1, 1, 0, 0]]
    inputs, targets, m = shift_targets(ids, mask)
    assert inputs.tolist() == [[A, B, C, P]] and targets.tolist() == [[B, C, IGNORE, IGNORE]]
    assert m.tolist() == [[1, 1, 1, 0]]
    ids, mask = pad_or_truncate([[A, B, C]], 5, P, side="left")
    assert ids.tolist() == [[P, P, A, B, C]] and mask.tolist() == [[0, 0, 1, 1, 1]]
    inputs, targets, m = shift_targets(ids, mask)
    assert inputs.tolist() == [[P, P, A, B]] and targets.tolist() == [[IGNORE, IGNORE, B, C]]
    # truncation keeps the first tokens on both sides
    for side in SIDES:
        assert pad_or_truncate([[1, 2, 3, 4]], 2, 0, side=side)[0].tolist() == [[1, 2]]


def test_without_a_mask_every_target_counts():
    ids = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    inputs, targets, mask = shift_targets(ids)
    assert mask is None
    np.testing.assert_array_equal(inputs, ids[:, :-1])
    np.testing.assert_array_equal(targets, ids[:, 1:])


def test_ignore_index_may_equal_the_pad_id_when_only_padding_holds_it():
    ids, mask = pad_or_truncate([[1, 2]], 4, 0)
    _, targets, _ = shift_targets(ids, mask, ignore_index=0)
    assert targets.tolist() == [[2, 0, 0]]


def test_accepts_arrays_and_tuples():
    ids, mask = pad_or_truncate((np.array([1, 2, 3], dtype=np.int32), (4,)), 3, np.int64(0))
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("args, kwargs, error, words", [
    (([[1, 2]], 1, 0), {}, ValueError, "length must be >= 2"),
    (([[1, 2]], 2.0, 0), {}, TypeError, "length must be an int"),
    (([[1, 2]], True, 0), {}, TypeError, "length must be an int"),
    (([[1, 2]], 4, 0.0), {}, TypeError, "pad_id must be an int"),
    (([[1, 2]], 4, -1), {}, ValueError, "pad_id must be a token id >= 0"),
    (([[1, 2]], 4, 0), {"side": "middle"}, ValueError, "side must be one of"),
    (([], 4, 0), {}, ValueError, "sequences is empty"),
    (("abc", 4, 0), {}, TypeError, "sequences must be a list"),
    (([[1, 2], []], 4, 0), {}, ValueError, "sequences[1] is empty"),
    (([[1, 2], [1.5]], 4, 0), {}, TypeError, "sequences[1] must hold integer token ids"),
    (([[1, -2]], 4, 0), {}, ValueError, "sequences[0] contains the negative token id -2"),
    (([[[1, 2]]], 4, 0), {}, ValueError, "sequences[0] must be a flat sequence"),
])
def test_pad_or_truncate_rejects_bad_input(args, kwargs, error, words):
    with pytest.raises(error) as raised:
        pad_or_truncate(*args, **kwargs)
    assert words in str(raised.value)


@pytest.mark.parametrize("args, kwargs, error, words", [
    ((np.array([[1.0, 2.0]]),), {}, TypeError, "ids must be integer token ids"),
    ((np.array([1, 2, 3]),), {}, ValueError, "ids must have shape [B, L]"),
    ((np.array([[1]]),), {}, ValueError, "need at least one row of at least 2 tokens"),
    ((np.array([[1, 2]]), np.array([[1, 1, 1]])), {}, ValueError, "attention_mask has shape"),
    ((np.array([[1, 2]]), np.array([[1, 2]])), {}, ValueError, "only 0 (padding) and 1"),
    ((np.array([[1, 2]]), np.array([[1.0, 1.0]])), {}, TypeError, "attention_mask must hold integers"),
    ((np.array([[1, 2]]),), {"ignore_index": -1.0}, TypeError, "ignore_index must be an int"),
    ((np.array([[1, 2, 3]]),), {"ignore_index": 3}, ValueError, "ignore_index=3 is the id of a real target"),
])
def test_shift_targets_rejects_bad_input(args, kwargs, error, words):
    with pytest.raises(error) as raised:
        shift_targets(*args, **kwargs)
    assert words in str(raised.value)
