"""ref_numpy.loss_and_grads as a whole: finite differences over small models of both
architectures (with and without padding, with dropout masks fixed by the seed), the properties
the issue lists, bad inputs, and a tiny model that learns real text."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ref_numpy as R
from gptspec.compare import assert_close
from gptspec.tolerances import backward_bound, backward_reorder_bound, forward_bound, reorder_bound

from .strategies import configs, model_for
from .test_spec_backward import directional_check

seeds = st.integers(0, 2**32 - 1)
small_configs = configs(max_layers=2, max_heads=2, max_head_dim=4, max_ctx=8, max_vocab=16)


def assert_grads_close(name, actual, reference, bound):
    """assert_close, and the same relative bound against the tensor's own largest gradient:
    Bound.allowed floors the scale at 1, which for gradients of order 1e-3..1e-1 would loosen a
    relative error model 10-1000x."""
    assert_close(name, actual, reference, bound)
    error, scale = float(np.abs(actual - reference).max()), float(np.abs(reference).max())
    assert error <= bound.value * scale, f"{name}: {error:.3g} > {bound.value:.3g} x max|grad| {scale:.3g}"


def padded_batch(config, B, T, side, rng):
    """ids [B, T], targets [B, T] with -100 on padding, attention_mask [B, T] or None."""
    ids = rng.integers(0, config.n_vocab, (B, T))
    targets = rng.integers(0, config.n_vocab, (B, T))
    if side == "none":
        return ids, targets, None
    lengths = rng.integers(1, T + 1, B)
    slots = np.arange(T)[None, :]
    mask = (slots >= T - lengths[:, None]) if side == "left" else (slots < lengths[:, None])
    return ids, np.where(mask, targets, -100), mask.astype(np.int64)


@given(small_configs, st.integers(1, 3), st.sampled_from(["none", "left", "right"]), st.sampled_from([0.0, 0.1]),
       seeds)
def test_loss_and_grads_match_finite_differences(config, B, side, dropout, seed):
    rng = np.random.default_rng(seed)
    params = model_for(config, seed % 1000)
    ids, targets, mask = padded_batch(config, B, int(rng.integers(1, config.n_ctx + 1)), side, rng)
    loss, grads = R.loss_and_grads(config, params, ids, targets, attention_mask=mask, dropout=dropout, seed=seed)

    def loss_at(flat):
        value, _ = R.loss_and_grads(config, R.unflatten_params(flat), ids, targets, attention_mask=mask,
                                    dropout=dropout, seed=seed)  # the same seed: the same dropout masks
        return value, abs(value)

    directional_check(f"loss_and_grads {config.arch}", loss_at, R.flatten_params(params), R.flatten_params(grads),
                      forward_bound(config, np.float64).value, rng)


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_grads_have_the_structure_shapes_and_dtype_of_params(arch):
    config = R.GPTConfig(arch=arch, n_vocab=13, n_ctx=8, n_embd=8, n_head=2, n_layer=2)
    for dtype in (np.float32, np.float64):
        params = R.init_params(config, 0, dtype=dtype)
        loss, grads = R.loss_and_grads(config, params, [[1, 2, 3]], [[2, 3, 4]])
        assert isinstance(loss, float)
        R.check_params(config, grads)  # same names, shapes, one dtype
        assert list(grads) == list(params) and grads["wte"].dtype == dtype


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_float32_gradients_are_the_float64_ones_within_the_derived_bound(arch):
    config = R.GPTConfig(arch=arch, n_vocab=29, n_ctx=12, n_embd=16, n_head=2, n_layer=2)
    rng = np.random.default_rng(3)
    ids, targets, mask = padded_batch(config, 3, 12, "left", rng)
    params = model_for(config, 3)
    loss64, grads64 = R.loss_and_grads(config, params, ids, targets, attention_mask=mask, dropout=0.1, seed=5)
    loss32, grads32 = R.loss_and_grads(config, R.cast_params(params, np.float32), ids, targets, attention_mask=mask,
                                       dropout=0.1, seed=5)  # masks drawn in float64: the same ones
    assert abs(loss32 - loss64) <= forward_bound(config, np.float32).allowed(loss64)
    bound = backward_bound(config, np.float32, ids.size)
    for name, g64 in R.flatten_params(grads64).items():
        assert_grads_close(f"{arch} d {name} float32", R.flatten_params(grads32)[name], g64, bound)


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_row_has_the_loss_and_gradients_of_the_unpadded_row(arch, side):
    """Padding slots get exactly zero gradient (their targets are ignored and no query attends
    them), so the two gradients are the same sums computed with different matmul shapes: equal
    within backward_reorder_bound, not bit for bit."""
    config = R.GPTConfig(arch=arch, n_vocab=23, n_ctx=12, n_embd=16, n_head=4, n_layer=2)
    params = model_for(config, 1)
    rng = np.random.default_rng(1)
    row, next_tokens = rng.integers(0, 23, 7), rng.integers(0, 23, 7)
    pad = rng.integers(0, 23, 5)  # padding slots hold arbitrary ids: they must not matter
    if side == "left":
        ids, targets = np.concatenate([pad, row]), np.concatenate([np.full(5, -100), next_tokens])
        mask = np.concatenate([np.zeros(5, int), np.ones(7, int)])
    else:
        ids, targets = np.concatenate([row, pad]), np.concatenate([next_tokens, np.full(5, -100)])
        mask = np.concatenate([np.ones(7, int), np.zeros(5, int)])
    loss, grads = R.loss_and_grads(config, params, row[None], next_tokens[None])
    padded_loss, padded_grads = R.loss_and_grads(config, params, ids[None], targets[None], attention_mask=mask[None])
    assert abs(padded_loss - loss) <= reorder_bound(config, np.float64).allowed(loss)
    bound = backward_reorder_bound(config, np.float64, 12)
    for name, g in R.flatten_params(grads).items():
        assert_grads_close(f"{side}-padded d {name}", R.flatten_params(padded_grads)[name], g, bound)


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_tokens_after_position_t_do_not_change_the_gradient_of_the_loss_up_to_t(arch):
    config = R.GPTConfig(arch=arch, n_vocab=23, n_ctx=12, n_embd=16, n_head=4, n_layer=2)
    params = model_for(config, 2)
    rng = np.random.default_rng(2)
    ids, targets = rng.integers(0, 23, (2, 10)), rng.integers(0, 23, (2, 10))
    t = 4
    targets[:, t + 1:] = -100  # the loss at positions 0..t only
    changed = ids.copy()
    changed[:, t + 1:] = rng.integers(0, 23, (2, 10 - t - 1))
    loss, grads = R.loss_and_grads(config, params, ids, targets)
    loss2, grads2 = R.loss_and_grads(config, params, changed, targets)
    assert abs(loss2 - loss) <= reorder_bound(config, np.float64).allowed(loss)
    bound = backward_reorder_bound(config, np.float64, ids.size)
    for name, g in R.flatten_params(grads).items():
        assert_grads_close(f"d {name} with later tokens changed", R.flatten_params(grads2)[name], g, bound)
    # ... while changing a token at position t does change it
    changed[:, t] = (ids[:, t] + 1) % 23
    assert not np.allclose(R.loss_and_grads(config, params, changed, targets)[1]["wpe"], grads["wpe"])


def test_tied_wte_gradient_is_the_embedding_part_plus_the_head_part():
    config = R.GPTConfig(arch="gpt2", n_vocab=17, n_ctx=8, n_embd=8, n_head=2, n_layer=1)
    params = model_for(config, 4)
    ids, targets = np.array([[3, 3, 5, 1]]), np.array([[3, 5, 1, 2]])  # token 3 twice
    loss, grads = R.loss_and_grads(config, params, ids, targets)
    hidden, tape = R.train_forward(config, params, ids)
    logits = R.lm_head(params, hidden)
    d_hidden, head_part = R.lm_head_backward(R.cross_entropy_backward(logits, targets), hidden, params["wte"])
    embedding_part = R.train_backward(config, params, tape, d_hidden)["wte"]
    np.testing.assert_array_equal(grads["wte"], embedding_part + head_part)  # the same operations, same order
    assert np.abs(embedding_part).max() > 0 and np.abs(head_part).max() > 0
    # every vocabulary row gets a head gradient (softmax over all V), only looked-up rows an embedding one
    assert not embedding_part[[0, 2, 4]].any() and embedding_part[[1, 3, 5]].any(axis=1).all()


def test_dropout_masks_are_fixed_by_the_seed():
    config = R.GPTConfig(arch="gpt2", n_vocab=17, n_ctx=8, n_embd=8, n_head=2, n_layer=2)
    params = model_for(config, 4)
    ids, targets = np.array([[3, 4, 5, 1]]), np.array([[4, 5, 1, 2]])
    base = R.loss_and_grads(config, params, ids, targets)[0]
    a = R.loss_and_grads(config, params, ids, targets, dropout=0.1, seed=0)[0]
    assert a == R.loss_and_grads(config, params, ids, targets, dropout=0.1, seed=0)[0]
    assert a != R.loss_and_grads(config, params, ids, targets, dropout=0.1, seed=1)[0] and a != base
    # inverted dropout keeps the expected activation: the embedding masks average to 1
    _, tape = R.train_forward(config, params, np.zeros((64, 8), int), dropout=0.25, rng=np.random.default_rng(0))
    scale = tape["embed_drop"]
    assert set(np.unique(scale)) == {0.0, np.float64(1 / 0.75)}
    assert abs(np.mean(scale == 0) - 0.25) < 0.02  # 4096 draws: 5 standard deviations is 0.034 ... 0.02 is 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(targets=[[1, 2]]), "targets has shape"),
    (dict(targets=[[1, 2, 99]]), "targets contains id 99"),
    (dict(targets=[[1, -1, 2]]), "targets contains id -1"),
    (dict(targets=[[-100, -100, -100]]), "every entry of targets equals ignore_index"),
    (dict(targets=[[0.5, 1, 2]]), "targets must be integer"),
    (dict(dropout=1.0), "dropout must be a probability in \\[0, 1\\)"),
    (dict(dropout=-0.1), "dropout must be a probability"),
    (dict(inputs=[[1, 2, 40]]), "ids contains token id 40"),
    (dict(attention_mask=[[1, 2, 1]]), "attention_mask must contain only 0"),
])
def test_bad_inputs_are_named(kwargs, message):
    config = R.GPTConfig(arch="gpt1", n_vocab=17, n_ctx=8, n_embd=8, n_head=2, n_layer=1)
    args = dict(inputs=[[1, 2, 3]], targets=[[2, 3, 4]]) | kwargs
    with pytest.raises((ValueError, TypeError), match=message):
        R.loss_and_grads(config, R.init_params(config), args.pop("inputs"), args.pop("targets"), **args)


def test_bad_params_and_a_missing_rng_are_named():
    config = R.GPTConfig(arch="gpt2", n_vocab=17, n_ctx=8, n_embd=8, n_head=2, n_layer=1)
    params = R.init_params(config)
    del params["ln_f"]
    with pytest.raises(ValueError, match="params is missing 'ln_f.g'"):
        R.loss_and_grads(config, params, [[1, 2]], [[2, 3]])
    with pytest.raises(ValueError, match="rng must be a numpy.random.Generator"):
        R.train_forward(config, R.init_params(config), [[1, 2]], dropout=0.1)


def test_cross_entropy_does_not_overflow_in_low_precision():
    logits = np.array([[60000.0, 0.0, -60000.0]], np.float16)  # exp(60000) overflows every float type
    assert R.cross_entropy(logits, [0]) == 0.0
    assert R.cross_entropy(logits, [1]) == 60000.0
    d = R.cross_entropy_backward(logits, np.array([1]))
    assert d.dtype == np.float16 and np.isfinite(d).all()
    np.testing.assert_array_equal(d, [[1, -1, 0]])
    assert math.isclose(R.cross_entropy(np.zeros((2, 7)), [3, -100]), math.log(7))


def test_a_small_model_learns_real_text():
    """Byte-level LM on Python's own documentation (pydoc_data.topics): 300 AdamW steps of a tiny
    GPT-2 bring the held-out loss from ~log(256) (uniform over bytes) to well below it."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[key] for key in sorted(topics)).encode("utf-8")
    data = np.frombuffer(text, np.uint8).astype(np.int64)
    split = int(0.9 * len(data))
    config = R.GPTConfig(arch="gpt2", n_vocab=256, n_ctx=32, n_embd=48, n_head=4, n_layer=2)
    rng = np.random.default_rng(0)

    def windows(source, n):
        starts = rng.integers(0, len(source) - config.n_ctx - 1, n)
        rows = np.stack([source[s:s + config.n_ctx + 1] for s in starts])
        return rows[:, :-1], rows[:, 1:]

    held_x, held_y = windows(data[split:], 64)  # text the model never trains on
    params = R.init_params(config, seed=0)
    state = R.adamw_init(params)
    before = R.loss_and_grads(config, params, held_x, held_y)[0]
    for step in range(300):
        x, y = windows(data[:split], 16)
        loss, grads = R.loss_and_grads(config, params, x, y, dropout=0.1, seed=step)
        grads, _ = R.clip_grad_norm(grads, 1.0)
        params, state = R.adamw_step(params, grads, state, lr=3e-3, weight_decay=0.01)
    after = R.loss_and_grads(config, params, held_x, held_y)[0]
    uniform = math.log(256)
    assert abs(before - uniform) < 0.1 * uniform  # a fresh model is close to uniform
    assert after < 0.5 * uniform, f"held-out loss {after:.3f} after 300 steps (uniform {uniform:.3f})"


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_left_and_right_padded_batches_from_shift_targets_train_alike(arch):
    """pad_or_truncate -> shift_targets -> loss_and_grads: the same texts padded on either side
    give the same loss and gradients (each equals the unpadded rows', see above)."""
    config = R.GPTConfig(arch=arch, n_vocab=31, n_ctx=12, n_embd=16, n_head=2, n_layer=2)
    params = model_for(config, 6)
    rng = np.random.default_rng(6)
    texts = [rng.integers(0, 31, n) for n in (12, 5, 2, 9)]
    results = []
    for side in ("left", "right"):
        ids, mask = R.pad_or_truncate(texts, 12, 0, side=side)
        inputs, targets, input_mask = R.shift_targets(ids, mask)
        results.append(R.loss_and_grads(config, params, inputs, targets, attention_mask=input_mask))
    (left_loss, left_grads), (right_loss, right_grads) = results
    assert abs(left_loss - right_loss) <= reorder_bound(config, np.float64).allowed(right_loss)
    bound = backward_reorder_bound(config, np.float64, 4 * 11)
    for name, g in R.flatten_params(right_grads).items():
        assert_grads_close(f"left vs right padding d {name}", R.flatten_params(left_grads)[name], g, bound)
