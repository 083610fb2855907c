"""Porting bugs in masks, positions and caches: each must fail the suite and `gptspec parity`
(at the mode where it lives), as the layer bugs of test_parity_mutations.py (whose checks these
tests share) do.  Several show only on a left-padded row (a fully masked query, shifted
positions) or only in graph mode's static cache.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest

pytest.importorskip("mindspore", reason="mindspore extra not installed")
ms_backend = pytest.importorskip("ms_backend", reason="mindspore extra not installed")
pytestmark = pytest.mark.mindspore

from mindspore import ops  # noqa: E402  (after the importorskip)

import ms_backend.model  # noqa: E402,F401

from .test_parity_mutations import (UNBROKEN_RUNS, Variant,  # noqa: E402
                                    check_the_variant_fails_the_cli, check_the_variant_fails_the_suite,
                                    levels_and_modes, patch_backend, variants_and_archs)
from .test_parity_mutations import tiny_checkpoint  # noqa: E402,F401  (the fixture, used here too)

GENERATE_MODULE = importlib.import_module("ms_backend.generate")  # ms_backend.generate is the function


# -- masks ----------------------------------------------------------------------------------

def mask_off_by_one(monkeypatch):
    """Each query also sees the key right after it: causal_mask's offset one too large."""
    original = ms_backend.layers.causal_mask

    def shifted(n_query, n_key, n_slots=None):
        mask = original(n_query, n_key + 1, n_slots)
        return mask if n_slots is not None else mask[:, :n_key]

    patch_backend(monkeypatch, "causal_mask", shifted)


def softmax_without_the_max(monkeypatch):
    """exp(x) / sum(exp(x)) without subtracting the max: a fully masked row (a padding query)
    is exp(-3.4e38) = 0 everywhere, 0 / 0 = NaN."""
    def softmax(x, axis=-1):
        e = ops.exp(x)
        return e / e.sum(axis=axis, keepdims=True)

    patch_backend(monkeypatch, "softmax", softmax)


def float32_minimum_in_float16(monkeypatch):
    """The masked score is float32's minimum whatever the scores' dtype: cast to float16 it is
    -inf, and a fully masked row (a padding query) becomes -inf - (-inf) = NaN (at O3, where the
    softmax runs in float16)."""
    patch_backend(monkeypatch, "finite_min", lambda dtype: ms_backend.layers.FLOAT32_MIN)


def padding_mask_ignored(monkeypatch):
    """The attention mask's padding is not applied: queries attend to the padding tokens."""
    patch_backend(monkeypatch, "padding_mask", lambda attention_mask: (attention_mask > -1)[:, None, None, :])


# -- positions ------------------------------------------------------------------------------

def positions_without_offset(monkeypatch):
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


def positions_ignore_the_padding(monkeypatch):
    """Position ids n_past + arange(T) even with left padding, not cumsum(mask) - 1: a padded
    row's real tokens get shifted positions."""
    original_prepare = ms_backend.model.prepare_inputs

    def prepare(config, ids, *, attention_mask=None, past=None, position_ids=None):
        inputs = original_prepare(config, ids, attention_mask=attention_mask, past=past, position_ids=position_ids)
        if position_ids is not None:
            return inputs
        B, T = inputs.ids.shape
        return inputs._replace(position_ids=np.broadcast_to(np.arange(inputs.n_past, inputs.n_past + T), (B, T)))

    patch_backend(monkeypatch, "prepare_inputs", prepare)
    for module in (ms_backend.model, GENERATE_MODULE):  # the Tensor and the NumPy version
        monkeypatch.setattr(module, "default_position_ids",
                            lambda mask, n_past, batch, n_new, original=module.default_position_ids:
                            original(None, n_past, batch, n_new))


def static_positions_from_zero(monkeypatch):
    """Graph mode: the compiled step looks up wpe at arange(T), not write_pos + arange(T), so
    every token after the prompt gets a position counted from 0."""
    original = ms_backend.model.GPTModel.step_numpy

    def step_numpy(self, ids, position_ids, key_mask, write_pos, cache, last_only=False):
        return original(self, ids, np.asarray(position_ids) - int(write_pos), key_mask, write_pos, cache, last_only)

    monkeypatch.setattr(ms_backend.model.GPTModel, "step_numpy", step_numpy)


# -- caches ---------------------------------------------------------------------------------

def static_cache_one_slot_late(monkeypatch):
    """Graph mode's static cache: new keys and values written at write_pos + 1 (the slot of
    write_pos keeps its zeros and is attended; the last one falls off the end)."""
    original = ms_backend.layers.extend_cache

    def extend_cache(past, k, v, cache_write=None):
        if cache_write is not None:
            slots = cache_write[0]
            late = ops.cat((ops.zeros_like(slots[:1]), slots[:-1]), axis=0)  # every one-hot one row down
            cache_write = (late, cache_write[1])
        return original(past, k, v, cache_write)

    patch_backend(monkeypatch, "extend_cache", extend_cache)


VARIANTS = {v.name: v for v in [
    Variant("causal mask off by one", "masks", mask_off_by_one),
    Variant("softmax without the max subtracted", "masks", softmax_without_the_max),
    Variant("float32 mask minimum cast to float16", "masks", float32_minimum_in_float16, amp="O3"),
    Variant("padding mask ignored", "masks", padding_mask_ignored),
    Variant("position ids without the cache offset", "positions", positions_without_offset),
    Variant("position ids ignore the left padding", "positions", positions_ignore_the_padding),
    Variant("graph step: wpe without the cache offset", "positions", static_positions_from_zero, mode="graph"),
    Variant("static cache written one slot late", "caches", static_cache_one_slot_late, mode="graph"),
]}


def test_the_unbroken_runs_cover_these_variants():
    """The unbroken backend passes at these levels and modes: test_parity_mutations.UNBROKEN_RUNS."""
    assert set(levels_and_modes(VARIANTS.values())) <= set(UNBROKEN_RUNS)


@pytest.mark.parametrize("arch, name", variants_and_archs(VARIANTS.values()))
def test_each_mask_position_or_cache_bug_fails_the_suite(arch, name, monkeypatch):
    check_the_variant_fails_the_suite(VARIANTS[name], arch, monkeypatch)


@pytest.mark.parametrize("name", VARIANTS)
def test_each_mask_position_or_cache_bug_fails_the_cli_on_a_small_checkpoint(capsys, tiny_checkpoint, name,
                                                                           monkeypatch):
    check_the_variant_fails_the_cli(VARIANTS[name], capsys, ["--weights", tiny_checkpoint], monkeypatch)
