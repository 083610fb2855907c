"""`gptspec parity --train` (gptspec/train_parity.py) on the shipped backends: the loss, every
gradient, the grad norm and one clipped AdamW update against the float64 spec, and under float16
an injected overflow that must be skipped.  The spec backend and the protocol's bad answers are in
test_backend_protocol.py."""
from __future__ import annotations

import numpy as np
import pytest

import ref_numpy as R
from gptspec.backend import make_backend
from gptspec.parity import probe_params
from gptspec.train_parity import run_train_parity

PROMPT = np.random.default_rng(5).integers(0, 61, size=12)


def config(arch):
    return R.GPTConfig(arch=arch, n_vocab=61, n_ctx=16, n_embd=32, n_head=4, n_layer=2)


def report_of(spec, arch, options, head=None):
    cfg = config(arch)
    params = probe_params(cfg, 0)
    report = run_train_parity(cfg, params, make_backend(spec, cfg, params, options), PROMPT, head_classes=head)
    assert report.passed, "\n".join(report.failures())
    names = [row.name for row in report.rows]
    n_params = len(R.flatten_params(params))
    assert sum(name.startswith("param after 1 step ") for name in names) == n_params, names
    return report


@pytest.mark.mindspore
@pytest.mark.parametrize("arch, amp_level", [("gpt2", "O0"), ("gpt1", "O2")])
def test_mindspore_training_parity_and_the_injected_overflow(arch, amp_level):
    pytest.importorskip("mindspore", reason="the mindspore extra is not installed")
    report = report_of("mindspore", arch, {"amp_level": amp_level}, head=3 if arch == "gpt1" else None)
    overflow = [check for check in report.checks if check.name == "injected overflow"]
    assert len(overflow) == (amp_level != "O0"), report.checks
    assert all("bit-identical" in check.detail and "(halved)" in check.detail for check in overflow)


@pytest.mark.oracle
@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_hf_training_parity(arch):
    pytest.importorskip("transformers", reason="the oracle extra is not installed")
    report = report_of("hf", arch, {}, head=2)
    assert not report.checks and any("update: AdamW" in note for note in report.notes)
