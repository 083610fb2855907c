"""Backend-facing properties that need an optional part of the protocol (gptspec/backend.py):
the layer trace against the float64 spec, attention weights as causal distributions over the real
keys, and gradients.  Each is skipped, saying why, on a backend that lacks the part.  Runs on the
spec and MindSpore by default, or on `--gptspec-backend` (see test_spec_properties.py)."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import ref_numpy
from gptspec.compare import compare
from gptspec.parity import compare_traces, padded_batch, precision_bound, reference_layer_norm_condition
from gptspec.tolerances import amp_backward_bound, backward_bound, conditioned, lm_loss_bound, op_bound

from .backends import require
from .strategies import configs, model_for, token_batches


def failures(rows) -> list[str]:
    return [row.describe() for row in rows if not row.passed]


@given(data=st.data(), config=configs(), seed=st.integers(0, 1000))
def test_every_traced_tensor_is_within_its_derived_bound(gpt_backend, data, config, seed):
    """The prompt and the prompt left padded: every tensor the spec traces, at its depth's bound."""
    params = model_for(config, seed)
    backend = gpt_backend.build(config, params)
    require(backend, "trace")
    prompt = data.draw(token_batches(config, max_batch=1, min_length=2))[0]
    padding = data.draw(st.integers(1, len(prompt) - 1))
    ids, mask = padded_batch(prompt, padding)
    reference, actual = {}, {}
    ref_numpy.forward(config, params, ids, attention_mask=mask, trace=reference)
    backend.forward(ids, mask, trace=actual)
    condition = reference_layer_norm_condition(config, params, ids, mask)
    rows = compare_traces(config, reference, actual, amp_level=backend.amp_level, dtype=backend.dtype,
                          padding=padding, layer_norm_condition=condition)
    assert not failures(rows), "\n".join(failures(rows))


@given(data=st.data(), config=configs(), seed=st.integers(0, 1000))
def test_attention_weights_are_distributions_over_earlier_real_keys(gpt_backend, data, config, seed):
    """Each real query's weights sum to 1 and put nothing on future or padding keys."""
    backend = gpt_backend.build(config, model_for(config, seed))
    require(backend, "trace")
    ids = data.draw(token_batches(config, min_length=2))
    B, T = ids.shape
    real = data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    mask = np.array([[0] * (T - n) + [1] * n for n in real])
    trace = {}
    backend.forward(ids, mask, trace=trace)
    allowed = np.tril(np.ones((T, T), dtype=bool))[None, None] & (mask[:, None, None, :] == 1)  # [B, 1, T, S]
    query_is_real = (mask == 1)[:, None, :, None]
    rounding = precision_bound(config, backend.amp_level, backend.dtype, depth=1)
    for i in range(config.n_layer):
        weights = np.asarray(trace[f"blocks.{i}.attn_weights"], np.float64)
        sums = np.where(query_is_real[..., 0], weights.sum(-1), 1.0)
        row = compare(f"blocks.{i} row sums", sums, np.ones_like(sums), rounding)
        assert row.passed, row.describe()
        leaked = np.abs(np.where(allowed & query_is_real, 0.0, weights * query_is_real)).max()
        assert leaked <= op_bound("float32", 1).value, f"blocks.{i}: weight {leaked:.3g} on a future or padding key"


@settings(max_examples=6)  # a backend's gradient graph per random config (MindSpore PyNative: ~1 s each)
@given(data=st.data(), config=configs(max_layers=2, max_ctx=8), seed=st.integers(0, 1000))
def test_gradients_match_the_float64_spec(gpt_backend, data, config, seed):
    """A right-padded batch with ignored targets: the loss and every gradient tensor within the
    derived bound of ref_numpy.loss_and_grads in float64."""
    params = model_for(config, seed)
    backend = gpt_backend.build(config, params)
    require(backend, "gradients")
    total = data.draw(st.integers(2, config.n_ctx))
    lengths = data.draw(st.lists(st.integers(2, total), min_size=1, max_size=3))
    rows = [np.random.default_rng(seed + n).integers(0, config.n_vocab, n) for n in lengths]
    ids, mask = ref_numpy.pad_or_truncate(rows, total, 0, side="right")
    inputs, targets, mask = ref_numpy.shift_targets(ids, mask)
    loss, grads = backend.loss_and_grads(inputs, targets, mask, params_like=params)
    loss64, grads64 = ref_numpy.loss_and_grads(config, params, inputs, targets, attention_mask=mask)
    condition = reference_layer_norm_condition(config, params, inputs, mask)
    if backend.amp_level == "O0":
        bound = backward_bound(config, backend.dtype, inputs.size)
        logits = ref_numpy.forward(config, params, inputs, attention_mask=mask)[0]
        loss_bound = lm_loss_bound(config, backend.dtype, float(np.abs(logits).max()), int((targets != -100).sum()))
    else:
        bound = loss_bound = amp_backward_bound(config, backend.amp_level, backend.dtype)
    rows = [compare("loss", loss, loss64, loss_bound)]
    flat64 = ref_numpy.flatten_params(grads64)
    flat = ref_numpy.flatten_params(grads)
    rows += [compare(f"grad {name}", flat[name], reference, conditioned(bound, condition))
             for name, reference in flat64.items()]
    assert not failures(rows), "\n".join(failures(rows))
