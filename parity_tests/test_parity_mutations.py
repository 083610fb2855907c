"""The parity suite must catch a broken backend: four deliberately wrong MindSpore variants
(erf GELU, LayerNorm epsilon 1e-7, a causal mask off by one, positions that ignore the KV
cache's offset) each fail `gptspec.parity.run_parity`, while the unbroken backend passes on the
same model and input.  Small configs of both architectures, probe-scale weights.
"""
from __future__ import annotations

import numpy as np
import pytest

import ref_numpy as R
from gptspec.parity import probe_params, run_parity

ms = pytest.importorskip("mindspore", reason="mindspore extra not installed")
ms_backend = pytest.importorskip("ms_backend", reason="mindspore extra not installed")
pytestmark = pytest.mark.mindspore

from mindspore import ops  # noqa: E402  (after the importorskip)

CONFIGS = {arch: R.GPTConfig(arch=arch, n_vocab=61, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
           for arch in ("gpt1", "gpt2")}
IDS = np.random.default_rng(5).integers(0, 61, size=10)


def patch_backend(monkeypatch, name, replacement):
    """Replace `name` in every ms_backend module that holds it (a module that imported it by
    name keeps its own reference), so the broken variant is used on every path."""
    import sys

    patched = [module for key, module in sys.modules.items()
               if key.startswith("ms_backend") and hasattr(module, name)]
    assert patched, f"ms_backend has no {name} to break"
    for module in patched:
        monkeypatch.setattr(module, name, replacement)


def erf_gelu(monkeypatch, config):
    patch_backend(monkeypatch, "gelu", lambda x: ops.gelu(x, approximate="none"))
    return config


def epsilon_1e7(monkeypatch, config):
    return config.replace(layer_norm_epsilon=1e-7)  # MindSpore's nn.LayerNorm default


def mask_off_by_one(monkeypatch, config):
    """Each query also sees the key right after it: causal_mask's offset one too large."""
    original = ms_backend.layers.causal_mask

    def shifted(n_query, n_key, n_slots=None):
        mask = original(n_query, n_key + 1, n_slots)
        return mask if n_slots is not None else mask[:, :n_key]

    patch_backend(monkeypatch, "causal_mask", shifted)
    return config


def positions_without_offset(monkeypatch, config):
    """New tokens after a KV cache get positions counted from 0, as if n_past were forgotten."""
    original_prepare = ms_backend.model.prepare_inputs
    original_default = ms_backend.model.default_position_ids

    def prepare(*args, **kwargs):
        inputs = original_prepare(*args, **kwargs)
        return inputs._replace(position_ids=inputs.position_ids - inputs.n_past)

    def default_position_ids(attention_mask, n_past, batch, n_new):
        new_mask = None if attention_mask is None else attention_mask[:, -n_new:]
        return original_default(new_mask, 0, batch, n_new)

    patch_backend(monkeypatch, "prepare_inputs", prepare)
    patch_backend(monkeypatch, "default_position_ids", default_position_ids)
    return config


MUTATIONS = {"erf GELU": erf_gelu, "LayerNorm eps 1e-7": epsilon_1e7, "causal mask off by one": mask_off_by_one,
             "position ids without the cache offset": positions_without_offset}


@pytest.mark.parametrize("arch", CONFIGS)
def test_the_unbroken_backend_passes(arch):
    config = CONFIGS[arch]
    report = run_parity(config, probe_params(config, 0), IDS, max_new_tokens=4)
    assert report.passed, report.table()


@pytest.mark.parametrize("mutation", MUTATIONS)
@pytest.mark.parametrize("arch", CONFIGS)
def test_each_broken_variant_fails(arch, mutation, monkeypatch):
    config = CONFIGS[arch]
    params = probe_params(config, 0)
    backend_config = MUTATIONS[mutation](monkeypatch, config)
    model = ms_backend.GPTModel(backend_config, params)
    report = run_parity(config, params, IDS, max_new_tokens=4, model=model)
    assert not report.passed, f"{mutation} went unnoticed:\n{report.table()}"
    assert "FAIL" in report.table()
