"""ref_numpy's GPT-1 fine-tuning head: init_classifier, add_tokens, classifier_logits and
classifier_loss_and_grads (L3 = L2 + lm_coef L1) -- finite differences over params and head,
its two parts against the LM spec, causality, padding, bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ref_numpy as R
from gptspec.compare import assert_close
from gptspec.tolerances import backward_reorder_bound, forward_bound, reorder_bound

from .strategies import configs, model_for
from .test_spec_backward import directional_check

seeds = st.integers(0, 2**32 - 1)
small_configs = configs(max_layers=2, max_heads=2, max_head_dim=4, max_ctx=8, max_vocab=16)
HEAD = "head."


def classify_batch(config, B, side, rng, n_classes=3):
    """ids [B, T], mask or None, clf_positions on real tokens (the last one, as GPT-1 puts _classify_
    last, or anywhere real), labels."""
    T = int(rng.integers(2, config.n_ctx + 1))
    ids = rng.integers(0, config.n_vocab, (B, T))
    lengths = rng.integers(2, T + 1, B) if side != "none" else np.full(B, T)
    slots = np.arange(T)[None, :]
    real = (slots >= T - lengths[:, None]) if side == "left" else (slots < lengths[:, None])
    positions = np.array([rng.choice(np.flatnonzero(r)) for r in real])
    mask = None if side == "none" else real.astype(np.int64)
    return ids, mask, positions, rng.integers(0, n_classes, B)


def combined(params, head):
    return {**R.flatten_params(params), **{HEAD + k: v for k, v in head.items()}}


def split(flat):
    params = R.unflatten_params({k: v for k, v in flat.items() if not k.startswith(HEAD)})
    return params, {k[len(HEAD):]: v for k, v in flat.items() if k.startswith(HEAD)}


def random_head(config, seed, n_classes=3):
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((config.n_embd, n_classes)) * 0.5, "b": rng.standard_normal(n_classes) * 0.1}


@given(small_configs, st.integers(1, 3), st.sampled_from(["none", "left", "right"]), st.sampled_from([0.0, 0.5]),
       st.sampled_from([0.0, 0.1]), seeds)
def test_combined_loss_matches_finite_differences(config, B, side, lm_coef, dropout, seed):
    rng = np.random.default_rng(seed)
    params, head = model_for(config, seed % 1000), random_head(config, seed % 1000)
    ids, mask, positions, labels = classify_batch(config, B, side, rng)
    kwargs = dict(attention_mask=mask, lm_coef=lm_coef, dropout=dropout, seed=seed)
    loss, grads, head_grads = R.classifier_loss_and_grads(config, params, head, ids, labels, positions, **kwargs)

    def loss_at(flat):
        value = R.classifier_loss_and_grads(config, *split(flat), ids, labels, positions, **kwargs)[0]
        return value, abs(value)

    directional_check(f"classifier {config.arch} lm_coef={lm_coef}", loss_at, combined(params, head),
                      combined(grads, head_grads), forward_bound(config, np.float64).value, rng)


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_the_two_losses_are_the_classifier_and_the_lm_spec(arch, side):
    """L3 = CE(classifier_logits, labels) + lm_coef x loss_and_grads on shift_targets of the same rows,
    and the gradients add the same way (the LM part exactly loss_and_grads')."""
    config = R.GPTConfig(arch=arch, n_vocab=23, n_ctx=12, n_embd=16, n_head=4, n_layer=2)
    params, head = model_for(config, 7), random_head(config, 7)
    ids, mask, positions, labels = classify_batch(config, 3, side, np.random.default_rng(7))
    logits = R.classifier_logits(config, params, head, ids, positions, attention_mask=mask)
    clf_loss, clf_grads, clf_head_grads = R.classifier_loss_and_grads(config, params, head, ids, labels, positions,
                                                                      attention_mask=mask, lm_coef=0)
    assert clf_loss == pytest.approx(R.cross_entropy(logits, labels), rel=1e-14)
    inputs, targets, input_mask = R.shift_targets(ids, mask)
    lm_loss, lm_grads = R.loss_and_grads(config, params, inputs, targets, attention_mask=input_mask)
    loss, grads, head_grads = R.classifier_loss_and_grads(config, params, head, ids, labels, positions,
                                                          attention_mask=mask, lm_coef=0.5)
    assert abs(loss - (clf_loss + 0.5 * lm_loss)) <= 2 * reorder_bound(config, np.float64).allowed(loss)
    bound = backward_reorder_bound(config, np.float64, ids.size)
    for name, g in R.flatten_params(grads).items():
        expected = R.flatten_params(clf_grads)[name] + 0.5 * R.flatten_params(lm_grads)[name]
        assert_close(f"{arch} d {name}", g, expected, bound)
    for name in ("w", "b"):  # the LM loss does not reach the head
        np.testing.assert_array_equal(head_grads[name], clf_head_grads[name])


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_without_lm_loss_nothing_after_the_classify_token_matters(arch):
    """lm_coef = 0: the loss reads only hidden[clf_position], which under causal attention sees
    tokens up to it: changing later tokens (and with them every LM target) changes nothing."""
    config = R.GPTConfig(arch=arch, n_vocab=23, n_ctx=12, n_embd=16, n_head=4, n_layer=2)
    params, head = model_for(config, 3), random_head(config, 3)
    rng = np.random.default_rng(3)
    ids, positions, labels = rng.integers(0, 23, (2, 10)), np.array([4, 6]), np.array([0, 2])
    changed = ids.copy()
    for row, p in enumerate(positions):
        changed[row, p + 1:] = (ids[row, p + 1:] + 1 + rng.integers(0, 20, 9 - p)) % 23
    loss, grads, head_grads = R.classifier_loss_and_grads(config, params, head, ids, labels, positions, lm_coef=0)
    loss2, grads2, head_grads2 = R.classifier_loss_and_grads(config, params, head, changed, labels, positions,
                                                             lm_coef=0)
    assert abs(loss2 - loss) <= reorder_bound(config, np.float64).allowed(loss)
    bound = backward_reorder_bound(config, np.float64, ids.size)
    for name, g in {**R.flatten_params(grads), **head_grads}.items():
        assert_close(f"d {name}", {**R.flatten_params(grads2), **head_grads2}[name], g, bound)
    # with the LM loss on, the later tokens are targets and do matter
    with_lm = [R.classifier_loss_and_grads(config, params, head, x, labels, positions, lm_coef=0.5)[0]
               for x in (ids, changed)]
    assert abs(with_lm[1] - with_lm[0]) > 1e-6  # ~1e-4 here, against rounding of ~1e-15


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_row_classifies_like_the_unpadded_row(side):
    config = R.GPTConfig(arch="gpt1", n_vocab=23, n_ctx=12, n_embd=16, n_head=4, n_layer=2)
    params, head = model_for(config, 5), random_head(config, 5)
    row = np.random.default_rng(5).integers(0, 23, 6)
    logits = R.classifier_logits(config, params, head, row[None], [5])
    pad = np.full(4, 7)
    ids = np.concatenate([pad, row] if side == "left" else [row, pad])[None]
    mask = np.concatenate([np.zeros(4, int), np.ones(6, int)] if side == "left" else
                          [np.ones(6, int), np.zeros(4, int)])[None]
    padded = R.classifier_logits(config, params, head, ids, [9 if side == "left" else 5], attention_mask=mask)
    assert_close(f"{side}-padded logits", padded, logits, reorder_bound(config, np.float64))


def test_float32_runs_in_float32():
    config = R.GPTConfig(arch="gpt2", n_vocab=13, n_ctx=8, n_embd=8, n_head=2, n_layer=1)
    params, head = R.init_params(config, 0), R.init_classifier(config, 2, 0)
    loss, grads, head_grads = R.classifier_loss_and_grads(config, params, head, [[1, 2, 3]], [1], [2])
    assert isinstance(loss, float) and loss > 0
    R.check_params(config, grads)
    assert {g.dtype for g in (*R.flatten_params(grads).values(), *head_grads.values())} == {np.dtype(np.float32)}


def test_init_classifier_is_openais_clf_layer():
    config = R.GPTConfig(arch="gpt1", n_vocab=13, n_ctx=8, n_embd=256, n_head=2, n_layer=1)
    head = R.init_classifier(config, 4, 1)
    assert head["w"].shape == (256, 4) and head["b"].shape == (4,) and head["w"].dtype == np.float32
    assert not head["b"].any()
    assert abs(head["w"].std() - 0.02) < 0.002  # 1024 draws: the sample std is within ~2% of 0.02
    np.testing.assert_array_equal(R.init_classifier(config, 4, 1)["w"], head["w"])
    assert not np.array_equal(R.init_classifier(config, 4, 2)["w"], head["w"])
    assert R.init_classifier(config, 2, 1, dtype=np.float64)["w"].dtype == np.float64


def test_add_tokens_grows_wte_like_its_initialisation():
    config = R.GPTConfig(arch="gpt1", n_vocab=13, n_ctx=8, n_embd=128, n_head=2, n_layer=1)
    params = R.init_params(config, 0)
    grown = R.add_tokens(params, 3, seed=4)
    assert grown["wte"].shape == (16, 128) and grown["wte"].dtype == np.float32
    np.testing.assert_array_equal(grown["wte"][:13], params["wte"])
    assert abs(grown["wte"][13:].std() - 0.02) < 0.003  # 384 draws
    assert params["wte"].shape == (13, 128)  # the input is not modified
    assert grown["wpe"] is params["wpe"] and grown["blocks"] is params["blocks"]
    bigger = config.replace(n_vocab=16)
    R.check_params(bigger, grown)
    head = R.init_classifier(bigger, 2, 0)
    loss, grads, _ = R.classifier_loss_and_grads(bigger, grown, head, [[13, 4, 5, 15]], [1], [3])
    assert grads["wte"][13].any() and grads["wte"][15].any()  # the new tokens learn


BAD_CALLS = [
    (dict(labels=[3]), ValueError, r"labels\[0\] = 3 is outside the classes \[0, 3\)"),
    (dict(labels=[-1]), ValueError, r"labels\[0\] = -1 is outside the classes"),
    (dict(labels=[0, 1]), ValueError, r"labels has shape \(2,\), expected one label per row: \(1,\)"),
    (dict(labels=[0.0]), TypeError, "labels must be integer class indices"),
    (dict(clf_positions=[5]), ValueError, r"clf_positions\[0\] = 5 is outside the row's positions \[0, 5\)"),
    (dict(clf_positions=[-1]), ValueError, r"clf_positions\[0\] = -1 is outside"),
    (dict(clf_positions=[4], attention_mask=[[1, 1, 1, 0, 0]]), ValueError,
     r"clf_positions\[0\] = 4 is a padding slot"),
    (dict(clf_positions=[[2]]), ValueError, "clf_positions has shape"),
    (dict(lm_coef=-0.5), ValueError, "lm_coef must be a finite number >= 0"),
    (dict(lm_coef=float("nan")), ValueError, "lm_coef must be a finite number >= 0"),
    (dict(dropout=1.0), ValueError, r"dropout must be a probability in \[0, 1\)"),
    (dict(head="w"), ValueError, "head must be a dict with exactly 'w'"),
    (dict(head={"w": np.zeros((4, 3)), "b": np.zeros(3)}), ValueError,
     r"head\['w'\] has shape \(4, 3\), expected \[n_embd=8, n_classes\]"),
    (dict(head={"w": np.zeros((8, 3)), "b": np.zeros(2)}), ValueError, r"head\['b'\] has shape \(2,\)"),
    (dict(head={"w": np.zeros((8, 1)), "b": np.zeros(1)}), ValueError, "need n_classes >= 2"),
    (dict(head={"w": np.zeros((8, 3), np.float32), "b": np.zeros(3, np.float32)}), ValueError,
     r"head\['w'\] has dtype float32, but the params have float64"),
    (dict(ids=[[1, 2, 3, 4, 99]]), ValueError, "outside the vocabulary"),
    (dict(ids=[[1]], clf_positions=[0]), ValueError, "the LM loss needs at least 2"),
]


@pytest.mark.parametrize("change, error, words", BAD_CALLS)
def test_classifier_loss_rejects_bad_input(change, error, words):
    config = R.GPTConfig(arch="gpt2", n_vocab=13, n_ctx=8, n_embd=8, n_head=2, n_layer=1)
    call = dict(params=R.init_params(config, 0, dtype=np.float64), head=random_head(config, 0),
                ids=[[1, 2, 3, 4, 5]], labels=[1], clf_positions=[4], attention_mask=None, lm_coef=0.5, dropout=0.0)
    call.update(change)
    with pytest.raises(error, match=words):
        R.classifier_loss_and_grads(config, call["params"], call["head"], call["ids"], call["labels"],
                                    call["clf_positions"], attention_mask=call["attention_mask"],
                                    lm_coef=call["lm_coef"], dropout=call["dropout"])


def test_constructor_errors():
    config = R.GPTConfig(arch="gpt2", n_vocab=13, n_ctx=8, n_embd=8, n_head=2, n_layer=1)
    for n_classes in (1, 0, 2.0, True):
        with pytest.raises(ValueError, match="n_classes must be an int >= 2"):
            R.init_classifier(config, n_classes, 0)
    for n in (0, -1, 1.5):
        with pytest.raises(ValueError, match="n must be an int >= 1"):
            R.add_tokens(R.init_params(config, 0), n)
    with pytest.raises(ValueError, match="params must be a model's params dict"):
        R.add_tokens({"wpe": np.zeros((2, 2))}, 3)
    with pytest.raises(ValueError, match="no row has two real tokens"):
        R.classifier_loss_and_grads(config, R.init_params(config, 0), R.init_classifier(config, 2, 0),
                                    [[1, 2]], [0], [0], attention_mask=[[1, 0]])
