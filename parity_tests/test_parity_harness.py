"""The parity harness itself (gptspec.parity, gptspec.tolerances), checked without MindSpore:
a float32 spec passes against the float64 spec, a broken one fails and the failure says where,
and the bounds grow the way their derivation says."""
from __future__ import annotations

import math

import numpy as np
import pytest

import ref_numpy as R
from gptspec import tolerances as tol
from gptspec.parity import (check_greedy, check_padding, compare_row, compare_traces, default_padding, logits_agreement,
                            padded_batch, probe_params)

CONFIGS = [R.GPTConfig(arch=arch, n_vocab=53, n_ctx=12, n_embd=24, n_head=3, n_layer=3) for arch in ("gpt1", "gpt2")]
IDS = np.random.default_rng(1).integers(0, 53, size=(2, 12))


def traces(config, params64, dtype, ids=IDS):
    reference, actual = {}, {}
    R.forward(config, params64, ids, trace=reference)
    R.forward(config, R.cast_params(params64, dtype), ids, trace=actual)
    return reference, actual


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.arch)
def test_float32_spec_is_within_every_layer_bound(config):
    params64 = probe_params(config, 0, dtype=np.float64)
    reference, actual = traces(config, params64, np.float32)
    rows = compare_traces(config, reference, actual)
    assert [r.name for r in rows] == list(reference)  # every tensor, in computation order
    failed = [r.describe() for r in rows if not r.passed]
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.arch)
def test_an_erf_gelu_fails_and_the_report_names_the_first_bad_tensor(config, monkeypatch):
    params64 = probe_params(config, 0, dtype=np.float64)
    reference = {}
    R.forward(config, params64, IDS, trace=reference)
    erf = np.vectorize(math.erf)
    monkeypatch.setattr(R.layers, "gelu", lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2))).astype(x.dtype))
    actual = {}
    R.forward(config, R.cast_params(params64, np.float32), IDS, trace=actual)
    rows = compare_traces(config, reference, actual)
    failed = [r for r in rows if not r.passed]
    assert failed and failed[0].name == "blocks.0.mlp", [r.describe() for r in failed]
    message = failed[0].describe()
    assert "FAIL blocks.0.mlp" in message and "at [" in message and "allowed" in message


def test_a_missing_traced_tensor_is_an_error():
    config = CONFIGS[1]
    params64 = R.init_params(config, 0, dtype=np.float64)
    reference, actual = traces(config, params64, np.float32)
    del actual["blocks.1.mlp"]
    with pytest.raises(ValueError, match="lacks blocks.1.mlp"):
        compare_traces(config, reference, actual)


def test_bounds_grow_with_depth_and_precision():
    config = R.GPTConfig.from_name("gpt2")
    depths = [tol.trace_depth(config, name) for name in ("embed", "blocks.0.attn", "blocks.11.out", "logits")]
    assert depths == [1, 2, 13, 13]
    assert tol.forward_bound(config, "float32", 1).value < tol.forward_bound(config, "float32").value
    assert tol.amp_bound(config, "O0").value == tol.forward_bound(config, "float32").value
    levels = [tol.amp_bound(config, level).value for level in tol.AMP_LEVELS]
    assert levels == sorted(levels), "each AMP level moves more work to float16"
    assert tol.amp_bound(config, "O2", "bfloat16").value > tol.amp_bound(config, "O2", "float16").value
    assert tol.reorder_bound(config, "float32").value == 2 * tol.forward_bound(config, "float32").value


@pytest.mark.parametrize("call, message", [
    (lambda c: tol.amp_bound(c, "O4"), "amp_level must be one of"),
    (lambda c: tol.forward_bound(c, "int8"), "no tolerance model for dtype 'int8'"),
    (lambda c: tol.trace_depth(c, "wte"), "no depth for traced tensor 'wte'"),
])
def test_bad_bound_requests_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call(CONFIGS[0])


def test_logits_agreement_counts_top1_and_kl():
    logits = np.log(np.array([[[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]]))
    same = logits_agreement(logits, logits + 5.0)  # a shift changes no probability...
    # ...up to rounding: each log-probability x - logsumexp(x) rounds the shift, the max subtraction,
    # exp, sum, log and the last subtraction (~6 roundings per side, 12 in the difference), each of
    # u times the largest logit; KL averages those differences with weights p summing to 1.
    assert same["top1_agreement"] == 1.0
    assert abs(same["kl_max"]) <= tol.op_bound(np.float64, 12).allowed(logits + 5.0)
    other = logits_agreement(logits, np.log(np.array([[[0.2, 0.7, 0.1], [0.1, 0.3, 0.6]]])))
    expected_kl = 0.7 * math.log(0.7 / 0.2) + 0.2 * math.log(0.2 / 0.7)
    assert other["top1_agreement"] == 0.5
    assert other["kl_max"] == pytest.approx(expected_kl) and other["kl_mean"] == pytest.approx(expected_kl / 2)


def test_greedy_divergence_is_allowed_only_at_a_near_tie():
    config = CONFIGS[1]
    params64 = R.init_params(config, 2, dtype=np.float64, random_biases=True)
    prompt = IDS[0, :4]
    tokens = R.generate(config, params64, prompt, 5, greedy=True)[4:]
    assert check_greedy(config, params64, prompt, tokens, tokens, tol.forward_bound(config, "float32")).passed
    logits, _ = R.forward(config, params64, np.concatenate([prompt, tokens[:2]]))
    order = np.argsort(logits[0, -1])[::-1]
    gap = logits[0, -1, order[0]] - logits[0, -1, order[1]]
    swapped = tokens.copy()
    swapped[2] = order[1]  # the runner-up at step 2
    scale = max(1.0, float(np.abs(logits[0, -1]).max()))
    tight = tol.Bound(0.49 * gap / scale, "just under half the gap")
    loose = tol.Bound(0.51 * gap / scale, "just over half the gap")
    failing = check_greedy(config, params64, prompt, tokens, swapped, tight)
    assert not failing.passed and failing.first_divergence == 2
    assert failing.top2_gap == pytest.approx(gap) and "not a near tie" in failing.describe()
    assert check_greedy(config, params64, prompt, tokens, swapped, loose).passed


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.arch)
def test_probe_weights_catch_an_erf_gelu_that_gpt2_init_hides(config, monkeypatch):
    """Why parity runs on probe_params: with GPT-2's init the GELU inputs are too small for the
    erf form to leave the float32 bound; with probe weights it does."""
    erf = np.vectorize(math.erf)
    results = {}
    for init, params64 in (("gpt2", R.init_params(config, 0, dtype=np.float64, random_biases=True)),
                           ("probe", probe_params(config, 0, dtype=np.float64))):
        reference = {}
        R.forward(config, params64, IDS, trace=reference)
        with monkeypatch.context() as patch:
            patch.setattr(R.layers, "gelu", lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2))).astype(x.dtype))
            actual = {}
            R.forward(config, R.cast_params(params64, np.float32), IDS, trace=actual)
        results[init] = all(r.passed for r in compare_traces(config, reference, actual))
    assert results == {"gpt2": True, "probe": False}


def test_probe_params_fit_the_config_and_are_seeded():
    config = CONFIGS[0]
    params = probe_params(config, 3)
    R.check_params(config, params)
    again = R.flatten_params(probe_params(config, 3))
    assert all(np.array_equal(v, again[k]) for k, v in R.flatten_params(params).items())
    w = params["blocks"][0]["mlp"]["c_fc"]["w"]  # fan_in C = 24: std ~ 1/sqrt(24)
    assert 0.7 / np.sqrt(24) < w.std() < 1.3 / np.sqrt(24)
    residual = np.sqrt(96 * 2 * config.n_layer)  # c_proj: fan_in 4C = 96, scaled by 1/sqrt(2 n_layer)
    assert 0.7 / residual < params["blocks"][0]["mlp"]["c_proj"]["w"].std() < 1.3 / residual
    assert 0.25 < params["wpe"].std() < 0.35 and 0.015 < params["wte"].std() < 0.025


def test_an_absolute_bound_does_not_scale_with_the_reference():
    reference = np.array([100.0, -3.0])
    assert tol.Bound(1e-4, "absolute", relative=False).allowed(reference) == 1e-4
    assert tol.Bound(1e-4, "relative").allowed(reference) == pytest.approx(1e-2)


# -- the padded row of the default parity input (issue 14, item 4) ------------------------------


def test_padded_batch_is_the_prompt_and_the_prompt_left_padded():
    ids, mask = padded_batch(np.array([7, 8, 9, 10]), 2)
    assert ids.tolist() == [[7, 8, 9, 10], [0, 0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert [default_padding(n) for n in (1, 2, 7, 16)] == [0, 1, 1, 4]


@pytest.mark.parametrize("padding, error", [(4, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_a_bad_padding_is_refused_by_name(padding, error):
    with pytest.raises(error, match="padding"):
        check_padding(padding, 4)


def test_padded_rows_compare_real_positions_and_require_finite_padding_positions():
    """Row 1 is compared at its real positions only (padding queries have no meaningful value:
    their attention rows are uniform), but a NaN or inf anywhere in it fails the row."""
    reference = np.zeros((2, 4, 3))
    actual = reference.copy()
    actual[1, 0] = 5.0  # a padding position: any finite value is allowed
    bound = tol.Bound(1e-6, "test")
    row = compare_row("blocks.0.out", actual, reference, None, bound, padding=1)
    assert row.name == "padded: blocks.0.out" and row.shape == (1, 3, 3) and row.passed
    actual[1, 0, 0] = np.nan
    assert not compare_row("blocks.0.out", actual, reference, None, bound, padding=1).passed
    assert compare_row("blocks.0.out", actual, reference, None, bound, padding=None).passed  # row 0
    weights = np.zeros((2, 2, 4, 4))
    broken = weights.copy()
    broken[1, :, 2, 0] = 1e-3  # a real query attending a padding key
    row = compare_row("blocks.0.attn_weights", broken, weights, weights, bound, padding=1)
    assert row.shape == (1, 2, 3, 4) and not row.passed and row.noise_ratio > tol.NOISE_MULTIPLE
