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


@pytest.mark.parametrize("variant", ["torch", "openai-gpt1"])
def test_the_in_place_update_is_the_functional_one_bit_for_bit(variant):
    """adamw_step(..., inplace=True) writes into params' and state's own arrays (the same objects
    come back) exactly the numbers the functional update returns, step after step; read-only
    arrays and moments of another dtype are refused by name."""
    import ref_numpy as R

    config = R.GPTConfig(arch="gpt2", n_vocab=40, n_ctx=12, n_embd=16, n_head=2, n_layer=2)
    rng = np.random.default_rng(1)
    grads = R.unflatten_params({k: rng.standard_normal(v.shape).astype(np.float32)
                                for k, v in R.flatten_params(R.init_params(config, 0)).items()})
    functional = R.init_params(config, 0)
    owned = R.cast_params(functional, np.float32)
    state_f, state_i = R.adamw_init(functional), R.adamw_init(owned)
    wte = R.flatten_params(owned)["wte"]
    for _ in range(3):
        functional, state_f = R.adamw_step(functional, grads, state_f, lr=1e-2, weight_decay=0.1, variant=variant)
        params, state = R.adamw_step(owned, grads, state_i, lr=1e-2, weight_decay=0.1, variant=variant, inplace=True)
        assert params is owned and state is state_i and R.flatten_params(owned)["wte"] is wte
    assert state_i["step"] == state_f["step"] == 3
    for got, want in ((owned, functional), (state_i["m"], state_f["m"]), (state_i["v"], state_f["v"])):
        want = R.flatten_params(want)
        assert all(np.array_equal(array, want[name]) for name, array in R.flatten_params(got).items())
    wte.flags.writeable = False
    with pytest.raises(ValueError, match=r"inplace=True: params\['wte'\] is read-only"):
        R.adamw_step(owned, grads, state_i, lr=1e-2, inplace=True)
    wte.flags.writeable = True
    state_i["m"]["wte"] = state_i["m"]["wte"].astype(np.float64)
    with pytest.raises(ValueError, match=r"state\['m'\]\['wte'\] has dtype float64"):
        R.adamw_step(owned, grads, state_i, lr=1e-2, inplace=True)
