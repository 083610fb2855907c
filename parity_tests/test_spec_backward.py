"""Every backward function of ref_numpy/backward.py against central finite differences in float64.

Each test builds a scalar f = sum(r * layer(inputs)) with a random r (so d f / d out = r), asks
the backward function for the gradients, and compares their dot product with a random unit
direction v against (f(x + h v) - f(x - h v)) / 2h; the bound is
gptspec.tolerances.finite_difference_bound (rounding / h + the Richardson-measured truncation).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ref_numpy as R
from gptspec.tolerances import FINITE_DIFFERENCE_STEP, finite_difference_bound, layer_evaluation_error
from ref_numpy.train import gpt1_block_forward, gpt2_block_forward, mha_forward, mlp_forward

from .strategies import left_padding_mask, model_for

H = FINITE_DIFFERENCE_STEP
seeds = st.integers(0, 2**32 - 1)


def directional_check(name, func, arrays: dict, grads: dict, evaluation_error: float, rng):
    """Assert grads . v == d/dt func(arrays + t v) at t = 0 for a random unit direction v over every
    array.  func(arrays) -> (f, f_magnitude).  Returns (error, allowed) for reports."""
    assert set(grads) == set(arrays), f"{name}: gradients for {sorted(grads)}, inputs {sorted(arrays)}"
    for key in arrays:
        assert grads[key].shape == arrays[key].shape, f"{name}: d_{key} shape {grads[key].shape}"
        assert grads[key].dtype == arrays[key].dtype, f"{name}: d_{key} dtype {grads[key].dtype}"
    direction = {k: rng.standard_normal(a.shape) for k, a in arrays.items()}
    norm = np.sqrt(sum(np.sum(d * d) for d in direction.values()))
    direction = {k: d / norm for k, d in direction.items()}

    def at(t):
        return func({k: a + t * direction[k] for k, a in arrays.items()})

    expected = sum(float(np.sum(grads[k] * direction[k])) for k in arrays)
    f0, magnitude = func(arrays)
    d_h = (at(H)[0] - at(-H)[0]) / (2 * H)
    d_2h = (at(2 * H)[0] - at(-2 * H)[0]) / (4 * H)
    bound = finite_difference_bound(magnitude, evaluation_error, abs(d_2h - d_h))
    error = abs(d_h - expected)
    assert error <= bound.value, (f"{name}: grad . v = {expected!r}, central difference {d_h!r}, error {error:.3g} "
                                  f"> allowed {bound.value:.3g} ({bound.reason})")
    return error, bound.value


def weighted_sum(r, y):
    """f = sum(r * y) and the magnitude sum|r * y| that bounds its rounding."""
    return float(np.sum(r * y)), float(np.sum(np.abs(r * y)))


@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 7), st.integers(1, 6), seeds)
def test_linear_backward(B, T, n_in, n_out, seed):
    rng = np.random.default_rng(seed)
    x, w, b, r = (rng.standard_normal(s) for s in ((B, T, n_in), (n_in, n_out), (n_out,), (B, T, n_out)))
    d_x, d_w, d_b = R.linear_backward(r, x, w)
    directional_check("linear", lambda a: weighted_sum(r, R.linear(a["x"], a["w"], a["b"])),
                      dict(x=x, w=w, b=b), dict(x=d_x, w=d_w, b=d_b), layer_evaluation_error(2, r.size + n_in), rng)


@given(st.integers(1, 40), seeds)
def test_gelu_backward(n, seed):
    rng = np.random.default_rng(seed)
    x, r = rng.standard_normal(n) * 3, rng.standard_normal(n)
    directional_check("gelu", lambda a: weighted_sum(r, R.gelu(a["x"])), dict(x=x),
                      dict(x=R.gelu_backward(r, x)), layer_evaluation_error(10, n), rng)


@given(st.integers(1, 4), st.integers(1, 9), st.floats(0.1, 20), seeds)
def test_softmax_backward(rows, n, scale, seed):
    rng = np.random.default_rng(seed)
    x, r = rng.standard_normal((rows, n)) * scale, rng.standard_normal((rows, n))
    y = R.softmax(x)
    directional_check("softmax", lambda a: weighted_sum(r, R.softmax(a["x"])), dict(x=x),
                      dict(x=R.softmax_backward(r, y)), layer_evaluation_error(3 * n, rows * n), rng)


@given(st.integers(1, 3), st.integers(2, 9), st.sampled_from([1e-5, 1e-2]), st.floats(0.01, 3), seeds)
def test_layer_norm_backward_has_all_three_terms(rows, C, eps, spread, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 2, C)) * spread + 0.5
    g, b, r = 1 + 0.1 * rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal((rows, 2, C))
    d_x, d_g, d_b = R.layer_norm_backward(r, x, g, eps)
    directional_check("layer_norm", lambda a: weighted_sum(r, R.layer_norm(a["x"], a["g"], a["b"], eps)),
                      dict(x=x, g=g, b=b), dict(x=d_x, g=d_g, b=d_b), layer_evaluation_error(4 * C, r.size), rng)


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), seeds)
def test_split_and_merge_heads_backward_are_the_inverse_moves(B, T, n_head, D, seed):
    rng = np.random.default_rng(seed)
    x, r = rng.standard_normal((B, T, n_head * D)), rng.standard_normal((B, n_head, T, D))
    # Both only move numbers (a permutation P); the gradient of a permutation is its inverse
    # (P^T = P^-1), so each backward must undo its forward exactly, element by element.
    np.testing.assert_array_equal(R.split_heads(R.split_heads_backward(r), n_head), r)
    np.testing.assert_array_equal(R.merge_heads_backward(R.merge_heads(r), n_head), r)
    np.testing.assert_array_equal(R.split_heads_backward(R.split_heads(x, n_head)), x)


def padded_causal_mask(B, T, rng):
    """[B, 1, T, T]: causal and left padding with 0..T-1 padding slots (row 0 fully padded when B > 1)."""
    lengths = [0 if (b == 0 and B > 1) else int(rng.integers(1, T + 1)) for b in range(B)]
    return R.attention_mask_4d(T, T, left_padding_mask(lengths, T))


@given(st.integers(1, 3), st.integers(1, 2), st.integers(1, 5), st.integers(1, 4), st.booleans(), seeds)
def test_attention_backward(B, n_head, T, D, with_dropout, seed):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((B, n_head, T, D)) for _ in range(3))
    r = rng.standard_normal((B, n_head, T, D))
    mask = padded_causal_mask(B, T, rng)
    drop = ((rng.random((B, n_head, T, T)) >= 0.3) / 0.7) if with_dropout else None

    def f(a):
        out, weights = R.attention(a["q"], a["k"], a["v"], mask)
        return weighted_sum(r, out if drop is None else (weights * drop) @ a["v"])

    _, weights = R.attention(q, k, v, mask)
    d_q, d_k, d_v = R.attention_backward(r, q, k, v, mask, weights, drop)
    assert np.isfinite(d_q).all() and np.isfinite(d_k).all() and np.isfinite(d_v).all()
    if B > 1:  # row 0 is all padding: no query sees a key, so no score has a gradient
        assert not d_q[0].any() and not d_k[0].any()
    directional_check("attention", f, dict(q=q, k=k, v=v), dict(q=d_q, k=d_k, v=d_v),
                      layer_evaluation_error(3 * T + 2 * D, r.size), rng)


def small_params(arch, C, n_head, seed):
    config = R.GPTConfig(arch=arch, n_vocab=11, n_ctx=8, n_embd=C, n_head=n_head, n_layer=1)
    return config, model_for(config, seed)


def flat_check(name, forward, params: dict, x, r, grads, d_x, evaluation_error, rng):
    """directional_check over the input x and every array of a (nested) params dict."""
    flat = R.flatten_params(params)
    arrays = {"x": x, **{f"p.{k}": v for k, v in flat.items()}}
    all_grads = {"x": d_x, **{f"p.{k}": v for k, v in R.flatten_params(grads).items()}}

    def f(a):
        p = R.unflatten_params({k[2:]: v for k, v in a.items() if k != "x"})
        return weighted_sum(r, forward(a["x"], p))

    directional_check(name, f, arrays, all_grads, evaluation_error, rng)


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
@given(st.integers(1, 2), st.integers(1, 5), st.integers(1, 2), st.integers(1, 4), st.sampled_from([0.0, 0.2]), seeds)
def test_mha_mlp_and_block_backward(arch, B, T, n_head, D, p, seed):
    rng = np.random.default_rng(seed)
    config, params = small_params(arch, n_head * D, n_head, seed)
    block = params["blocks"][0]
    x = rng.standard_normal((B, T, config.n_embd))
    r = rng.standard_normal(x.shape)
    mask = padded_causal_mask(B, T, rng)
    error = layer_evaluation_error(60, 4 * config.n_embd + r.size)

    def mha(x_, p_):  # a fresh generator per call: the same dropout masks every time
        return mha_forward(x_, p_, n_head, mask, p, np.random.default_rng(seed))[0]

    out, tape = mha_forward(x, block["attn"], n_head, mask, p, np.random.default_rng(seed))
    d_x, grads = R.mha_backward(r, tape, block["attn"], n_head)
    flat_check("mha", mha, block["attn"], x, r, grads, d_x, error, rng)

    out, tape = mlp_forward(x, block["mlp"])
    d_x, grads = R.mlp_backward(r, tape, block["mlp"])
    flat_check("mlp", lambda x_, p_: mlp_forward(x_, p_)[0], block["mlp"], x, r, grads, d_x, error, rng)

    block_forward = {"gpt1": gpt1_block_forward, "gpt2": gpt2_block_forward}[arch]
    block_backward = {"gpt1": R.gpt1_block_backward, "gpt2": R.gpt2_block_backward}[arch]

    def run_block(x_, p_):
        return block_forward(x_, p_, n_head, mask, 1e-5, p, np.random.default_rng(seed))[0]

    out, tape = block_forward(x, block, n_head, mask, 1e-5, p, np.random.default_rng(seed))
    d_x, grads = block_backward(r, tape, block, n_head, 1e-5)
    flat_check(f"{arch}_block", run_block, block, x, r, grads, d_x, error, rng)


@given(st.integers(1, 3), st.integers(1, 6), seeds)
def test_embed_and_tied_head_backward(B, T, seed):
    rng = np.random.default_rng(seed)
    config, params = small_params("gpt2", 4, 1, seed)
    ids = rng.integers(0, 3, (B, T))  # a vocabulary slice of 3: ids repeat
    positions = rng.integers(0, config.n_ctx, (B, T))
    r = rng.standard_normal((B, T, 4))
    d_wte, d_wpe = R.embed_backward(r, ids, positions, config.n_vocab, config.n_ctx)
    directional_check("embed", lambda a: weighted_sum(r, R.embed(a, ids, positions)),
                      dict(wte=params["wte"], wpe=params["wpe"]), dict(wte=d_wte, wpe=d_wpe),
                      layer_evaluation_error(1, r.size), rng)
    hidden, r_logits = rng.standard_normal((B, T, 4)), rng.standard_normal((B, T, config.n_vocab))
    d_hidden, d_wte = R.lm_head_backward(r_logits, hidden, params["wte"])
    directional_check("lm_head", lambda a: weighted_sum(r_logits, R.lm_head({"wte": a["wte"]}, a["hidden"])),
                      dict(hidden=hidden, wte=params["wte"]), dict(hidden=d_hidden, wte=d_wte),
                      layer_evaluation_error(1, r_logits.size + 4), rng)


def test_repeated_ids_accumulate_in_the_embedding_gradient():
    d_x = np.arange(12, dtype=np.float64).reshape(1, 3, 4)
    d_wte, d_wpe = R.embed_backward(d_x, np.array([[2, 2, 0]]), np.array([[0, 1, 1]]), n_vocab=3, n_ctx=2)
    np.testing.assert_array_equal(d_wte[2], d_x[0, 0] + d_x[0, 1])  # both uses of token 2, not the last one
    np.testing.assert_array_equal(d_wte[0], d_x[0, 2])
    np.testing.assert_array_equal(d_wte[1], 0)
    np.testing.assert_array_equal(d_wpe[1], d_x[0, 1] + d_x[0, 2])


@given(st.integers(1, 3), st.integers(1, 5), st.integers(2, 9), st.sampled_from([1.0, 30.0]), seeds)
def test_cross_entropy_backward(B, T, V, scale, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((B, T, V)) * scale
    targets = rng.integers(0, V, (B, T))
    targets[rng.random((B, T)) < 0.3] = -100
    targets[0, 0] = 1
    d_logits = R.cross_entropy_backward(logits, targets)
    assert not d_logits[targets == -100].any()
    loss = R.cross_entropy(logits, targets)
    directional_check("cross_entropy", lambda a: (R.cross_entropy(a["x"], targets), abs(loss) + scale),
                      dict(x=logits), dict(x=d_logits), layer_evaluation_error(3 * V, B * T), rng)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_attention_backward_stays_finite_on_fully_masked_rows_in_every_dtype(dtype):
    rng = np.random.default_rng(0)
    q, k, v, r = (rng.standard_normal((2, 2, 3, 4)).astype(dtype) * 30 for _ in range(4))
    mask = R.causal_mask(3, 3)[None, None] & R.padding_mask(np.array([[0, 0, 0], [0, 1, 1]]))
    _, weights = R.attention(q, k, v, mask)
    grads = R.attention_backward(r, q, k, v, mask, weights)
    assert all(g.dtype == dtype and np.isfinite(g).all() for g in grads)
    d_q, d_k, _ = grads
    assert not d_q[0].any() and not d_k[0].any()  # row 0: every score masked, none has a gradient
    assert not d_q[1, :, 0].any()  # row 1, query 0 is padding: fully masked too
