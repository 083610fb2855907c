"""The 124M GPT-2 config (random weights, GPT-2's initialisation): fp32 against the float64
spec, the KV cache, and AMP.  The float64 reference is computed once for the module."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mindspore", reason="the MindSpore backend needs the `mindspore` extra")

import ms_backend as M  # noqa: E402
import ref_numpy as R  # noqa: E402
from gptspec.compare import assert_close  # noqa: E402
from gptspec.tolerances import MS_FLOAT32_124M_ABSOLUTE, amp_bound, forward_bound, reorder_bound  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.mindspore]

CONFIG = R.GPTConfig.from_name("gpt2")
IDS = np.random.default_rng(0).integers(0, CONFIG.n_vocab, (1, 24))


@pytest.fixture(scope="module")
def reference():
    """float64 params (GPT-2 init from float32 draws) and their float64 logits."""
    params = R.init_params(CONFIG, 0, dtype=np.float64)
    return params, R.forward(CONFIG, params, IDS)[0]


def test_fp32_logits_match_the_float64_spec_and_the_cache(reference):
    params, want = reference
    model = M.GPTModel(CONFIG, params)
    got, _ = model.forward_numpy(IDS)
    result = assert_close("124M fp32 logits", got, want, forward_bound(CONFIG, "float32"))
    print(result.describe())
    print(assert_close("124M fp32 logits (absolute requirement)", got, want, MS_FLOAT32_124M_ABSOLUTE).describe())
    _, past = model.forward_numpy(IDS[:, :20])
    rest, _ = model.forward_numpy(IDS[:, 20:], past=past)
    assert_close("124M cached logits", rest, got[:, 20:], reorder_bound(CONFIG, "float32"))


@pytest.mark.parametrize("level", ["O1", "O2", "O3"])
def test_amp_logits_are_finite_and_within_the_amp_bound(reference, level):
    params, want = reference
    got, _ = M.GPTModel(CONFIG, params, amp_level=level).forward_numpy(IDS)
    assert np.isfinite(got).all()
    print(assert_close(f"124M {level} float16 logits", got, want, amp_bound(CONFIG, level, "float16")).describe())
