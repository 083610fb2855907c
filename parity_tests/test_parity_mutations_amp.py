"""AMP policy violations: a backend that computes an operation in another dtype than its level's
policy (ms_backend/amp.py's table) says.  Measured (issue 14): such a violation moves the error
no further than an honest reordering does, so it is the dtype each operation runs in, not an error
bound, that must catch it.  Each variant must fail the suite and `gptspec parity --amp LEVEL`,
as the bugs of test_parity_mutations.py (whose checks these tests share) do.
"""
from __future__ import annotations

import pytest

pytest.importorskip("mindspore", reason="mindspore extra not installed")
ms_backend = pytest.importorskip("ms_backend", reason="mindspore extra not installed")
pytestmark = pytest.mark.mindspore

import mindspore as ms  # noqa: E402  (after the importorskip)

from ms_backend.amp import record_dtype, to  # noqa: E402
from ms_backend.layers import linear  # noqa: E402

from .test_parity_mutations import (UNBROKEN_RUNS, Variant, after_init, check_the_variant_fails_the_cli,  # noqa: E402
                                    check_the_variant_fails_the_suite, levels_and_modes, variants_and_archs)
from .test_parity_mutations import tiny_checkpoint  # noqa: E402,F401  (the fixture, used here too)


def bias_add_in_low_precision(monkeypatch):
    """O1: the bias cast to the matmul's float16 and added there; the sum is cast to float32
    afterwards, so the Linear still hands float32 on, as O1 says.  (The Cell's dtype records sit
    where the unbroken Linear has them: a port with this bug would carry them too.)"""
    def construct(self, x):
        x, w = to(x, self.matmul_dtype), to(self.w, self.matmul_dtype)
        w = record_dtype("matmul", x, w)
        out = record_dtype("bias_add", linear(x, w, to(self.b, self.matmul_dtype)))
        return to(out, self.bias_dtype)

    monkeypatch.setattr(ms_backend.layers.Linear, "construct", construct)


def softmax_in_low_precision(monkeypatch):
    """O2: the attention softmax in float16 (O2 keeps softmax in float32)."""
    after_init(monkeypatch, ms_backend.layers.MHA,
               lambda cell, *args, **kwargs: setattr(cell, "softmax_dtype", cell.matmul_dtype))


def layer_norm_in_low_precision(monkeypatch):
    """O2: LayerNorm normalises in float16 (O2 keeps it in float32)."""
    def change(cell, params, eps, precision, out_dtype=None):
        cell.norm_dtype = precision.elementwise

    after_init(monkeypatch, ms_backend.layers.LayerNorm, change)


def logits_in_low_precision(monkeypatch):
    """O2: the tied-embedding logits matmul in float16 (O2 keeps the logits in float32)."""
    def change(model, *args, **kwargs):
        model.logits_dtype = model.elementwise_dtype

    after_init(monkeypatch, ms_backend.model.GPTModel, change)


def residual_in_float32(monkeypatch):
    """O3, the reverse violation: the residual adds promote to float32 (O3 runs every element-wise
    operation in float16), so the residual stream leaves the level's dtype."""
    def gpt2_construct(self, x, mask, past=None, cache_write=None, drops=None):
        assert drops is None, "parity runs without dropout"
        a, present, weights = self.attn(self.ln_1(x), mask, past, cache_write)
        x = record_dtype("residual", to(x, ms.float32) + to(a, ms.float32))
        m = self.mlp(self.ln_2(x))
        x = record_dtype("residual", x + to(m, ms.float32))
        return x, present, (a, weights, m)

    def gpt1_construct(self, x, mask, past=None, cache_write=None, drops=None):
        assert drops is None, "parity runs without dropout"
        a, present, weights = self.attn(x, mask, past, cache_write)
        n = self.ln_1(record_dtype("residual", to(x, ms.float32) + to(a, ms.float32)))
        m = self.mlp(n)
        h = self.ln_2(record_dtype("residual", to(n, ms.float32) + to(m, ms.float32)))
        return h, present, (a, weights, m)

    monkeypatch.setattr(ms_backend.layers.GPT2Block, "construct", gpt2_construct)
    monkeypatch.setattr(ms_backend.layers.GPT1Block, "construct", gpt1_construct)


VARIANTS = {v.name: v for v in [
    Variant("O1: bias add in float16", "AMP policy", bias_add_in_low_precision, amp="O1"),
    Variant("O2: softmax in float16", "AMP policy", softmax_in_low_precision, amp="O2"),
    Variant("O2: LayerNorm in float16", "AMP policy", layer_norm_in_low_precision, amp="O2"),
    Variant("O2: logits in float16", "AMP policy", logits_in_low_precision, amp="O2"),
    Variant("O3: residual adds in float32", "AMP policy", residual_in_float32, amp="O3"),
]}


def test_the_unbroken_runs_cover_these_variants():
    """The unbroken backend passes at these levels and modes: test_parity_mutations.UNBROKEN_RUNS."""
    assert set(levels_and_modes(VARIANTS.values())) <= set(UNBROKEN_RUNS)


@pytest.mark.parametrize("arch, name", variants_and_archs(VARIANTS.values()))
def test_each_amp_violation_fails_the_suite(arch, name, monkeypatch):
    check_the_variant_fails_the_suite(VARIANTS[name], arch, monkeypatch)


@pytest.mark.parametrize("name", VARIANTS)
def test_each_amp_violation_fails_the_cli_on_a_small_checkpoint(capsys, tiny_checkpoint, name, monkeypatch):
    check_the_variant_fails_the_cli(VARIANTS[name], capsys, ["--weights", tiny_checkpoint], monkeypatch)
