"""ms_backend.Trainer on GPT-1's fine-tuning objective (ms_backend.Classifier): the combined loss's
gradients (model and head) against ref_numpy.classifier_loss_and_grads in float64, both
architectures, padded rows; similar and choice against their spec functions, with and without
dropout; the spec's errors for bad labels/positions; save and resume with the head."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mindspore", reason="the MindSpore backend needs the `mindspore` extra")

import ref_numpy as R  # noqa: E402
from gptspec.compare import compare  # noqa: E402
from gptspec.tolerances import forward_bound, ms_backward_bounds  # noqa: E402
from ms_backend import Classifier, Trainer  # noqa: E402

from .test_ms_train import float32_model  # noqa: E402

pytestmark = pytest.mark.mindspore

CONFIGS = {arch: R.GPTConfig(arch=arch, n_vocab=40, n_ctx=12, n_embd=16, n_head=2, n_layer=2)
           for arch in ("gpt1", "gpt2")}
LENGTHS = [10, 6, 3]  # right padding; each row's classify token is its last real token


def classification_batch(config, seed=0):
    rng = np.random.default_rng(seed)
    ids, mask = R.pad_or_truncate([rng.integers(0, config.n_vocab, n) for n in LENGTHS], 10, 0)
    return ids, mask, np.array([1, 0, 2]), np.array(LENGTHS) - 1


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("lm_coef", [0.5, 0.0])
def test_classifier_gradients_match_the_float64_spec(arch, lm_coef):
    config = CONFIGS[arch]
    params32, params64 = float32_model(config, 4)
    head32 = R.init_classifier(config, 3, seed=1)
    head32["b"] = np.float32([0.1, -0.2, 0.05])  # nonzero, so the bias's role is exercised
    head64 = {k: v.astype(np.float64) for k, v in head32.items()}
    ids, mask, labels, positions = classification_batch(config)
    trainer = Trainer(config, params32, mode="pynative", loss_scale=None, objective=Classifier(head32, "classify", lm_coef))
    loss, grads, head_grads = trainer.grads_numpy(ids, labels, mask, clf_positions=positions)
    spec = dict(attention_mask=mask, lm_coef=lm_coef)
    loss64, grads64, head_grads64 = R.classifier_loss_and_grads(config, params64, head64, ids, labels, positions,
                                                                **spec)
    _, grads32, head_grads32 = R.classifier_loss_and_grads(config, params32, head32, ids, labels, positions, **spec)
    assert abs(loss - loss64) <= forward_bound(config, "float32").allowed(loss64)
    flat, flat32 = R.flatten_params(grads), R.flatten_params(grads32)
    pairs = [(name, flat[name], flat32[name], g) for name, g in R.flatten_params(grads64).items()]
    pairs += [(f"head.{k}", head_grads[k], head_grads32[k], g) for k, g in head_grads64.items()]
    # The derived bound only: the classification loss reads 3 rows, so the head's gradients (and,
    # at lm_coef=0, every gradient) are sums of a few terms, whose measured float32 noise is one
    # rounding's luck -- the spec's own noise there is up to 12x smaller than MindSpore's error on
    # GPT-1 (observed; err / derived bound <= 3.1e-3 on every tensor).
    failures = []
    for name, got, noise_ref, want in pairs:
        derived, _ = ms_backward_bounds(config, ids.size, noise_ref, want)
        if not (c := compare(name, got, want, derived)).passed:
            failures.append(c.describe())
    assert not failures, "\n".join(failures)
    if lm_coef == 0:  # the LM loss is off: wpe rows past the longest row, and every unused token, get nothing
        assert np.abs(flat["wte"]).sum(axis=1).min() == 0


def test_classifier_steps_and_resume_with_the_head(tmp_path):
    config = CONFIGS["gpt2"]
    params32, _ = float32_model(config, 4)
    head = R.init_classifier(config, 3, seed=1)
    ids, mask, labels, positions = classification_batch(config)
    settings = dict(mode="pynative", lr=1e-2, weight_decay=0.1, loss_scale=None,
                    objective=Classifier(head, "entail", lm_coef=0.5))
    trainer = Trainer(config, params32, **settings)
    first = trainer.step(ids, labels, mask, clf_positions=positions)
    assert not np.array_equal(trainer.head_numpy()["w"], head["w"]), "the head must be trained"
    trainer.save(tmp_path)
    resumed = Trainer.load(tmp_path)
    assert (resumed.objective.task, resumed.objective.lm_coef) == ("entail", 0.5)
    a, b = (t.step(ids, labels, mask, clf_positions=positions) for t in (trainer, resumed))
    assert a == b and a.loss < first.loss
    for key in ("w", "b"):
        assert np.array_equal(trainer.head_numpy()[key], resumed.head_numpy()[key])


@pytest.mark.parametrize("change, error", [
    (dict(labels=np.array([1, 0, 3])), "labels"),
    (dict(positions=np.array([9, 5, 4])), "clf_positions"),  # row 2's slot 4 is padding
    (dict(positions=np.array([9, 5])), "clf_positions"),
])
def test_bad_classification_batches_get_the_spec_message(change, error):
    config = CONFIGS["gpt1"]
    params32, _ = float32_model(config, 4)
    head = R.init_classifier(config, 3)
    ids, mask, labels, positions = classification_batch(config)
    labels, positions = change.get("labels", labels), change.get("positions", positions)
    with pytest.raises(ValueError) as spec:
        R.classifier_loss_and_grads(config, params32, head, ids, labels, positions, attention_mask=mask)
    trainer = Trainer(config, params32, mode="pynative", objective=Classifier(head))
    with pytest.raises(ValueError) as ours:
        trainer.grads_numpy(ids, labels, mask, clf_positions=positions)
    assert str(ours.value) == str(spec.value) and error in str(ours.value)
    with pytest.raises(ValueError, match="clf_positions is required"):
        trainer.step(ids, labels, mask)


def pair_and_choice_batches(config, seed=0):
    """similar: 3 pairs [3, 2, 10] (both orders, right-padded); choice: 2 examples of 3 answers
    [2, 3, 10]; each sequence's classify token is its last real token."""
    rng = np.random.default_rng(seed)

    def padded(lengths):
        ids, mask = R.pad_or_truncate([rng.integers(0, config.n_vocab, n) for n in lengths], 10, 0)
        return ids, mask, np.array(lengths) - 1

    ab, ba = padded([10, 6, 4]), padded([10, 6, 4])
    similar = tuple(np.stack([x, y], axis=1) for x, y in zip(ab, ba))
    choice = tuple(a.reshape(2, 3, *a.shape[1:]) for a in padded([10, 7, 5, 9, 3, 6]))
    return {"similar": (similar, np.array([2, 0, 1])), "choice": (choice, np.array([1, 2]))}


@pytest.mark.parametrize("task", ["similar", "choice"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_similar_and_choice_gradients_match_the_float64_spec(task, dropout):
    """The two-sequence objectives: the rows in the spec's order (similar: every a+b row, then every
    b+a row; choice: example by example), the head on the summed states / one score per answer, and
    with dropout the same masks as the spec's with the same seed: every tensor within backward_bound."""
    config = CONFIGS["gpt1"]
    params32, params64 = float32_model(config, 4)
    head32 = R.init_choice_head(config, 1) if task == "choice" else R.init_classifier(config, 3, seed=1)
    head64 = R.cast_params(head32, np.float64)
    (ids, mask, positions), labels = pair_and_choice_batches(config)[task]
    trainer = Trainer(config, params32, mode="pynative", loss_scale=None, objective=Classifier(head32, task),
                      dropout=dropout, seed=0)
    loss, grads, head_grads = trainer.grads_numpy(ids, labels, mask, positions, seed=5)
    common = dict(dropout=dropout, seed=5)
    if task == "similar":
        loss64, grads64, head_grads64 = R.similarity_loss_and_grads(
            config, params64, head64, ids[:, 0], ids[:, 1], labels, positions[:, 0], positions[:, 1],
            attention_mask_ab=mask[:, 0], attention_mask_ba=mask[:, 1], **common)
    else:
        loss64, grads64, head_grads64 = R.choice_loss_and_grads(
            config, params64, head64, ids.reshape(6, 10), labels, positions.reshape(6), 3,
            attention_mask=mask.reshape(6, 10), **common)
    assert abs(loss - loss64) <= forward_bound(config, "float32").allowed(loss64), (loss, loss64)
    flat = R.flatten_params(grads)
    pairs = [(name, flat[name], g) for name, g in R.flatten_params(grads64).items()]
    pairs += [(f"head.{k}", head_grads[k], g) for k, g in head_grads64.items()]
    failures = [c.describe() for name, got, want in pairs
                if not (c := compare(name, got, want, ms_backward_bounds(config, ids.size, want, want)[0])).passed]
    assert not failures, "\n".join(failures)
    logits = trainer.classifier_logits_numpy(ids, positions, mask)
    assert logits.shape == (len(labels), 3)


def test_a_classifier_objective_serves_one_trainer_and_checks_its_task():
    """The objective holds its Trainer's head Parameters: a second Trainer on it would train the
    same head, so it is refused; an unknown task, a choice head of 2 columns and ids of the wrong
    layout get one-line errors."""
    config = CONFIGS["gpt1"]
    params32, _ = float32_model(config, 4)
    head = R.init_classifier(config, 3)
    objective = Classifier(head)
    Trainer(config, params32, mode="pynative", objective=objective)
    with pytest.raises(ValueError, match="already belongs to a Trainer"):
        Trainer(config, params32, mode="pynative", objective=objective)
    with pytest.raises(ValueError, match="task must be one of"):
        Classifier(head, "regress")
    with pytest.raises(ValueError, match=r"head\[.w.\] has shape \(16, 3\)"):
        Trainer(config, params32, mode="pynative", objective=Classifier(head, "choice"))
    trainer = Trainer(config, params32, mode="pynative", objective=Classifier(head, "similar"))
    ids, mask, labels, positions = classification_batch(config)
    with pytest.raises(ValueError, match=r"ids for task similar must be \[E, 2, T\]"):
        trainer.step(ids, labels, mask, positions)
