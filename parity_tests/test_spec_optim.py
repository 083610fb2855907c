"""ref_numpy.adamw_init / adamw_step, clip_grad_norm and lr_at: properties and bad inputs.
(test_oracle_optim.py holds the comparison with torch.)"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gptspec.compare import assert_close
from gptspec.tolerances import optimizer_bound
from ref_numpy import (GPTConfig, adamw_init, adamw_step, clip_grad_norm, flatten_params, init_params, lr_at,
                       unflatten_params)

CONFIG = GPTConfig(arch="gpt2", n_vocab=11, n_ctx=6, n_embd=8, n_head=2, n_layer=1)


def model(seed=0):
    return init_params(CONFIG, seed, dtype=np.float64, random_biases=True)


def like(params, fill):
    """A tree shaped like params, every leaf from fill(shape)."""
    return {name: fill(p.shape) for name, p in flatten_params(params).items()}


def gradients(params, seed, scale=1e-2):
    rng = np.random.default_rng(seed)
    return unflatten_params(like(params, lambda shape: scale * rng.standard_normal(shape)))


def zero_gradients(params):
    return unflatten_params(like(params, np.zeros))


def flat(tree):
    return flatten_params(tree)


# -- AdamW ------------------------------------------------------------------------------------------
def test_init_state_is_zero_moments_with_the_params_structure():
    params = model()
    state = adamw_init(params)
    assert state["step"] == 0
    for moments in (state["m"], state["v"]):
        assert flat(moments).keys() == flat(params).keys()
        for name, array in flat(moments).items():
            assert array.shape == flat(params)[name].shape and array.dtype == np.float64 and not array.any()
    assert flat(state["m"])["wte"] is not flat(state["v"])["wte"]


@given(lr=st.floats(1e-5, 1e-1), steps=st.integers(1, 3))
def test_zero_gradients_without_decay_leave_params_unchanged(lr, steps):
    params, state = model(), adamw_init(model())
    new = params
    for _ in range(steps):
        new, state = adamw_step(new, zero_gradients(params), state, lr=lr)
    for name, p in flat(params).items():
        np.testing.assert_array_equal(flat(new)[name], p)
    assert state["step"] == steps


@given(lr=st.floats(1e-5, 1e-1), weight_decay=st.floats(1e-3, 1.0))
def test_decay_shrinks_only_tensors_with_two_or_more_dimensions(lr, weight_decay):
    params = model()
    new, _ = adamw_step(params, zero_gradients(params), adamw_init(params), lr=lr, weight_decay=weight_decay)
    for name, p in flat(params).items():
        if p.ndim >= 2:  # wte, wpe, every weight matrix: p * (1 - lr * wd), nothing else (zero grads)
            np.testing.assert_array_equal(flat(new)[name], p * (1 - lr * weight_decay))
        else:  # biases and LayerNorm gains/biases
            np.testing.assert_array_equal(flat(new)[name], p)


@given(seed=st.integers(0, 100), lr=st.floats(1e-4, 1e-2))
def test_first_step_moves_each_element_by_lr_against_its_gradient(seed, lr):
    """At t = 1, m_hat = g and sqrt(v_hat) = |g|: the update is lr * g / (|g| + eps) ~ lr * sign(g)."""
    params = model()
    grads = gradients(params, seed)
    new, _ = adamw_step(params, grads, adamw_init(params), lr=lr)
    for name, p in flat(params).items():
        g = flat(grads)[name]
        expected = p - lr * g / (np.abs(g) + 1e-8)
        assert_close(name, flat(new)[name], expected, optimizer_bound("float64", 1, lr))


def test_step_does_not_modify_its_inputs():
    params, grads = model(), gradients(model(), 1)
    _, state = adamw_step(params, grads, adamw_init(params), lr=1e-3)  # a state with non-zero moments
    before = copy.deepcopy((params, grads, state))
    adamw_step(params, grads, state, lr=1e-3, weight_decay=0.1)
    for old, now in zip(before, (params, grads, state)):
        for name, array in flat(old).items():
            np.testing.assert_array_equal(flat(now)[name], array)
    assert state["step"] == 1


def test_float32_params_stay_float32_even_with_float64_grads():
    params = init_params(CONFIG, 0)
    new, state = adamw_step(params, gradients(params, 2), adamw_init(params), lr=1e-3, weight_decay=0.1)
    assert {a.dtype for a in flat(new).values()} == {np.dtype(np.float32)}
    assert {a.dtype for a in flat(state["m"]).values()} == {np.dtype(np.float32)}


@given(seed=st.integers(0, 100))
def test_openai_variant_equals_torch_variant_without_decay_and_eps(seed):
    """The only difference without decay is where eps goes: with eps negligible they agree."""
    params = model()
    states = {v: adamw_init(params) for v in ("torch", "openai-gpt1")}
    results = {v: params for v in states}
    for step in range(3):
        grads = gradients(params, seed + step)
        for variant in states:
            results[variant], states[variant] = adamw_step(results[variant], grads, states[variant], lr=1e-3,
                                                           eps=1e-30, variant=variant)
    for name, p in flat(results["torch"]).items():
        assert_close(name, flat(results["openai-gpt1"])[name], p, optimizer_bound("float64", 3, 1e-3))


def test_openai_variant_decay_is_scaled_by_the_corrected_rate():
    params, lr, wd = model(), 1e-3, 0.01
    new, _ = adamw_step(params, zero_gradients(params), adamw_init(params), lr=lr, weight_decay=wd,
                        variant="openai-gpt1")
    lr_t = lr * math.sqrt(1 - 0.999) / (1 - 0.9)  # t = 1
    for name, p in flat(params).items():
        expected = p - lr_t * wd * p if p.ndim >= 2 else p
        assert_close(name, flat(new)[name], expected, optimizer_bound("float64", 1, lr))


@pytest.mark.parametrize("kwargs, words", [
    ({"lr": -1e-3}, "lr must be a finite number >= 0"),
    ({"lr": float("nan")}, "lr must be a finite number >= 0"),
    ({"lr": 1e-3, "weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
    ({"lr": 1e-3, "betas": (1.0, 0.999)}, "betas[0] must lie in [0, 1)"),
    ({"lr": 1e-3, "betas": (0.9, -0.1)}, "betas[1] must lie in [0, 1)"),
    ({"lr": 1e-3, "betas": 0.9}, "betas must be a pair"),
    ({"lr": 1e-3, "eps": 0.0}, "eps must be a finite number > 0"),
    ({"lr": 1e-3, "variant": "adam"}, "variant must be one of"),
])
def test_adamw_rejects_bad_hyperparameters(kwargs, words):
    params = model()
    with pytest.raises(ValueError) as raised:
        adamw_step(params, gradients(params, 0), adamw_init(params), **kwargs)
    assert words in str(raised.value)


def test_adamw_rejects_grads_that_do_not_match_params():
    params = model()
    grads = gradients(params, 0)
    missing = {k: v for k, v in grads.items() if k != "wpe"}
    with pytest.raises(ValueError, match=r"grads does not have the structure of params: missing \['wpe'\]"):
        adamw_step(params, missing, adamw_init(params), lr=1e-3)
    grads["blocks"][0]["ln_1"]["g"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"grads\['blocks.0.ln_1.g'\] has shape \(3,\), but the parameter has shape"):
        adamw_step(params, grads, adamw_init(params), lr=1e-3)
    grads = gradients(params, 0)
    grads["wte"][2, 3] = np.nan
    with pytest.raises(ValueError, match=r"grads\['wte'\] contains NaN or inf"):
        adamw_step(params, grads, adamw_init(params), lr=1e-3)
    with pytest.raises(ValueError, match="state must be the dict adamw_init returns"):
        adamw_step(params, gradients(params, 0), {"m": 0}, lr=1e-3)
    with pytest.raises(TypeError, match=r"params\['a'\] must be a floating-point numpy array"):
        adamw_init({"a": np.arange(3)})


# -- clipping ---------------------------------------------------------------------------------------
@given(seed=st.integers(0, 100), max_norm=st.floats(1e-3, 10.0), scale=st.sampled_from([1e-3, 1e-1, 10.0]))
def test_clip_grad_norm_caps_the_global_norm_and_keeps_the_direction(seed, max_norm, scale):
    params = model()
    grads = gradients(params, seed, scale)
    direct = math.sqrt(sum(float(np.sum(g * g)) for g in flat(grads).values()))
    clipped, total = clip_grad_norm(grads, max_norm)
    assert total == pytest.approx(direct, rel=1e-12)
    coef = min(1.0, max_norm / (total + 1e-6))
    for name, g in flat(grads).items():
        np.testing.assert_allclose(flat(clipped)[name], g * coef, rtol=1e-15, atol=0)
    new_norm = math.sqrt(sum(float(np.sum(g * g)) for g in flat(clipped).values()))
    assert new_norm <= max_norm * (1 + 1e-12)
    if coef == 1.0:
        for name, g in flat(grads).items():
            np.testing.assert_array_equal(flat(clipped)[name], g)


def test_clip_grad_norm_does_not_modify_its_input_and_measures_with_inf():
    grads = gradients(model(), 3, 10.0)
    before = copy.deepcopy(grads)
    clip_grad_norm(grads, 1e-3)
    for name, g in flat(before).items():
        np.testing.assert_array_equal(flat(grads)[name], g)
    unclipped, total = clip_grad_norm(grads, math.inf)
    assert total > 1 and all(np.array_equal(flat(unclipped)[n], g) for n, g in flat(grads).items())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_clip_grad_norm_names_the_non_finite_tensor(bad):
    grads = gradients(model(), 0)
    grads["blocks"][0]["mlp"]["c_fc"]["b"][1] = bad
    with pytest.raises(ValueError, match=r"grads\['blocks.0.mlp.c_fc.b'\] contains NaN or inf: cannot clip"):
        clip_grad_norm(grads, 1.0)


@pytest.mark.parametrize("max_norm", [0, -1.0, float("nan"), True, "1"])
def test_clip_grad_norm_rejects_a_bad_max_norm(max_norm):
    with pytest.raises(ValueError, match="max_norm must be a number > 0"):
        clip_grad_norm(gradients(model(), 0), max_norm)


# -- schedule ---------------------------------------------------------------------------------------
def test_gpt1_schedule_warms_up_over_2000_steps_to_2_5e_4():
    kw = dict(max_lr=2.5e-4, warmup_steps=2000, total_steps=100_000)
    assert lr_at(0, **kw) == pytest.approx(2.5e-4 / 2000, rel=1e-15)
    assert lr_at(999, **kw) == pytest.approx(2.5e-4 * 1000 / 2000, rel=1e-15)
    assert lr_at(1999, **kw) == 2.5e-4
    assert lr_at(2000, **kw) == 2.5e-4  # the decay starts at progress 0
    assert lr_at(99_999, **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(4, max_lr=1.0, warmup_steps=5, total_steps=5) == 1.0  # warmup only: no decay step
    assert lr_at(0, max_lr=1.0, warmup_steps=0, total_steps=5) == 1.0  # no warmup: start at max_lr


@given(warmup=st.integers(0, 20), extra=st.integers(1, 40), min_frac=st.floats(0, 1),
       schedule=st.sampled_from(["cosine", "linear"]))
def test_schedule_shape(warmup, extra, min_frac, schedule):
    total, max_lr = warmup + extra, 1e-3
    min_lr = max_lr * min_frac
    rates = [lr_at(s, max_lr=max_lr, warmup_steps=warmup, total_steps=total, min_lr=min_lr, schedule=schedule)
             for s in range(total)]
    for s in range(warmup):  # linear from 0: step k gets max_lr (k + 1) / warmup
        assert rates[s] == pytest.approx(max_lr * (s + 1) / warmup, rel=1e-15)
    decay = rates[warmup:]
    assert decay[0] == pytest.approx(max_lr, rel=1e-15)
    assert all(a >= b - 1e-18 for a, b in zip(decay, decay[1:]))  # never increases
    assert all(min_lr - 1e-18 <= r <= max_lr for r in decay)
    progress = [(s - warmup) / extra for s in range(warmup, total)]
    if schedule == "linear":
        np.testing.assert_allclose(decay, [max_lr - (max_lr - min_lr) * p for p in progress], rtol=1e-14)
    else:
        np.testing.assert_allclose(decay, [min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * p)) / 2
                                           for p in progress], rtol=1e-14)


@pytest.mark.parametrize("step, kwargs, words", [
    (10, {}, "step must be an int in [0, total_steps=10)"),
    (-1, {}, "step must be an int in [0, total_steps=10)"),
    (1.0, {}, "step must be an int"),
    (0, {"warmup_steps": 11}, "warmup_steps must be an int in [0, total_steps=10]"),
    (0, {"total_steps": 0}, "total_steps must be an int >= 1"),
    (0, {"max_lr": -1.0}, "max_lr must be a finite number >= 0"),
    (0, {"min_lr": 1.0}, "min_lr (1.0) must not exceed max_lr"),
    (0, {"min_lr": float("nan")}, "min_lr must be a finite number >= 0"),
    (0, {"schedule": "step"}, "schedule must be one of"),
])
def test_lr_at_rejects_bad_arguments(step, kwargs, words):
    args = {"max_lr": 1e-3, "warmup_steps": 0 if "total_steps" in kwargs else 2, "total_steps": 10, **kwargs}
    with pytest.raises(ValueError) as raised:
        lr_at(step, **args)
    assert words in str(raised.value)
