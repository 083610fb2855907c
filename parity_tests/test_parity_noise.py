"""The measured reference of issue 14: the spec at the backend's precision (float32, or an AMP
level's casts emulated in NumPy by gptspec.emulate) against the float64 spec gives the rounding
noise of this model and input; a backend may err NOISE_MULTIPLE times that, and a porting bug with
a 1e-5 relative effect on one traced tensor -- far inside the derived bounds -- fails."""
from __future__ import annotations

import numpy as np
import pytest

import ref_numpy as R
from gptspec import tolerances as tol
from gptspec.compare import assert_close
from gptspec.emulate import POLICIES, emulated_forward, low_matmul
from gptspec.parity import compare_traces, padded_batch, probe_params

CONFIGS = {arch: R.GPTConfig(arch=arch, n_vocab=61, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
           for arch in ("gpt1", "gpt2")}
IDS = np.random.default_rng(5).integers(0, 61, size=10)


def test_noise_bound_is_the_multiple_of_the_measured_noise_with_a_floor():
    reference = np.array([[2.0, -4.0], [0.5, 1.0]])
    u = tol.unit_roundoff("float32")
    noisy = reference + np.array([[0.0, 1e-5], [0.0, 0.0]])
    assert tol.noise_bound(noisy, reference, "float32").value == pytest.approx(tol.NOISE_MULTIPLE * 1e-5)
    assert tol.noise_bound(noisy, reference, "float32").allowed(reference * 100) == pytest.approx(8e-5), "absolute"
    # An exact result (noise 0 by luck) is floored at NOISE_FLOOR_ROUNDINGS u max|reference|.
    floor = tol.NOISE_FLOOR_ROUNDINGS * u * 4.0
    assert tol.noise_bound(reference, reference, "float32").value == pytest.approx(tol.NOISE_MULTIPLE * floor)
    assert tol.noise_floor(reference, "float16") == pytest.approx(tol.NOISE_FLOOR_ROUNDINGS * 2.0 ** -11 * 4.0)
    # The floor's dtype defaults to the one the emulated tensor was computed in (at O1 the softmax
    # weights are float32 while the matmuls are float16): exact values, so the floor is all there is.
    assert tol.noise_bound(reference.astype(np.float16), reference).value == pytest.approx(
        tol.NOISE_MULTIPLE * tol.noise_floor(reference, "float16"))
    assert tol.noise_bound(reference.astype(np.float32), reference).value == pytest.approx(tol.NOISE_MULTIPLE * floor)


@pytest.mark.parametrize("arch", CONFIGS)
def test_emulation_at_o0_is_the_float32_spec_and_leaves_the_spec_untouched(arch):
    config = CONFIGS[arch]
    params = probe_params(config, 0)
    functions = (R.layers.linear, R.layers.gelu, R.layers.layer_norm, R.layers.attention, R.model.embed,
                 R.model.layer_norm, R.model.lm_head)
    spec, emulated = {}, {}
    R.forward(config, params, IDS, trace=spec)
    emulated_forward(config, params, IDS, amp_level="O0", trace=emulated)
    assert all(np.array_equal(spec[name], emulated[name]) for name in spec), "O0 is the spec in float32, bit for bit"
    emulated_forward(config, params, IDS, amp_level="O2", trace={})
    assert functions == (R.layers.linear, R.layers.gelu, R.layers.layer_norm, R.layers.attention, R.model.embed,
                         R.model.layer_norm, R.model.lm_head), "every replaced spec function is restored"
    again = {}
    R.forward(config, params, IDS, trace=again)
    assert all(np.array_equal(spec[name], again[name]) for name in spec)


def test_a_float16_matmul_accumulates_in_float32():
    ones = np.ones((1, 4096), np.float32)
    assert low_matmul(ones, ones.T, np.dtype(np.float16))[0, 0] == 4096  # a float16 sum would stop at 2048
    assert low_matmul(ones, ones.T, np.dtype(np.float16)).dtype == np.float16


@pytest.mark.parametrize("level", ["O1", "O2", "O3"])
@pytest.mark.parametrize("arch", CONFIGS)
def test_each_level_rounds_where_its_policy_says_and_stays_within_its_derived_bound(arch, level):
    """The emulated level's tensors carry the policy's dtypes (attention weights: the softmax's;
    attn/mlp/out/embed: the element-wise dtype; logits: the logits'), and it is an honest AMP
    computation: every tensor within amp_bound of the float64 spec, padded row included."""
    config = CONFIGS[arch]
    params = probe_params(config, 0)
    ids, mask = padded_batch(IDS, 3)
    emulated, reference = {}, {}
    emulated_forward(config, params, ids, amp_level=level, attention_mask=mask, trace=emulated)
    R.forward(config, R.cast_params(params, np.float64), ids, attention_mask=mask, trace=reference)
    policy = POLICIES[level]
    assert emulated["blocks.0.attn_weights"].dtype == policy.norm
    for name in ("embed", "blocks.0.attn", "blocks.1.mlp", "blocks.1.out"):
        assert emulated[name].dtype == policy.elementwise, name
    assert emulated["logits"].dtype == policy.logits
    failed = [row.describe() for row in compare_traces(config, reference, emulated, amp_level=level) if not row.passed]
    assert not failed, "\n".join(failed)


def test_the_float32_noise_of_the_default_config_sits_far_below_the_derived_bound():
    """Why the measured reference exists: on the small config the float32 spec's own error on the
    logits is >100x below forward_bound, and on every tensor the noise bound is the tighter one."""
    config = CONFIGS["gpt2"]
    params = probe_params(config, 0)
    emulated, reference = {}, {}
    R.forward(config, params, IDS, trace=emulated)
    R.forward(config, R.cast_params(params, np.float64), IDS, trace=reference)
    for name in reference:
        noise = tol.noise_bound(emulated[name], reference[name], "float32")
        derived = tol.forward_bound(config, "float32", tol.trace_depth(config, name))
        assert noise.value < derived.allowed(reference[name]), name
        if name == "logits":
            assert noise.value / tol.NOISE_MULTIPLE < derived.allowed(reference[name]) / 100
        assert_close(name, emulated[name], reference[name], noise)  # the spec holds its own noise bound


# -- the MindSpore backend ---------------------------------------------------------------------


def _perturb(monkeypatch, where: str, relative: float):
    """Scale one traced tensor of the backend by (1 + relative): a porting bug of that size."""
    layers = pytest.importorskip("ms_backend.layers")
    model = pytest.importorskip("ms_backend.model")
    cell, method = {"embed": (model.GPTModel, "embed"), "attn": (layers.MHA, "construct"),
                    "mlp": (layers.MLP, "construct")}[where]
    original = getattr(cell, method)

    def perturbed(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if isinstance(out, tuple):
            return (out[0] * (1 + relative),) + out[1:]
        return out * (1 + relative)

    monkeypatch.setattr(cell, method, perturbed)


@pytest.mark.mindspore
@pytest.mark.parametrize("arch", CONFIGS)
def test_the_unbroken_backend_holds_the_noise_bound_at_every_level(arch):
    pytest.importorskip("ms_backend", reason="mindspore extra not installed")
    from gptspec.parity import run_parity

    config = CONFIGS[arch]
    for level in tol.AMP_LEVELS:
        report = run_parity(config, probe_params(config, 0), IDS, amp_level=level, max_new_tokens=0)
        assert report.passed, "\n".join(report.failures())
        assert all(row.noise_bound is not None for row in report.rows)
        assert report.slack()["worst_error_over_noise"] <= tol.NOISE_MULTIPLE


@pytest.mark.mindspore
@pytest.mark.parametrize("where", ["embed", "attn", "mlp"])
@pytest.mark.parametrize("arch", CONFIGS)
def test_a_1e_5_relative_bug_in_one_traced_tensor_fails_the_noise_check(arch, where, monkeypatch):
    """Inside every derived bound (err/bound << 1), beyond NOISE_MULTIPLE x the measured noise."""
    pytest.importorskip("ms_backend", reason="mindspore extra not installed")
    from gptspec.parity import run_parity

    config = CONFIGS[arch]
    _perturb(monkeypatch, where, 1e-5)
    report = run_parity(config, probe_params(config, 0), IDS, max_new_tokens=0)
    assert not report.passed
    name = {"embed": "embed", "attn": "blocks.0.attn", "mlp": "blocks.0.mlp"}[where]
    row = next(row for row in report.rows if row.name == name)
    assert row.bound_ratio < 1, "the derived bound alone lets it through"
    assert row.noise_ratio > tol.NOISE_MULTIPLE, row.describe()
