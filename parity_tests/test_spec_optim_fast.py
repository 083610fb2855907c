"""ref_numpy.adamw_step's torch update is written into preallocated arrays for speed
(_torch_adamw_update); it must give bit for bit the numbers of the plain formula in its docstring."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ref_numpy.optim import _torch_adamw_update


def plain_formula(p, g, m, v, lr, beta1, beta2, eps, wd, correction1, correction2):
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * (g * g)
    p = p * (1 - lr * wd)
    p = p - (lr / correction1) * (m / (np.sqrt(v) / math.sqrt(correction2) + eps))
    return p, m, v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=20)
@given(seed=st.integers(0, 2**16), t=st.integers(1, 50), lr=st.floats(0, 1), wd=st.sampled_from([0.0, 0.1]),
       scale=st.sampled_from([1e-6, 1.0, 1e4]))
def test_torch_update_is_the_plain_formula_bit_for_bit(dtype, seed, t, lr, wd, scale):
    rng = np.random.default_rng(seed)
    p, g, m = (rng.standard_normal((5, 7)).astype(dtype) * scale for _ in range(3))
    v = (rng.standard_normal((5, 7)) ** 2).astype(dtype) * scale
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    args = (lr, beta1, beta2, eps, wd, 1 - beta1 ** t, 1 - beta2 ** t)
    inputs = [x.copy() for x in (p, g, m, v)]
    got, want = _torch_adamw_update(p, g, m, v, *args), plain_formula(p, g, m, v, *args)
    for name, a, b in zip("pmv", got, want):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_array_equal(a, b, err_msg=name)
    for before, after in zip(inputs, (p, g, m, v)):
        np.testing.assert_array_equal(before, after, err_msg="the inputs must not be modified")
