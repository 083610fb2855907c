"""The parity checks must catch a broken backend: realistic porting bugs, each injected into
ms_backend by monkeypatching, must fail both the suite (`gptspec.parity.run_parity` on small
configs of both architectures) and `gptspec parity` run through the CLI entry point at the AMP
level and mode where the bug lives, while the unbroken backend passes the same runs.

This file holds the bugs in layers, masks, positions and caches; test_parity_mutations_amp.py
the AMP policy violations.  The CLI check runs on a tiny checkpoint here; the slow test runs the
DEFAULT `gptspec parity` (random 124M) for every variant, and

    python -m parity_tests.test_parity_mutations

prints each variant's worst error / bound in that default run (the table of issue 14).
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest

import ref_numpy as R
from gptspec.cli import main
from gptspec.parity import probe_params, run_parity

ms = pytest.importorskip("mindspore", reason="mindspore extra not installed")
ms_backend = pytest.importorskip("ms_backend", reason="mindspore extra not installed")
weights = pytest.importorskip("weights")
pytestmark = pytest.mark.mindspore

from mindspore import nn, ops  # noqa: E402  (after the importorskip)

import ms_backend.model  # noqa: E402,F401  (patch_backend patches every loaded ms_backend module)

GENERATE_MODULE = importlib.import_module("ms_backend.generate")  # ms_backend.generate is the function

CONFIGS = {arch: R.GPTConfig(arch=arch, n_vocab=61, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
           for arch in ("gpt1", "gpt2")}
IDS = np.random.default_rng(5).integers(0, 61, size=10)


@dataclass(frozen=True)
class Variant:
    """A porting bug: `apply(monkeypatch)` breaks ms_backend; it lives at `amp` in `mode`."""
    name: str
    where: str  # layers, masks, positions, caches, AMP policy
    apply: Callable
    amp: str = "O0"
    mode: str = "pynative"
    archs: tuple = ("gpt1", "gpt2")

    @property
    def cli_args(self) -> list[str]:
        return [*(["--amp", self.amp] if self.amp != "O0" else []),
                *(["--mode", self.mode] if self.mode != "pynative" else [])]


def patch_backend(monkeypatch, name, replacement):
    """Replace `name` in every ms_backend module that holds it (a module that imported it by
    name keeps its own reference), so the broken variant is used on every path."""
    import sys

    patched = [module for key, module in list(sys.modules.items())
               if key.startswith("ms_backend") and module is not None and hasattr(module, name)]
    assert patched, f"ms_backend has no {name} to break"
    for module in patched:
        monkeypatch.setattr(module, name, replacement)


def after_init(monkeypatch, cell_class, change):
    """Run `change(cell, *init_args)` after every `cell_class.__init__`: a Cell that sets one of
    its fields wrongly, e.g. the dtype of one operation."""
    original = cell_class.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        change(self, *args, **kwargs)

    monkeypatch.setattr(cell_class, "__init__", init)


# -- layers ---------------------------------------------------------------------------------

def erf_gelu(monkeypatch):
    """MindSpore's ops.gelu default (erf) instead of GPT's tanh approximation."""
    patch_backend(monkeypatch, "gelu", lambda x: ops.gelu(x, approximate="none"))


def epsilon_1e7(monkeypatch):
    """nn.LayerNorm's default epsilon 1e-7 instead of the checkpoint's 1e-5."""
    after_init(monkeypatch, ms_backend.layers.LayerNorm, lambda cell, *args, **kwargs: setattr(cell, "eps", 1e-7))


def unbiased_variance(monkeypatch):
    """LayerNorm with the unbiased variance (divides by C - 1, torch.var's default)."""
    def layer_norm(x, g, b, eps=1e-5):
        mean = x.mean(axis=-1, keep_dims=True)
        centered = x - mean
        variance = (centered * centered).sum(axis=-1, keepdims=True) / (x.shape[-1] - 1)
        return g * centered / ops.sqrt(variance + eps) + b

    patch_backend(monkeypatch, "layer_norm", layer_norm)


def epsilon_outside_the_root(monkeypatch):
    """(x - mean) / (sqrt(var) + eps): epsilon added outside the square root."""
    def layer_norm(x, g, b, eps=1e-5):
        mean = x.mean(axis=-1, keep_dims=True)
        centered = x - mean
        variance = (centered * centered).mean(axis=-1, keep_dims=True)
        return g * centered / (ops.sqrt(variance) + eps) + b

    patch_backend(monkeypatch, "layer_norm", layer_norm)


def qkv_in_the_wrong_order(monkeypatch):
    """c_attn's output read as k, q, v instead of q, k, v."""
    original = ms_backend.layers.split_qkv

    def split_qkv(qkv, n_head):
        q, k, v = original(qkv, n_head)
        return k, q, v

    patch_backend(monkeypatch, "split_qkv", split_qkv)


def heads_reshaped_without_transpose(monkeypatch):
    """[B, T, C] -> [B, H, T, D] by a reshape alone (and back): heads mix positions."""
    def split_heads(x, n_head):
        B, T, C = x.shape
        return x.reshape(B, n_head, T, C // n_head)

    def merge_heads(x):
        B, H, T, D = x.shape
        return x.reshape(B, T, H * D)

    patch_backend(monkeypatch, "split_heads", split_heads)
    patch_backend(monkeypatch, "merge_heads", merge_heads)


def scores_scaled_by_1_over_d(monkeypatch):
    """Attention scores divided by D instead of sqrt(D)."""
    monkeypatch.setattr(ms_backend.layers, "math", SimpleNamespace(sqrt=lambda d: d))


def bias_added_twice(monkeypatch):
    """A Linear adds its bias twice (a Dense with has_bias=True plus a manual + b)."""
    def linear(x, w, b):
        out = ops.matmul(x.reshape(-1, x.shape[-1]), w) + b + b
        return out.reshape(x.shape[:-1] + (w.shape[-1],))

    patch_backend(monkeypatch, "linear", linear)


def softmax_over_the_wrong_axis(monkeypatch):
    """Attention weights normalised over the queries (axis -2) instead of the keys."""
    original = ms_backend.layers.softmax
    patch_backend(monkeypatch, "softmax", lambda x, axis=-1: original(x, axis=-2))


def no_ln_f(monkeypatch):
    """GPT-2 without its final LayerNorm (ported from GPT-1, which has none)."""
    after_init(monkeypatch, ms_backend.model.GPTModel,
               lambda model, *args, **kwargs: setattr(model, "ln_f", nn.Identity()) if model.has_ln_f else None)


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
    Variant("erf GELU", "layers", erf_gelu),
    Variant("LayerNorm eps 1e-7", "layers", epsilon_1e7),
    Variant("LayerNorm unbiased variance", "layers", unbiased_variance),
    Variant("LayerNorm eps outside the sqrt", "layers", epsilon_outside_the_root),
    Variant("q/k/v split in the wrong order", "layers", qkv_in_the_wrong_order),
    Variant("heads split by reshape alone", "layers", heads_reshaped_without_transpose),
    Variant("scores scaled by 1/D", "layers", scores_scaled_by_1_over_d),
    Variant("Linear bias added twice", "layers", bias_added_twice),
    Variant("softmax over the query axis", "layers", softmax_over_the_wrong_axis),
    Variant("GPT-2 without ln_f", "layers", no_ln_f, archs=("gpt2",)),
    Variant("causal mask off by one", "masks", mask_off_by_one),
    Variant("softmax without the max subtracted", "masks", softmax_without_the_max),
    Variant("float32 mask minimum cast to float16", "masks", float32_minimum_in_float16, amp="O3"),
    Variant("padding mask ignored", "masks", padding_mask_ignored),
    Variant("position ids without the cache offset", "positions", positions_without_offset),
    Variant("position ids ignore the left padding", "positions", positions_ignore_the_padding),
    Variant("graph step: wpe without the cache offset", "positions", static_positions_from_zero, mode="graph"),
    Variant("static cache written one slot late", "caches", static_cache_one_slot_late, mode="graph"),
]}


# -- the checks each variant must fail --------------------------------------------------------

def suite_report(variant: Variant, arch: str, monkeypatch):
    """run_parity on the small config of `arch`, with the variant applied, at its level and mode."""
    config = CONFIGS[arch]
    variant.apply(monkeypatch)
    return run_parity(config, probe_params(config, 0), IDS, amp_level=variant.amp, mode=variant.mode,
                      max_new_tokens=4)


def cli_run(capsys, args) -> tuple[int, dict | None]:
    """`gptspec parity ARGS --json` through the CLI entry point: (exit status, the JSON report)."""
    status = main(["parity", *args, "--json"])
    out = capsys.readouterr().out
    return status, (json.loads(out) if out.strip() else None)


def error_over_bound(row: dict) -> float:
    if not row["finite"]:
        return float("inf")
    return row["max_abs_err"] / row["allowed_abs_err"] if row["allowed_abs_err"] else float("inf")


def summarize(report: dict) -> dict:
    """The first failing check of a JSON report and its worst row by error / bound."""
    failing = [row["tensor"] for row in report["tensors"] if not row["passed"]]
    generation = report.get("generation")
    if generation and not generation["passed"]:
        failing.append(f"greedy generation (token {generation['first_divergence']})")
    failing += [f"{key}" for key, value in report.items()
                if isinstance(value, dict) and value.get("passed") is False and key != "generation"]
    worst = max(report["tensors"], key=error_over_bound)
    return {"first_failing": failing[0] if failing else None, "worst_tensor": worst["tensor"],
            "max_abs_err": worst["max_abs_err"], "allowed_abs_err": worst["allowed_abs_err"],
            "error_over_bound": error_over_bound(worst), "failing": failing}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """The small GPT-2 config as a checkpoint folder, for the CLI's --weights path."""
    folder = tmp_path_factory.mktemp("mutations-gpt2")
    weights.save(probe_params(CONFIGS["gpt2"], 0), CONFIGS["gpt2"], folder, format="safetensors")
    return str(folder)


def levels_and_modes(variants) -> list[tuple[str, str]]:
    return sorted({(v.amp, v.mode) for v in variants})


def check_the_unbroken_backend_passes(arch, amp, mode):
    config = CONFIGS[arch]
    report = run_parity(config, probe_params(config, 0), IDS, amp_level=amp, mode=mode, max_new_tokens=4)
    assert report.passed, report.table()


def variants_and_archs(variants) -> list[tuple[str, str]]:
    """(arch, variant name) for every architecture the bug exists in (GPT-1 has no ln_f)."""
    return [(arch, v.name) for v in variants for arch in v.archs]


def check_the_variant_fails_the_suite(variant, arch, monkeypatch):
    report = suite_report(variant, arch, monkeypatch)
    assert not report.passed, f"{variant.name} went unnoticed by run_parity:\n{report.table()}"


def check_the_variant_fails_the_cli(variant, capsys, args, monkeypatch):
    variant.apply(monkeypatch)
    status, report = cli_run(capsys, [*args, *variant.cli_args])
    summary = summarize(report) if report else None
    assert status == 1, f"{variant.name}: exit status {status} (1 expected); {summary}"
    assert not report["passed"]
    return summary


@pytest.mark.parametrize("amp, mode", levels_and_modes(VARIANTS.values()))
@pytest.mark.parametrize("arch", CONFIGS)
def test_the_unbroken_backend_passes(arch, amp, mode):
    check_the_unbroken_backend_passes(arch, amp, mode)


@pytest.mark.parametrize("amp, mode", levels_and_modes(VARIANTS.values()))
def test_the_unbroken_backend_passes_the_cli(capsys, tiny_checkpoint, amp, mode):
    status, report = cli_run(capsys, ["--weights", tiny_checkpoint, "--amp", amp, "--mode", mode])
    assert status == 0 and report["passed"], json.dumps(report, indent=1)


@pytest.mark.parametrize("arch, name", variants_and_archs(VARIANTS.values()))
def test_each_variant_fails_the_suite(arch, name, monkeypatch):
    check_the_variant_fails_the_suite(VARIANTS[name], arch, monkeypatch)


@pytest.mark.parametrize("name", VARIANTS)
def test_each_variant_fails_the_cli_on_a_small_checkpoint(capsys, tiny_checkpoint, name, monkeypatch):
    check_the_variant_fails_the_cli(VARIANTS[name], capsys, ["--weights", tiny_checkpoint], monkeypatch)


# The bugs whose effect shrinks as the model grows: the unbiased variance's 1/(2C), an epsilon
# next to a variance that grows with the activations, the erf-tanh gap at GELU's inputs.  The
# small configs cannot vouch for them at 124M, so the slow test runs the DEFAULT `gptspec parity`
# (random 124M, ~10 s each) for them.  The other bugs break a structure (an order, an axis, a
# mask, a position, a slot, a dtype, NaN on a padded row) whose effect does not shrink with C;
# `python -m parity_tests.test_parity_mutations` runs every variant in the default run.
SIZE_SENSITIVE = ("erf GELU", "LayerNorm eps 1e-7", "LayerNorm unbiased variance", "LayerNorm eps outside the sqrt")


@pytest.mark.slow
@pytest.mark.parametrize("name", SIZE_SENSITIVE)
def test_size_sensitive_variants_fail_the_default_run(capsys, name, monkeypatch):
    """The default `gptspec parity` (random 124M) at the variant's --amp/--mode."""
    check_the_variant_fails_the_cli(VARIANTS[name], capsys, [], monkeypatch)


# -- the table of issue 14: every variant in the default run ---------------------------------

def default_run_row(variant: Variant | None, cli_args: list[str]) -> dict:
    """`gptspec parity CLI_ARGS --json` (the default random 124M) with `variant` applied (None:
    the unbroken backend), summarized: exit status, first failing check, worst error / bound."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if variant is not None:
            variant.apply(monkeypatch)
        status = main(["parity", *cli_args, "--json"])
    if not out.getvalue().strip():
        return {"status": status, "first_failing": err.getvalue().strip()}
    return {"status": status, **summarize(json.loads(out.getvalue()))}


def print_default_run_table(variants) -> None:
    import time

    print("| variant | where | run | exit | first failing check | worst tensor | max abs err / allowed "
          "(= error/bound) | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    baselines = [None] + [v for v in variants]
    for variant in baselines:
        args = variant.cli_args if variant is not None else []
        runs = [(variant, args)] if variant is not None else [
            (None, a) for a in (["--amp", amp, "--mode", mode] for amp, mode in levels_and_modes(variants))]
        for v, cli_args in runs:
            start = time.perf_counter()
            row = default_run_row(v, cli_args)
            seconds = time.perf_counter() - start
            ratio = (f"{row['max_abs_err']:.3g} / {row['allowed_abs_err']:.3g} = {row['error_over_bound']:.3g}"
                     if "max_abs_err" in row else "")
            print(f"| {v.name if v else '(unbroken)'} | {v.where if v else ''} | gptspec parity {' '.join(cli_args)} "
                  f"| {row['status']} | {row['first_failing']} | {row.get('worst_tensor', '')} | {ratio} "
                  f"| {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    from parity_tests import test_parity_mutations_amp

    print_default_run_table([*VARIANTS.values(), *test_parity_mutations_amp.VARIANTS.values()])
