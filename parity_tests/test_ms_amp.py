"""Mixed precision (AMP O1/O2/O3, float16) against the float64 spec: within amp_bound, finite
everywhere (fully padded rows included), greedy tokens equal except at near ties."""
from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore", reason="the MindSpore backend needs the `mindspore` extra")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import ms_backend as M  # noqa: E402
import ref_numpy as R  # noqa: E402
from gptspec.compare import assert_close  # noqa: E402
from gptspec.tolerances import amp_bound, near_tie_gap  # noqa: E402

from .strategies import configs, left_padding_mask, model_for, token_batches  # noqa: E402

pytestmark = pytest.mark.mindspore

LEVELS = ("O1", "O2", "O3")


@pytest.mark.parametrize("level", LEVELS)
@settings(max_examples=10)  # x3 levels: each example builds and runs a model
@given(data=st.data(), config=configs(), seed=st.integers(0, 1000))
def test_amp_logits_stay_within_the_amp_bound_and_finite(level, data, config, seed):
    params = model_for(config, seed)
    ids = data.draw(token_batches(config, min_length=2))
    lengths = data.draw(st.lists(st.integers(1, ids.shape[1]), min_size=ids.shape[0], max_size=ids.shape[0]))
    mask = left_padding_mask(lengths, ids.shape[1])  # every row but the longest starts with padding
    model = M.GPTModel(config, params, amp_level=level)
    got, present = model.forward_numpy(ids, attention_mask=mask)
    assert np.isfinite(got).all(), "NaN/Inf in the logits (padding rows included)"
    assert all(np.isfinite(k).all() and np.isfinite(v).all() for k, v in present)
    want, _ = R.forward(config, params, ids, attention_mask=mask)
    assert_close(f"{level} logits", got, want, amp_bound(config, level, "float16"))


@pytest.mark.parametrize("level", LEVELS)
def test_amp_in_graph_mode_matches_the_spec_and_generates_its_greedy_tokens(level):
    config = R.GPTConfig(arch="gpt2", n_vocab=64, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
    params = model_for(config, 5)
    prompt = np.random.default_rng(5).integers(0, 64, (2, 5))
    mask = left_padding_mask([5, 2], 5)
    model = M.GPTModel(config, params, amp_level=level, mode="graph")
    got, _ = model.forward_numpy(prompt, attention_mask=mask)
    assert np.isfinite(got).all()
    bound = amp_bound(config, level, "float16")
    assert_close(f"{level} graph logits", got, R.forward(config, params, prompt, attention_mask=mask)[0], bound)
    out = M.generate(config, model, prompt, 6, greedy=True, attention_mask=mask)
    for row in range(2):  # each step's token must be the spec's argmax unless the top two nearly tie
        tokens = out[row, 5 - mask[row].sum():]
        for t in range(mask[row].sum(), len(tokens)):
            logits = R.forward(config, params, tokens[None, :t])[0][0, -1]
            top_two = np.sort(logits)[-2:]
            if tokens[t] != np.argmax(logits):
                assert top_two[1] - top_two[0] <= near_tie_gap(bound, logits), f"row {row}, step {t}"


def test_fully_padded_rows_stay_finite_in_float16_with_large_scores():
    """Masked scores use float16's finite minimum: with -1e10 or finfo(float32).min cast to
    float16 they would be -inf, and a fully masked row NaN."""
    q = ms.Tensor(np.full((1, 1, 2, 4), 30.0, np.float16))
    mask = ms.Tensor(np.array([[[[False, False], [True, True]]]]))
    out, weights = M.attention(q, q, q, mask)
    assert np.isfinite(out.asnumpy()).all()
    np.testing.assert_array_equal(weights.asnumpy()[0, 0, 0], [0.5, 0.5])  # uniform, as in the spec
