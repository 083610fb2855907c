"""Graph mode (static KV cache, mindspore.jit) against PyNative and the spec, and generation.

Graph compilation is the expensive part (~1.5 s per graph here): one model per architecture
is built for the whole module and the input shapes are fixed, so few graphs compile.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mindspore", reason="the MindSpore backend needs the `mindspore` extra")

import ms_backend as M  # noqa: E402
import ms_backend.layers  # noqa: E402
import ref_numpy as R  # noqa: E402
from gptspec.compare import assert_close, compare  # noqa: E402
from gptspec.tolerances import forward_bound, reorder_bound  # noqa: E402

from .strategies import left_padding_mask, model_for  # noqa: E402
from .token_margins import token_margin  # noqa: E402

SAMPLING = dict(temperature=0.8, top_k=5, top_p=0.9)


def assert_tokens_are_decided(config, params, prompt, want, **kwargs):
    """The precondition of comparing float32 tokens with the float64 spec's exactly: every decision
    along the spec's path is further from a tie than forward_bound(float32) could move it (see
    token_margins), so no correct backend on any machine picks another token."""
    margin = token_margin(config, params, prompt, want, forward_bound(config, "float32"), **kwargs)
    assert margin > 1, f"a decision of the spec is within float32 rounding of a tie (margin {margin:.3g})"

pytestmark = pytest.mark.mindspore

CONFIGS = {arch: R.GPTConfig(arch=arch, n_vocab=48, n_ctx=16, n_embd=24, n_head=3, n_layer=2)
           for arch in ("gpt1", "gpt2")}
PROMPT = np.random.default_rng(7).integers(0, 48, (3, 6))
PADDING = left_padding_mask([6, 3, 1], 6)  # rows 1 and 2 start with fully masked (padding) queries


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def models(request):
    """(config, float64 spec params, PyNative model, graph model) for one architecture."""
    config = CONFIGS[request.param]
    params = model_for(config, 11)
    return config, params, M.GPTModel(config, params), M.GPTModel(config, params, mode="graph")


def test_graph_forward_equals_pynative_and_the_spec(models):
    config, params, pynative, graph = models
    got, present = graph.forward_numpy(PROMPT, attention_mask=PADDING)
    same, same_present = pynative.forward_numpy(PROMPT, attention_mask=PADDING)
    assert np.isfinite(got).all()
    assert_close("graph vs pynative logits", got, same, reorder_bound(config, "float32"))
    assert_close("graph vs spec logits", got, R.forward(config, params, PROMPT, attention_mask=PADDING)[0],
                 forward_bound(config, "float32"))
    for i, ((k, v), (k_same, v_same)) in enumerate(zip(present, same_present)):
        assert k.shape == k_same.shape == (3, config.n_head, 6, config.head_dim)
        assert_close(f"present[{i}] k", k, k_same, reorder_bound(config, "float32"))
        assert_close(f"present[{i}] v", v, v_same, reorder_bound(config, "float32"))


def test_graph_static_cache_continues_a_spec_cache(models):
    config, params, pynative, graph = models
    ids = np.concatenate([PROMPT, PROMPT[:, :2]], axis=1)
    mask = np.concatenate([PADDING, np.ones((3, 2), np.int64)], axis=1)
    full, _ = graph.forward_numpy(ids, attention_mask=mask)
    _, spec_past = R.forward(config, params, PROMPT, attention_mask=PADDING)
    rest, present = graph.forward_numpy(ids[:, 6:], attention_mask=mask, past=spec_past)
    assert present[0][0].shape[2] == 8
    assert_close("graph: cached vs full logits", rest, full[:, 6:], reorder_bound(config, "float32"))


# Sampling seed 1: its draws are > 5x further from every CDF boundary, top-k gap and top-p crossing
# than float32 rounding could move them (seed 3 had a draw at 0.28x: exact equality held only
# because this machine's float32 error sits far below forward_bound).
@pytest.mark.parametrize("kwargs", [dict(greedy=True), dict(SAMPLING, seed=1)], ids=["greedy", "sampled"])
def test_graph_generation_equals_the_spec(models, kwargs):
    config, params, pynative, graph = models
    eos = int(PROMPT[0, -1])
    want = R.generate(config, params, PROMPT, 8, attention_mask=PADDING, eos_id=eos, **kwargs)
    assert_tokens_are_decided(config, params, PROMPT, want, attention_mask=PADDING, eos_id=eos,
                              sampling=None if "greedy" in kwargs else SAMPLING, seed=kwargs.get("seed"))
    assert np.array_equal(M.generate(config, graph, PROMPT, 8, attention_mask=PADDING, eos_id=eos, **kwargs), want)
    assert np.array_equal(M.generate(config, pynative, PROMPT, 8, attention_mask=PADDING, eos_id=eos, **kwargs),
                          want)


def test_generate_builds_a_model_from_params_in_either_mode(models):
    config, params, _, _ = models
    want = R.generate(config, params, PROMPT[0], 4, greedy=True)
    assert_tokens_are_decided(config, params, PROMPT[0], want)
    assert np.array_equal(M.generate(config, params, PROMPT[0], 4, greedy=True), want)
    assert np.array_equal(M.generate(config, params, PROMPT[0], 4, greedy=True, mode="graph"), want)


@pytest.mark.parametrize("name", ["gelu", "causal_mask"])
def test_cells_call_the_module_functions_so_a_broken_layer_is_caught(monkeypatch, name):
    """The tests above can fail: swap in an erf GELU or a mask that lets queries see the future."""
    config = CONFIGS["gpt2"]
    params = model_for(config, 11)
    broken = {"gelu": lambda x: ms_backend.layers.ops.gelu(x, approximate="none"),
              "causal_mask": lambda n_query, n_key, n_slots=None: ms_backend.layers.ops.ones(
                  (n_query, n_key if n_slots is None else n_slots), ms_backend.layers.ms.bool_)}[name]
    monkeypatch.setattr(ms_backend.layers, name, broken)
    got, _ = M.GPTModel(config, params).forward_numpy(PROMPT)
    want, _ = R.forward(config, params, PROMPT)
    assert not compare("broken " + name, got, want, forward_bound(config, "float32")).passed


def test_static_cache_shorter_than_n_ctx_gives_the_same_results():
    """Generation sizes the cache to prompt + new tokens (rounded up): 6 + 4 -> 16 of 40 slots."""
    from ms_backend.model import cache_slots

    assert [cache_slots(n, 40) for n in (1, 10, 16, 17, 33)] == [16, 16, 16, 32, 40]
    config = CONFIGS["gpt2"].replace(n_ctx=40)
    params = model_for(config, 12)
    graph = M.GPTModel(config, params, mode="graph")
    want = R.generate(config, params, PROMPT, 4, greedy=True, attention_mask=PADDING)
    assert_tokens_are_decided(config, params, PROMPT, want, attention_mask=PADDING)
    assert np.array_equal(M.generate(config, graph, PROMPT, 4, greedy=True, attention_mask=PADDING), want)
    _, spec_past = R.forward(config, params, PROMPT, attention_mask=PADDING)
    mask = np.concatenate([PADDING, np.ones((3, 1), np.int64)], axis=1)
    got, present = graph.forward_numpy(want[:, 6:7], attention_mask=mask, past=spec_past)
    assert present[0][0].shape[2] == 7
    assert_close("cached step", got, R.forward(config, params, want[:, 6:7], attention_mask=mask, past=spec_past)[0],
                 forward_bound(config, "float32"))
