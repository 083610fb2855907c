"""MindSpore backend vs the float64 spec: attention, every layer, fully padded rows, generation.

Each property draws a small model (strategies.configs: gpt1/gpt2, 1-3 layers, 1-4 heads, head
dim 1-16) at probe scale and holds every tensor to its bound from gptspec.tolerances; a failure
prints the tensor, the position of the worst error and the bound's derivation.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ref_numpy as R
from gptspec.compare import assert_close
from gptspec.parity import check_greedy, compare_traces, precision_bound, probe_params, reference_layer_norm_condition
from gptspec.tolerances import AMP_LEVELS, forward_bound

from .strategies import configs, left_padding_mask, model_for, token_batches

ms = pytest.importorskip("mindspore", reason="mindspore extra not installed")
ms_backend = pytest.importorskip("ms_backend", reason="mindspore extra not installed")
pytestmark = pytest.mark.mindspore


def attention_config(n_head, head_dim):
    """The config whose one-block bound covers a single attention of these sizes."""
    return R.GPTConfig(n_vocab=2, n_ctx=2, n_embd=n_head * head_dim, n_head=n_head, n_layer=1)


@given(batch=st.integers(1, 3), n_head=st.integers(1, 4), head_dim=st.integers(1, 16), n_query=st.integers(1, 8),
       n_past=st.integers(0, 8), seed=st.integers(0, 2**31))
def test_attention_equals_the_spec(batch, n_head, head_dim, n_query, n_past, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, n_head, n_query, head_dim))
    k, v = rng.standard_normal((2, batch, n_head, n_past + n_query, head_dim))
    mask = R.causal_mask(n_query, n_past + n_query)[None, None]
    out, weights = R.attention(q, k, v, mask)
    f32 = (lambda a: ms.Tensor(a.astype(np.float32)))
    ms_out, ms_weights = ms_backend.attention(f32(q), f32(k), f32(v), ms.Tensor(mask))
    bound = forward_bound(attention_config(n_head, head_dim), "float32", depth=1)
    assert_close("attention weights", ms_weights.asnumpy(), weights, bound)
    assert_close("attention output", ms_out.asnumpy(), out, bound)
    row_sums = ms_weights.asnumpy().astype(np.float64).sum(-1)
    assert_close("softmax row sums", row_sums, np.ones_like(row_sums), bound)


@given(batch=st.integers(1, 3), n_head=st.integers(1, 4), head_dim=st.integers(1, 16), length=st.integers(1, 8),
       seed=st.integers(0, 2**31))
def test_split_and_merge_heads_are_inverses_and_match_the_spec(batch, n_head, head_dim, length, seed):
    x = np.random.default_rng(seed).standard_normal((batch, length, n_head * head_dim)).astype(np.float32)
    heads = ms_backend.split_heads(ms.Tensor(x), n_head)
    assert np.array_equal(heads.asnumpy(), R.split_heads(x, n_head)), "split_heads moves data like the spec"
    assert np.array_equal(ms_backend.merge_heads(heads).asnumpy(), x), "merge_heads undoes split_heads"


@given(data=st.data(), config=configs(), seed=st.integers(0, 1000), padded=st.booleans(),
       amp_level=st.sampled_from(AMP_LEVELS))
def test_every_layer_matches_the_spec_at_every_amp_level(data, config, seed, padded, amp_level):
    params64 = model_for(config, seed)
    ids = data.draw(token_batches(config))
    mask = None
    if padded:
        lengths = data.draw(st.lists(st.integers(1, ids.shape[1]), min_size=ids.shape[0], max_size=ids.shape[0]))
        mask = left_padding_mask(lengths, ids.shape[1])
    reference, actual = {}, {}
    R.forward(config, params64, ids, attention_mask=mask, trace=reference)
    ms_backend.GPTModel(config, params64, amp_level=amp_level).forward_numpy(ids, attention_mask=mask, trace=actual)
    condition = reference_layer_norm_condition(config, params64, ids, mask)
    failed = [row.describe() for row in compare_traces(config, reference, actual, amp_level=amp_level,
                                                       layer_norm_condition=condition) if not row.passed]
    assert not failed, f"at {amp_level}:\n" + "\n".join(failed)


@pytest.mark.parametrize("amp_level", AMP_LEVELS)
@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_fully_padded_rows_stay_finite_at_every_level(arch, amp_level):
    config = R.GPTConfig(arch=arch, n_vocab=37, n_ctx=8, n_embd=16, n_head=2, n_layer=2)
    params64 = probe_params(config, 1, dtype=np.float64)
    ids = np.random.default_rng(0).integers(0, 37, size=(3, 8))
    mask = left_padding_mask([8, 3, 0], 8)  # the last row is padding only
    reference = {}
    R.forward(config, params64, ids, attention_mask=mask, trace=reference)
    model = ms_backend.GPTModel(config, params64, amp_level=amp_level)
    actual = {}
    logits, present = model.forward_numpy(ids, attention_mask=mask, trace=actual)
    for name, tensor in [*actual.items(), *((f"present[{i}]", np.stack(kv)) for i, kv in enumerate(present))]:
        assert np.isfinite(tensor).all(), f"{name} has NaN/Inf at {amp_level}"
    failed = [row.describe() for row in compare_traces(config, reference, actual, amp_level=amp_level)
              if not row.passed]
    assert not failed, "\n".join(failed)


@given(config=configs(max_ctx=12), seed=st.integers(0, 1000), amp_level=st.sampled_from(("O1", "O2", "O3")))
def test_fp16_greedy_diverges_only_at_a_near_tie(config, seed, amp_level):
    """Under fp16 the greedy tokens may differ from the spec's, but only where the spec's own
    top-2 gap is below what the level's error could flip (near_tie_gap) -- asserted, not skipped."""
    params64 = model_for(config, seed)
    prompt = np.random.default_rng(seed).integers(0, config.n_vocab, size=max(1, config.n_ctx // 2))
    n_new = config.n_ctx - len(prompt)
    spec = R.generate(config, params64, prompt, n_new, greedy=True)[len(prompt):]
    model = ms_backend.GPTModel(config, params64, amp_level=amp_level)
    ours = ms_backend.generate(config, model, prompt, n_new, greedy=True)[len(prompt):]
    check = check_greedy(config, params64, prompt, spec, ours, precision_bound(config, amp_level))
    assert check.passed, check.describe()


@given(config=configs(max_ctx=10), seed=st.integers(0, 1000), sample_seed=st.integers(0, 2**31),
       temperature=st.floats(0.5, 2.0), top_k=st.none() | st.integers(1, 8), top_p=st.none() | st.floats(0.3, 1.0))
def test_seeded_sampling_differs_only_where_the_distributions_do(config, seed, sample_seed, temperature, top_k,
                                                                  top_p):
    """Same seed, same uniforms: the tokens can differ only at a step where the float32 backend's
    processed distribution moves a CDF boundary across the uniform the spec drew."""
    params64 = model_for(config, seed)
    prompt = np.random.default_rng(seed).integers(0, config.n_vocab, size=(2, max(1, config.n_ctx // 2)))
    n_new = config.n_ctx - prompt.shape[1]
    kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=sample_seed)
    spec = R.generate(config, params64, prompt, n_new, **kwargs)
    model = ms_backend.GPTModel(config, params64)
    ours = ms_backend.generate(config, model, prompt, n_new, **kwargs)
    if np.array_equal(spec, ours):
        return
    step = int(np.argmax((spec != ours).any(axis=0)))  # first column where some row differs
    row = int(np.argmax(spec[:, step] != ours[:, step]))
    prefix = spec[row:row + 1, :step]
    uniforms = np.random.default_rng(sample_seed).random((step - prompt.shape[1] + 1, 2))[-1]
    probs = {}
    for name, logits in (("spec", R.forward(config, params64, prefix)[0]), ("ms", model.forward_numpy(prefix)[0])):
        probs[name] = R.processed_probs(logits[:, -1], temperature=temperature, top_k=top_k, top_p=top_p)[0]
    cdf_spec, cdf_ms = np.cumsum(probs["spec"]), np.cumsum(probs["ms"])
    target = uniforms[row] * cdf_spec[-1]
    distance_to_boundary = np.abs(cdf_spec - target).min()
    assert np.abs(cdf_spec - cdf_ms).max() >= distance_to_boundary, (
        f"row {row} step {step}: spec drew {spec[row, step]}, MindSpore {ours[row, step]}, but the CDFs differ by "
        f"{np.abs(cdf_spec - cdf_ms).max():.3g} < the draw's distance {distance_to_boundary:.3g} to a boundary")


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_the_parity_report_holds_the_padded_row_both_ratios_and_the_distinct_tokens(arch):
    """run_parity's default input: the prompt plus the prompt left padded by T // 4; every row
    carries err/bound and err/noise; padding=0 runs the prompt alone, as before."""
    from gptspec.parity import run_parity

    config = R.GPTConfig(arch=arch, n_vocab=61, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
    params = probe_params(config, 0)
    ids = np.random.default_rng(5).integers(0, 61, size=8)
    report = run_parity(config, params, ids, max_new_tokens=4)
    trace = {}
    R.forward(config, params, ids, trace=trace)
    names = [row.name for row in report.rows]
    logits_rows = ["logits (model output)", "padded: logits (model output)", "logits (KV cache)",
                   "padded: logits (KV cache)"]
    assert names == [*trace, *(f"padded: {name}" for name in trace), *logits_rows]
    assert report.passed, "\n".join(report.failures())
    assert report.settings["padded_row_padding"] == 2
    padded = report.rows[names.index("padded: blocks.0.attn_weights")]
    assert padded.shape == (1, 4, 6, 8)  # the 6 real queries, every key
    as_json = report.to_json()
    assert all(row["error_over_bound"] <= 1 and row["error_over_noise"] <= as_json["noise_multiple"]
               for row in as_json["tensors"])
    assert as_json["generation"]["distinct_tokens"] == len(set(report.generation.reference)) >= 1
    assert "err/noise" in report.table() and "distinct tokens compared" in report.table()
    alone = run_parity(config, params, ids, max_new_tokens=0, padding=0)
    assert [row.name for row in alone.rows] == [*trace, "logits (model output)", "logits (KV cache)"]
    assert alone.passed and alone.generation is None
