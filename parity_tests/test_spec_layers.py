"""The layers of the spec against their definitions, one by one."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ref_numpy as R
from gptspec.compare import assert_close
from gptspec.tolerances import op_bound, reorder_bound, unit_roundoff

DTYPES = [np.float16, np.float32, np.float64]
finite_floats = st.floats(-20, 20, allow_nan=False, width=32)


def test_gelu_is_the_tanh_form_not_erf():
    x = np.linspace(-5, 5, 101)
    tanh_form = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    erf_form = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    # Not bit-equal: R.gelu cubes as x*x*x (two roundings), this line as x**3 (pow, one), and
    # np.tanh is vendor code that differs between CPUs.  Each side rounds at most 8 times (cube,
    # 3 products, 2 sums, tanh); the erf form differs by > 1e-4, ~10^10 times more.
    assert_close("gelu vs the tanh form", R.gelu(x), tanh_form, op_bound(np.float64, 8))
    assert np.abs(R.gelu(x) - erf_form).max() > 1e-4  # the two forms really differ
    assert R.gelu(np.array([1.0], np.float32)).dtype == np.float32


@given(arrays(np.float64, (3, 7), elements=st.floats(-1e4, 1e4)))
def test_softmax_rows_are_distributions_even_for_large_inputs(x):
    p = R.softmax(x)
    assert np.isfinite(p).all()
    # 7 exps, 7 adds and 7 divides per row
    np.testing.assert_allclose(p.sum(-1), 1, rtol=op_bound(np.float64, 21).value)
    # Shift invariant, up to rounding, checked per element *relative*: a probability is the exp of
    # its shifted logit over the row's sum, with no cancellation, so an error d in the logits moves
    # it by a factor e^d whatever its size (subnormal outputs, < 2.2e-308, lose relative precision:
    # atol 1e-300 covers them).  The shifted logit x - max(x) differs between the two calls by the
    # rounding of x + 1e3 and of max + 1e3 (u |x + 1e3| <= 1.1e4 u each) and of the subtraction in
    # each call (u |x - max| <= 2e4 u each): d <= 6.2e4 u; a probability moves by its own d and by
    # the sum's (at most the largest d): 2 x 6.2e4 u, plus the 21 roundings of softmax itself.
    shift_error = 2 * (2 * 1.1e4 + 2 * 2e4) * unit_roundoff(np.float64)
    np.testing.assert_allclose(R.softmax(x + 1e3), p, rtol=shift_error + op_bound(np.float64, 21).value,
                               atol=1e-300)


def test_layer_norm_uses_population_variance_and_eps():
    x = np.array([[1.0, 2.0, 3.0, 6.0]])
    g, b = np.array([1.0, 2.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0, 0.0])
    mean, var = 3.0, np.mean((x - 3.0) ** 2)  # divide by C (=4), not C - 1
    expected = g * (x - mean) / np.sqrt(var + 1e-5) + b
    np.testing.assert_allclose(R.layer_norm(x, g, b, eps=1e-5), expected, rtol=op_bound(np.float64, 8).value)
    # eps matters when the variance is tiny (catches a 1e-7 default slipping in).
    flat = np.array([[0.0, 0.0, 0.0, 1e-3]])
    one = np.ones(4)
    assert abs(R.layer_norm(flat, one, 0 * one, 1e-5)[0, 3] - R.layer_norm(flat, one, 0 * one, 1e-7)[0, 3]) > 0.1


@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 4), st.integers(1, 6))
def test_split_and_merge_heads_are_inverse(B, T, H, D):
    x = np.random.default_rng(0).standard_normal((B, T, H * D))
    heads = R.split_heads(x, H)
    assert heads.shape == (B, H, T, D)
    np.testing.assert_array_equal(heads[:, 1 % H, :, :], x[:, :, (1 % H) * D:(1 % H + 1) * D])
    np.testing.assert_array_equal(R.merge_heads(heads), x)


def test_causal_mask_is_lower_right_aligned():
    np.testing.assert_array_equal(R.causal_mask(3, 3), np.tril(np.ones((3, 3), bool)))
    # two cached positions + two new queries: query 0 is absolute position 2
    np.testing.assert_array_equal(R.causal_mask(2, 4), [[1, 1, 1, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(R.causal_mask(1, 5), [[1, 1, 1, 1, 1]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_masking_is_nan_free_in_every_dtype(dtype):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 2, 3, 4)).astype(dtype) * 30 for _ in range(3))
    mask = R.causal_mask(3, 3)[None, None] & R.padding_mask(np.array([[0, 0, 0], [0, 1, 1]]))
    out, weights = R.attention(q, k, v, mask)
    assert out.dtype == dtype and weights.dtype == dtype
    assert np.isfinite(out).all() and np.isfinite(weights).all()
    # Row 0 is all padding: every query fully masked -> uniform weights, finite output.
    np.testing.assert_allclose(weights[0].astype(np.float64), 1 / 3, rtol=op_bound(dtype, 3).value)
    # Row 1, query 0 is padding (fully masked, uniform); real queries give padding key 0
    # and future keys exactly zero weight.
    assert np.all(weights[1, :, 1:, 0] == 0) and np.all(weights[1, :, 1, 2] == 0)


def test_attention_matches_the_textbook_formula():
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((1, 2, 4, 3)), rng.standard_normal((1, 2, 5, 3)), rng.standard_normal((1, 2, 5, 3))
    mask = R.causal_mask(4, 5)
    out, weights = R.attention(q, k, v, mask)
    for h in range(2):
        for i in range(4):
            visible = [j for j in range(5) if j <= i + 1]
            s = np.array([q[0, h, i] @ k[0, h, j] / math.sqrt(3) for j in visible])
            w = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            # Dot products, exps and sums; the bound scales with the reference's magnitude, not each
            # element's: an output element near zero comes from cancellation, and its relative error
            # depends on how one BLAS rounds (it differed on AMD EPYC / OpenBLAS).
            bound = op_bound(np.float64, 4 * 3 + 4 * len(visible))
            assert_close(f"out[{h}, {i}]", out[0, h, i], w @ v[0, h, visible], bound)
            assert_close(f"weights[{h}, {i}]", weights[0, h, i, visible], w, bound)


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_blocks_follow_their_layernorm_placement(arch):
    config = R.GPTConfig(arch=arch, n_vocab=5, n_ctx=4, n_embd=8, n_head=2, n_layer=1)
    p = R.init_params(config, 0, dtype=np.float64, random_biases=True)["blocks"][0]
    x = np.random.default_rng(2).standard_normal((1, 4, 8))
    mask = R.causal_mask(4, 4)
    ln = lambda y, n: R.layer_norm(y, **p[n])  # noqa: E731
    attn = lambda y: R.mha(y, p["attn"], 2, mask)[0]  # noqa: E731
    if arch == "gpt2":
        h = x + attn(ln(x, "ln_1"))
        expected = h + R.mlp(ln(h, "ln_2"), p["mlp"])
        got, _ = R.gpt2_block(x, p, 2, mask)
    else:
        n = ln(x + attn(x), "ln_1")
        expected = ln(n + R.mlp(n, p["mlp"]), "ln_2")
        got, _ = R.gpt1_block(x, p, 2, mask)
    # Scaled by the output's magnitude, not element-wise: an output element near zero comes from
    # cancellation in the residual sum, and its relative error depends on how BLAS rounds.
    assert_close(f"{arch} block", got, expected, reorder_bound(config, np.float64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_computes_in_the_params_dtype(dtype):
    config = R.GPTConfig(n_vocab=9, n_ctx=6, n_embd=8, n_head=2, n_layer=1)
    params = R.init_params(config, 0, dtype=dtype)
    logits, present = R.forward(config, params, [1, 2, 3], attention_mask=[[0, 1, 1]])
    assert logits.dtype == dtype and present[0][0].dtype == dtype
    assert logits.shape == (1, 3, 9) and np.isfinite(logits).all()


def test_default_position_ids():
    config = R.GPTConfig(n_vocab=9, n_ctx=6, n_embd=8, n_head=2, n_layer=1)
    assert R.prepare_inputs(config, [[1, 2, 3]]).position_ids.tolist() == [[0, 1, 2]]
    _, past = R.forward(config, R.init_params(config, 0), [[1, 2]])
    assert R.prepare_inputs(config, [[4, 5]], past=past).position_ids.tolist() == [[2, 3]]
    padded = R.prepare_inputs(config, [[7, 1, 2], [1, 2, 3]], attention_mask=[[0, 1, 1], [1, 1, 1]])
    assert padded.position_ids.tolist() == [[0, 0, 1], [0, 1, 2]]


def test_trace_records_every_intermediate():
    config = R.GPTConfig(n_vocab=9, n_ctx=6, n_embd=8, n_head=2, n_layer=2)
    trace = {}
    logits, _ = R.forward(config, R.init_params(config, 0), [[1, 2, 3]], trace=trace)
    assert set(trace) == {"embed", "ln_f", "logits"} | {f"blocks.{i}.{n}" for i in range(2)
                                                        for n in ("attn", "attn_weights", "mlp", "out")}
    assert trace["blocks.1.attn_weights"].shape == (1, 2, 3, 3)
    np.testing.assert_array_equal(trace["logits"], logits)  # exact: the trace holds the returned array
