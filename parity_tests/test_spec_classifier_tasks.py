"""ref_numpy's GPT-1 similarity and multiple-choice tasks: similarity_logits /
similarity_loss_and_grads (both orders, classify states summed) and init_choice_head / choice_logits /
choice_loss_and_grads (one score per answer row, softmax over an example's answers) -- finite
differences over params and head (both archs, padding, dropout), the parts against the spec's
cross_entropy and classifier, symmetry, permutation, bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ref_numpy as R
from gptspec.compare import assert_close
from gptspec.tolerances import forward_bound, reorder_bound

from .strategies import configs, model_for
from .test_spec_backward import directional_check
from .test_spec_classifier import classify_batch, combined, random_head, split

seeds = st.integers(0, 2**32 - 1)
small_configs = configs(max_layers=2, max_heads=2, max_head_dim=4, max_ctx=8, max_vocab=16)
sides = st.sampled_from(["none", "left", "right"])


def pair_batch(config, B, side, rng, n_classes=3):
    """Two padded batches of the same shape (each with its own lengths), positions, labels."""
    ids_ab, mask_ab, clf_ab, labels = classify_batch(config, B, side, rng, n_classes)
    T = ids_ab.shape[1]
    ids_ba = rng.integers(0, config.n_vocab, (B, T))
    if mask_ab is None:
        mask_ba, clf_ba = None, rng.integers(0, T, B)
    else:
        lengths = rng.integers(2, T + 1, B)
        slots = np.arange(T)[None, :]
        real = (slots >= T - lengths[:, None]) if side == "left" else (slots < lengths[:, None])
        mask_ba, clf_ba = real.astype(np.int64), np.array([rng.choice(np.flatnonzero(r)) for r in real])
    return ids_ab, ids_ba, mask_ab, mask_ba, clf_ab, clf_ba, labels


def choice_batch(config, E, N, side, rng):
    ids, mask, positions, _ = classify_batch(config, E * N, side, rng)
    return ids, mask, positions, rng.integers(0, N, E)


@given(small_configs, st.integers(1, 3), sides, st.sampled_from([0.0, 0.5]), st.sampled_from([0.0, 0.1]), seeds)
def test_similarity_loss_matches_finite_differences(config, B, side, lm_coef, dropout, seed):
    rng = np.random.default_rng(seed)
    params, head = model_for(config, seed % 1000), random_head(config, seed % 1000)
    ids_ab, ids_ba, mask_ab, mask_ba, clf_ab, clf_ba, labels = pair_batch(config, B, side, rng)
    kwargs = dict(attention_mask_ab=mask_ab, attention_mask_ba=mask_ba, lm_coef=lm_coef, dropout=dropout, seed=seed)
    _, grads, head_grads = R.similarity_loss_and_grads(config, params, head, ids_ab, ids_ba, labels, clf_ab, clf_ba,
                                                       **kwargs)

    def loss_at(flat):
        value = R.similarity_loss_and_grads(config, *split(flat), ids_ab, ids_ba, labels, clf_ab, clf_ba,
                                            **kwargs)[0]
        return value, abs(value)

    directional_check(f"similar {config.arch} {side} lm_coef={lm_coef}", loss_at, combined(params, head),
                      combined(grads, head_grads), forward_bound(config, np.float64).value, rng)


@given(small_configs, st.integers(1, 2), st.integers(2, 3), sides, st.sampled_from([0.0, 0.5]),
       st.sampled_from([0.0, 0.1]), seeds)
def test_choice_loss_matches_finite_differences(config, E, N, side, lm_coef, dropout, seed):
    rng = np.random.default_rng(seed)
    params, head = model_for(config, seed % 1000), random_head(config, seed % 1000, n_classes=1)
    head["b"] = head["b"][:1]
    ids, mask, positions, labels = choice_batch(config, E, N, side, rng)
    kwargs = dict(attention_mask=mask, lm_coef=lm_coef, dropout=dropout, seed=seed)
    _, grads, head_grads = R.choice_loss_and_grads(config, params, head, ids, labels, positions, N, **kwargs)

    def loss_at(flat):
        value = R.choice_loss_and_grads(config, *split(flat), ids, labels, positions, N, **kwargs)[0]
        return value, abs(value)

    directional_check(f"choice {config.arch} {side} lm_coef={lm_coef}", loss_at, combined(params, head),
                      combined(grads, head_grads), forward_bound(config, np.float64).value, rng)


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_similarity_is_symmetric_and_is_the_sum_of_the_two_rows(arch):
    """Swapping a and b gives the same logits (the model's rows differ only in their batch slot);
    the logits are the head on h_ab + h_ba, h read by classifier_logits with an identity head."""
    config = R.GPTConfig(arch=arch, n_vocab=23, n_ctx=12, n_embd=16, n_head=4, n_layer=2)
    params, head = model_for(config, 3), random_head(config, 3)
    ids_ab, ids_ba, mask_ab, mask_ba, clf_ab, clf_ba, labels = pair_batch(config, 3, "right",
                                                                          np.random.default_rng(3))
    logits = R.similarity_logits(config, params, head, ids_ab, ids_ba, clf_ab, clf_ba,
                                 attention_mask_ab=mask_ab, attention_mask_ba=mask_ba)
    swapped = R.similarity_logits(config, params, head, ids_ba, ids_ab, clf_ba, clf_ab,
                                  attention_mask_ab=mask_ba, attention_mask_ba=mask_ab)
    assert_close(f"{arch} swapped-pair logits", swapped, logits, reorder_bound(config, np.float64))
    identity = {"w": np.eye(config.n_embd), "b": np.zeros(config.n_embd)}
    h_ab = R.classifier_logits(config, params, identity, ids_ab, clf_ab, attention_mask=mask_ab)
    h_ba = R.classifier_logits(config, params, identity, ids_ba, clf_ba, attention_mask=mask_ba)
    assert_close(f"{arch} logits vs (h_ab + h_ba) @ w + b", logits, (h_ab + h_ba) @ head["w"] + head["b"],
                 reorder_bound(config, np.float64))
    loss, _, _ = R.similarity_loss_and_grads(config, params, head, ids_ab, ids_ba, labels, clf_ab, clf_ba,
                                             attention_mask_ab=mask_ab, attention_mask_ba=mask_ba, lm_coef=0)
    assert abs(loss - R.cross_entropy(logits, labels)) <= reorder_bound(config, np.float64).allowed(loss)


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_permuting_the_answers_permutes_the_scores(arch):
    config = R.GPTConfig(arch=arch, n_vocab=23, n_ctx=12, n_embd=16, n_head=4, n_layer=2)
    params = model_for(config, 4)
    head = {"w": np.random.default_rng(4).standard_normal((16, 1)), "b": np.array([0.3])}
    E, N = 2, 4
    ids, mask, positions, labels = choice_batch(config, E, N, "left", np.random.default_rng(4))
    scores = R.choice_logits(config, params, head, ids, positions, N, attention_mask=mask)
    assert scores.shape == (E, N)
    perm = np.array([2, 0, 3, 1])
    rows = (np.arange(E)[:, None] * N + perm[None, :]).ravel()  # example e's answers in the order perm
    permuted = R.choice_logits(config, params, head, ids[rows], positions[rows], N, attention_mask=mask[rows])
    assert_close(f"{arch} permuted scores", permuted, scores[:, perm], reorder_bound(config, np.float64))
    # each score is the one-output head on the row, as a classifier reads it
    as_rows = R.classifier_logits(config, params, {"w": np.eye(16), "b": np.zeros(16)}, ids, positions,
                                  attention_mask=mask) @ head["w"] + head["b"]
    assert_close(f"{arch} scores vs rows", scores, as_rows.reshape(E, N), reorder_bound(config, np.float64))
    loss, _, _ = R.choice_loss_and_grads(config, params, head, ids, labels, positions, N, attention_mask=mask,
                                         lm_coef=0)
    assert abs(loss - R.cross_entropy(scores, labels)) <= reorder_bound(config, np.float64).allowed(loss)
    inverse = np.argsort(perm)  # the right answer moves with the permutation: the same loss
    loss_p, _, _ = R.choice_loss_and_grads(config, params, head, ids[rows], inverse[labels], positions[rows], N,
                                           attention_mask=mask[rows], lm_coef=0)
    assert abs(loss_p - loss) <= reorder_bound(config, np.float64).allowed(loss)


def test_init_choice_head_and_float32():
    config = R.GPTConfig(arch="gpt1", n_vocab=13, n_ctx=8, n_embd=256, n_head=2, n_layer=1)
    head = R.init_choice_head(config, 1)
    assert head["w"].shape == (256, 1) and head["b"].shape == (1,) and not head["b"].any()
    assert abs(head["w"].std() - 0.02) < 0.003  # 256 draws
    params = R.init_params(config, 0)
    loss, grads, head_grads = R.choice_loss_and_grads(config, params, head, [[1, 2, 3], [1, 2, 4]], [1], [2, 2], 2)
    assert isinstance(loss, float) and head_grads["w"].dtype == np.float32 and grads["wte"].dtype == np.float32
    head2 = R.init_classifier(config, 2, 0)
    loss, _, _ = R.similarity_loss_and_grads(config, params, head2, [[1, 2, 3]], [[3, 2, 1]], [0], [2], [2])
    assert isinstance(loss, float) and loss > 0


SIMILAR_BAD = [
    (dict(labels=[2]), ValueError, r"labels\[0\] = 2 is outside the classes \[0, 2\)"),
    (dict(labels=[0, 1]), ValueError, r"labels has shape \(2,\), expected one label per row: \(1,\)"),
    (dict(ids_ba=[[1, 2, 3]]), ValueError, r"ids_ab has shape \(1, 4\) but ids_ba has \(1, 3\)"),
    (dict(ids_ba=[1, 2, 3, 4]), ValueError, "ids_ba must be \\[B, T\\] token ids"),
    (dict(clf_ba=[3, 3]), ValueError, r"clf_ba has shape \(2,\), expected one position per pair"),
    (dict(clf_ba=[4]), ValueError, r"clf_positions\[1\] = 4 is outside"),
    (dict(attention_mask_ba=[[1, 1, 0, 0]]), ValueError, r"clf_positions\[1\] = 3 is a padding slot"),
    (dict(attention_mask_ab=[[1, 1, 1]]), ValueError, r"attention_mask_ab has shape \(1, 3\)"),
    (dict(head={"w": np.zeros((8, 1)), "b": np.zeros(1)}), ValueError, "need n_classes >= 2"),
    (dict(lm_coef=-1.0), ValueError, "lm_coef must be a finite number >= 0"),
]


@pytest.mark.parametrize("change, error, words", SIMILAR_BAD)
def test_similarity_rejects_bad_input(change, error, words):
    config = R.GPTConfig(arch="gpt2", n_vocab=13, n_ctx=8, n_embd=8, n_head=2, n_layer=1)
    call = dict(head=random_head(config, 0, n_classes=2), ids_ab=[[1, 2, 3, 4]], ids_ba=[[3, 4, 1, 2]], labels=[1],
                clf_ab=[3], clf_ba=[3], attention_mask_ab=None, attention_mask_ba=None, lm_coef=0.5)
    call.update(change)
    params = R.init_params(config, 0, dtype=np.float64)
    with pytest.raises(error, match=words):
        R.similarity_loss_and_grads(config, params, call["head"], call["ids_ab"], call["ids_ba"], call["labels"],
                                    call["clf_ab"], call["clf_ba"], attention_mask_ab=call["attention_mask_ab"],
                                    attention_mask_ba=call["attention_mask_ba"], lm_coef=call["lm_coef"])


CHOICE_BAD = [
    (dict(labels=[2]), ValueError, r"labels\[0\] = 2 is outside the classes \[0, 2\)"),
    (dict(labels=[-1]), ValueError, r"labels\[0\] = -1 is outside"),
    (dict(labels=[0, 1]), ValueError, r"labels has shape \(2,\), expected one label per row: \(1,\)"),
    (dict(n_choices=1), ValueError, "n_choices must be an int >= 2"),
    (dict(n_choices=2.0), ValueError, "n_choices must be an int >= 2"),
    (dict(n_choices=3), ValueError, "ids has 2 rows, not a multiple of n_choices=3"),
    (dict(clf_positions=[3]), ValueError, r"clf_positions has shape \(1,\), expected one position per row: \(2,\)"),
    (dict(head={"w": np.zeros((8, 2)), "b": np.zeros(2)}), ValueError, r"head\['w'\] has shape \(8, 2\), "
                                                                      r"expected \[8, 1\]"),
    (dict(head={"w": np.zeros((8, 1)), "b": np.zeros(2)}), ValueError, r"head\['b'\] has shape \(2,\)"),
    (dict(head={"w": np.zeros((8, 1), np.float32), "b": np.zeros(1, np.float32)}), ValueError, "dtype float32"),
    (dict(head={"w": np.zeros((8, 1))}), ValueError, "head must be a dict with exactly 'w'"),
]


@pytest.mark.parametrize("change, error, words", CHOICE_BAD)
def test_choice_rejects_bad_input(change, error, words):
    config = R.GPTConfig(arch="gpt1", n_vocab=13, n_ctx=8, n_embd=8, n_head=2, n_layer=1)
    call = dict(head={"w": np.ones((8, 1)), "b": np.zeros(1)}, ids=[[1, 2, 3, 4], [1, 2, 5, 6]], labels=[1],
                clf_positions=[3, 3], n_choices=2)
    call.update(change)
    params = R.init_params(config, 0, dtype=np.float64)
    with pytest.raises(error, match=words):
        R.choice_loss_and_grads(config, params, call["head"], call["ids"], call["labels"], call["clf_positions"],
                                call["n_choices"])
    if "labels" not in change:
        with pytest.raises(error, match=words):
            R.choice_logits(config, params, call["head"], call["ids"], call["clf_positions"], call["n_choices"])
