"""Bad input gives a clear error that names the problem, never a NumPy traceback from inside."""
from __future__ import annotations

import numpy as np
import pytest

import ref_numpy as R

CONFIG = R.GPTConfig(n_vocab=13, n_ctx=8, n_embd=8, n_head=2, n_layer=2)
PARAMS = R.init_params(CONFIG, 0)


@pytest.mark.parametrize("ids, kwargs, error, match", [
    ([[1, 13]], {}, ValueError, r"token id 13, outside the vocabulary \[0, 13\)"),
    ([[1, -1]], {}, ValueError, "token id -1"),
    ([[1.0, 2.0]], {}, TypeError, "integer token ids.*float64"),
    ([[True, False]], {}, TypeError, "integer token ids.*bool"),
    (np.zeros((1, 0), int), {}, ValueError, "empty"),
    (np.zeros((0, 3), int), {}, ValueError, "empty"),
    (np.zeros((1, 2, 3), int), {}, ValueError, r"shape \[B, T\]"),
    (np.zeros((1, 9), int), {}, ValueError, "9 new tokens = 9 exceeds n_ctx=8"),
    ([[1, 2]], {"attention_mask": [[1, 1, 1]]}, ValueError, r"attention_mask has shape \(1, 3\).*\(1, 2\)"),
    ([[1, 2]], {"attention_mask": [[1, 2]]}, ValueError, "only 0 .padding. and 1"),
    ([[1, 2]], {"attention_mask": [[1.0, 1.0]]}, TypeError, "attention_mask must hold integers"),
    ([[1, 2]], {"position_ids": [[0, 8]]}, ValueError, r"position_ids must lie in \[0, 8\)"),
    ([[1, 2]], {"position_ids": [[0, 1, 2]]}, ValueError, "position_ids has shape"),
    ([[1, 2]], {"past": [(np.zeros((1, 2, 3, 4)),) * 2]}, ValueError, "past has 1 layer entries.*n_layer=2"),
    ([[1, 2]], {"past": [(np.zeros((1, 2, 3, 5)),) * 2] * 2}, ValueError, r"past\[0\] k has shape \(1, 2, 3, 5\)"),
    ([[1, 2]], {"past": [(np.zeros((1, 2, 7, 4)),) * 2] * 2}, ValueError, "7 cached \\+ 2 new tokens = 9"),
])
def test_forward_rejects(ids, kwargs, error, match):
    with pytest.raises(error, match=match):
        R.forward(CONFIG, PARAMS, ids, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-0.1), "temperature must be a finite number >= 0"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=0), "top_k must be an integer >= 1"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), r"top_p must lie in \(0, 1\]"),
    (dict(top_p=1.5), "top_p"),
    (dict(eos_id=13), r"eos_id must be a token id in \[0, 13\)"),
    (dict(top_p_convention="x"), "top_p_convention"),
    (dict(attention_mask=[[0, 0]]), "no real token"),
])
def test_generate_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        R.generate(CONFIG, PARAMS, [[1, 2]], 2, **kwargs)


def test_generate_refuses_to_overflow_the_context_instead_of_truncating():
    with pytest.raises(ValueError, match="prompt length 3 \\+ max_new_tokens 6 = 9 exceeds n_ctx=8"):
        R.generate(CONFIG, PARAMS, [1, 2, 3], 6)
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative integer"):
        R.generate(CONFIG, PARAMS, [1, 2, 3], -1)
    assert R.generate(CONFIG, PARAMS, [1, 2, 3], 5, greedy=True).shape == (8,)  # exactly fills n_ctx


def test_errors_are_raised_when_generate_is_called_not_at_the_first_token():
    with pytest.raises(ValueError, match="token id 99"):
        R.decode_stream(R.numpy_step(CONFIG, PARAMS), CONFIG, [1, 99], 2)
