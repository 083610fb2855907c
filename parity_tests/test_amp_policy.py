"""The AMP policy is checked by the dtype each operation actually runs in: ms_backend's Cells
record the dtypes of the tensors they hand to and get back from each operation
(ms_backend.amp.record_dtypes), and run_parity compares them with amp.py's table.  An error bound
cannot see a violation (softmax in float16 at O2 moves the error no further than reordering)."""
from __future__ import annotations

import numpy as np
import pytest

import ref_numpy as R
from gptspec.parity import PolicyCheck, policy_checks, probe_params, run_parity

pytest.importorskip("mindspore", reason="mindspore extra not installed")
ms_backend = pytest.importorskip("ms_backend", reason="mindspore extra not installed")
pytestmark = pytest.mark.mindspore

import mindspore as ms  # noqa: E402  (after the importorskip)

from ms_backend import amp  # noqa: E402
from ms_backend.layers import gelu, linear  # noqa: E402

CONFIGS = {arch: R.GPTConfig(arch=arch, n_vocab=29, n_ctx=8, n_embd=16, n_head=2, n_layer=2)
           for arch in ("gpt1", "gpt2")}
IDS = np.array([3, 1, 4, 1, 5, 9])


def recorded(config, level, mode="pynative"):
    model = ms_backend.GPTModel(config, probe_params(config, 0), amp_level=level, mode=mode)
    with amp.record_dtypes() as log:
        model.forward_numpy(IDS, trace={})
    return log


@pytest.mark.parametrize("level", amp.AMP_LEVELS)
@pytest.mark.parametrize("arch", CONFIGS)
def test_every_operation_is_recorded_in_its_levels_dtype(arch, level):
    config = CONFIGS[arch]
    log = recorded(config, level)
    checks = policy_checks(config, level, None, log)
    assert [c.operation for c in checks] == list(amp.OPERATION_PRECISION)
    assert all(c.passed for c in checks), [c.describe() for c in checks if not c.passed]
    low = "float32" if level == "O0" else "float16"
    elementwise = {op: low for op in ("matmul", "bias_add", "gelu", "residual", "embed")}
    expected = {"O0": {}, "O1": {"matmul": low}, "O2": elementwise,
                "O3": {op: low for op in amp.OPERATION_PRECISION}}[level]
    for check in checks:
        assert check.observed == [expected.get(check.operation, "float32")], check.describe()


def test_nothing_is_recorded_outside_record_dtypes_or_by_a_compiled_graph():
    config = CONFIGS["gpt2"]
    model = ms_backend.GPTModel(config, probe_params(config, 0), mode="graph")
    model.forward_numpy(IDS)  # compiles while no log is active
    with amp.record_dtypes() as log:
        model.forward_numpy(IDS)  # the compiled static step: the record calls are not in the graph
    assert log == []
    assert amp._dtype_log is None


def test_a_policy_check_names_the_operation_the_dtype_and_a_missing_record():
    wrong = PolicyCheck("softmax", "float32", ["float16"], 2, 2)
    assert not wrong.passed and "softmax must run in float32, ran in float16" in wrong.describe()
    missing = PolicyCheck("gelu", "float16", ["float16"], 1, 2)
    assert not missing.passed and "recorded 1 times, expected 2" in missing.describe()
    assert PolicyCheck("gelu", "float16", ["float16"], 2, 2).passed


def softmax_in_float16(monkeypatch):
    """O2 keeps softmax in float32; this MHA normalises in the matmul's float16."""
    original = ms_backend.layers.MHA.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.softmax_dtype = self.matmul_dtype

    monkeypatch.setattr(ms_backend.layers.MHA, "__init__", init)


def bias_add_in_float16(monkeypatch):
    """O1 adds the bias in float32; this Linear adds it in float16 and promotes afterwards (it
    still records honestly what it computed in)."""
    def construct(self, x):
        low = self.matmul_dtype
        x, w = amp.to(x, low), amp.to(self.w, low)
        out = linear(x, w, amp.to(self.b, low))
        amp.record_dtype("matmul", x, w)
        amp.record_dtype("bias_add", out)
        return amp.to(out, self.bias_dtype)

    monkeypatch.setattr(ms_backend.layers.Linear, "construct", construct)


def gelu_in_float32_at_o3(monkeypatch):
    """The reverse: O3 runs GELU in float16; this MLP promotes it to float32."""
    def construct(self, x):
        h = gelu(self.c_fc(x).astype(ms.float32))
        amp.record_dtype("gelu", h)
        return self.c_proj(h)

    monkeypatch.setattr(ms_backend.layers.MLP, "construct", construct)


def mlp_without_recording(monkeypatch):
    """A future Cell that computes without recording: the count of GELU records falls short."""
    monkeypatch.setattr(ms_backend.layers.MLP, "construct", lambda self, x: self.c_proj(gelu(self.c_fc(x))))


@pytest.mark.parametrize("violation, level, operation, arch", [
    (softmax_in_float16, "O2", "softmax", "gpt2"),
    (bias_add_in_float16, "O1", "bias_add", "gpt1"),
    (gelu_in_float32_at_o3, "O3", "gelu", "gpt2"),
    (mlp_without_recording, "O2", "gelu", "gpt1"),
])
def test_a_policy_violation_fails_parity(violation, level, operation, arch, monkeypatch):
    config = CONFIGS[arch]
    violation(monkeypatch)
    report = run_parity(config, probe_params(config, 0), IDS, amp_level=level, max_new_tokens=0)
    assert not report.passed
    failing = [check.operation for check in report.policy if not check.passed]
    assert failing == [operation], report.failures()
    assert all(row.passed for row in report.rows), "the error stays within both bounds: only the dtype shows it"
    assert any(line.startswith("FAIL dtype policy") for line in report.failures())
    assert report.to_json()["dtype_policy"][list(amp.OPERATION_PRECISION).index(operation)]["passed"] is False
    assert "dtype policy" in report.table() and f"{operation} must run in" in report.table()
