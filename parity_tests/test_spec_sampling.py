"""Logits processors, the seeded draw, and generation's stopping rules."""
from __future__ import annotations

import numpy as np
import pytest

import ref_numpy as R
from gptspec.tolerances import op_bound

LOGITS = np.log(np.array([[0.5, 0.2, 0.2, 0.06, 0.04]]))


def kept(logits):
    return np.isfinite(logits[0]).nonzero()[0].tolist()


def test_temperature_sharpens_and_flattens():
    p1 = R.processed_probs(LOGITS, temperature=1.0)
    np.testing.assert_allclose(p1, [[0.5, 0.2, 0.2, 0.06, 0.04]], rtol=op_bound(np.float64, 16).value)  # log, exp, sum
    assert R.processed_probs(LOGITS, temperature=0.5)[0, 0] > 0.5 > R.processed_probs(LOGITS, temperature=2)[0, 0]


def test_top_k_keeps_ties_at_the_kth_value():
    assert kept(R.top_k_filter(LOGITS, 1)) == [0]
    assert kept(R.top_k_filter(LOGITS, 2)) == [0, 1, 2]  # 0.2 and 0.2 tie for second place
    assert kept(R.top_k_filter(LOGITS, 3)) == [0, 1, 2]
    assert kept(R.top_k_filter(LOGITS, 99)) == [0, 1, 2, 3, 4]


def test_top_p_conventions_differ_by_the_crossing_token():
    # cumulative mass in order: 0.5, 0.7, 0.9, 0.96, 1.0
    assert kept(R.top_p_filter(LOGITS, 0.6, "hf")) == [0, 1]  # smallest set with mass >= 0.6
    assert kept(R.top_p_filter(LOGITS, 0.6, "openai")) == [0]  # largest prefix with mass <= 0.6
    assert kept(R.top_p_filter(LOGITS, 0.3, "hf")) == [0]
    assert kept(R.top_p_filter(LOGITS, 0.3, "openai")) == [0]  # always at least one token
    assert kept(R.top_p_filter(LOGITS, 0.75, "openai")) == [0, 1, 2]  # ...plus ties with the last kept
    with pytest.raises(ValueError, match="convention"):
        R.top_p_filter(LOGITS, 0.5, "torch")


def test_draw_is_inverse_cdf_and_never_picks_a_zero_probability_token():
    probs = np.array([[0.0, 0.25, 0.0, 0.75, 0.0]] * 4)
    tokens = R.draw(probs, np.array([0.0, 0.2499, 0.25, 0.9999]))
    assert tokens.tolist() == [1, 1, 3, 3]


def test_greedy_picks_the_lowest_id_among_ties():
    rng = np.random.default_rng(0)
    assert R.next_tokens(np.array([[1.0, 3.0, 3.0]]), rng, greedy=True).tolist() == [1]
    assert R.next_tokens(np.array([[1.0, 3.0, 3.0]]), rng, temperature=0).tolist() == [1]


CONFIG = R.GPTConfig(n_vocab=13, n_ctx=10, n_embd=8, n_head=2, n_layer=1)
PARAMS = R.init_params(CONFIG, 5, random_biases=True)


def test_rows_stop_at_eos_and_generation_ends_when_all_have():
    ids = np.array([[1, 2], [3, 4]])
    free = R.generate(CONFIG, PARAMS, ids, 6, seed=1)
    eos = int(free[0, 2])  # the first token row 0 produces: row 0 stops at once
    out = R.generate(CONFIG, PARAMS, ids, 6, seed=1, eos_id=eos)
    row1_stop = [t for t in range(2, free.shape[1]) if free[1, t] == eos]
    assert np.all(out[0, 2:] == eos)
    if row1_stop:  # generation ended right after both rows hit eos
        assert out.shape[1] == max(3, row1_stop[0] + 1)
    else:
        np.testing.assert_array_equal(out[1], free[1])


def test_zero_new_tokens_and_1d_prompts():
    assert R.generate(CONFIG, PARAMS, [1, 2], 0).tolist() == [1, 2]
    assert R.generate(CONFIG, PARAMS, [1, 2], 3, greedy=True).shape == (5,)
    assert R.generate(CONFIG, PARAMS, [[1, 2]], 3, greedy=True).shape == (1, 5)


def test_different_seeds_give_different_samples_somewhere():
    outs = {tuple(R.generate(CONFIG, PARAMS, [1, 2], 8, seed=s, temperature=2.0).tolist()) for s in range(10)}
    assert len(outs) > 1
