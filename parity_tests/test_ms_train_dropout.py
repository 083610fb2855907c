"""ms_backend.Trainer with dropout against the spec: the Trainer draws the spec's masks
(ref_numpy.dropout_masks, from numpy.random.default_rng(seed)) and feeds them to its compiled step,
so with the same seed its gradients are the spec's loss_and_grads(..., dropout=p, seed=seed).  In
training, micro-batch k of step s uses seed ref_numpy.dropout_seed(run seed, s, k).

Graph compilation dominates (~5 s per gradient graph, ~15 s for a training step): one graph Trainer
per architecture, fixed shapes; the save/resume test runs in PyNative.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mindspore", reason="the MindSpore backend needs the `mindspore` extra")

import ref_numpy as R  # noqa: E402
from gptspec.compare import compare  # noqa: E402
from gptspec.tolerances import amp_backward_bound, forward_bound, ms_backward_bounds, ms_update_bound  # noqa: E402
from ms_backend import Classifier, Trainer  # noqa: E402

from .test_ms_train import CONFIGS, float32_model, padded_batch, spec_update  # noqa: E402

pytestmark = pytest.mark.mindspore

P = 0.1  # GPT-1/GPT-2's dropout
SETTINGS = dict(lr=3e-2, warmup_steps=1, total_steps=6, min_lr=1e-3, weight_decay=0.1, max_grad_norm=0.5,
                loss_scale=None, dropout=P, seed=2024)
BATCHES = {"gpt1": dict(lengths=[9, 6, 3], length=9, seed=5, side="left"),
           "gpt2": dict(lengths=[9, 5, 2], length=9, seed=11, side="right")}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def graph_trainer(request):
    arch = request.param
    config = CONFIGS[arch]
    params32, params64 = float32_model(config, 3)
    return config, Trainer(config, params32, mode="graph", **SETTINGS), params32, params64, \
        padded_batch(config, **BATCHES[arch])


def test_graph_gradients_with_dropout_match_the_float64_spec_with_the_same_seed(graph_trainer):
    """Every tensor within backward_bound (and 8x the spec's own float32 noise) of the float64 spec
    with the same masks; with another seed's masks, or none, they are far outside it."""
    config, trainer, params32, params64, (inputs, targets, mask) = graph_trainer
    loss, grads, _ = trainer.grads_numpy(inputs, targets, mask, seed=7)
    loss64, grads64 = R.loss_and_grads(config, params64, inputs, targets, attention_mask=mask, dropout=P, seed=7)
    _, grads32 = R.loss_and_grads(config, params32, inputs, targets, attention_mask=mask, dropout=P, seed=7)
    flat, flat64, flat32 = (R.flatten_params(g) for g in (grads, grads64, grads32))
    failures = []
    for name, reference in flat64.items():
        for bound in ms_backward_bounds(config, inputs.size, flat32[name], reference):
            if not (c := compare(name, flat[name], reference, bound)).passed:
                failures.append(c.describe())
    assert not failures, "\n".join(failures)
    assert abs(loss - loss64) <= forward_bound(config, "float32").allowed(loss64), (loss, loss64)

    derived = ms_backward_bounds(config, inputs.size, flat32["wte"], flat64["wte"])[0]
    for other in (dict(dropout=P, seed=8), dict(dropout=0.0)):
        _, other_grads = R.loss_and_grads(config, params64, inputs, targets, attention_mask=mask, **other)
        other_flat = R.flatten_params(other_grads)
        assert any(not compare(k, flat[k], other_flat[k], derived).passed for k in flat), \
            f"the gradients must depend on the masks: {other} gives the same"


@pytest.mark.parametrize("graph_trainer", ["gpt2"], indirect=True)  # the update is the arch's: one step graph
def test_two_steps_with_dropout_are_the_spec_updates_with_the_trainers_masks(graph_trainer):
    """Step k's masks are those of default_rng(dropout_seed(seed, k, 0)): the gradients of those
    masks (grads_numpy with that seed), clipped and AdamW'd by the spec in float64, are each step's
    update within ms_update_bound."""
    config, trainer, _, _, (inputs, targets, mask) = graph_trainer
    for step in range(2):
        loss, grads, _ = trainer.grads_numpy(inputs, targets, mask, seed=R.dropout_seed(SETTINGS["seed"], step, 0))
        want, norm, lr = spec_update(trainer, config, grads, step)
        result = trainer.step(inputs, targets, mask)
        assert not result.skipped and result.lr == lr and trainer.step_count == step + 1
        assert norm > SETTINGS["max_grad_norm"], "the test must exercise clipping"
        assert abs(result.grad_norm - norm) <= 1e-5 * norm, (result.grad_norm, norm)
        assert abs(result.loss - loss) <= forward_bound(config, "float32").allowed(loss), (result.loss, loss)
        got = R.flatten_params(trainer.params_numpy())
        bound = ms_update_bound(sum(g.size for g in got.values()), len(got), lr)
        failures = [c.describe() for name, w in R.flatten_params(want).items()
                    if not (c := compare(f"step {step} {name}", got[name], w, bound)).passed]
        assert not failures, "\n".join(failures)


def test_save_and_load_mid_run_resumes_with_the_same_masks(tmp_path):
    """Train 1 step, save, train 2 more; a Trainer loaded from the save, trained 2 steps, has the same
    parameters bit for bit -- only if it draws the masks the saved one would have (they follow the
    seed, saved, and the step count, restored); a Trainer with another seed draws others."""
    config = CONFIGS["gpt2"]
    settings = {**SETTINGS, "loss_scale": "dynamic"}
    trainer = Trainer(config, float32_model(config, 4)[0], mode="pynative", **settings)
    inputs, targets, mask = padded_batch(config, **BATCHES["gpt2"])
    trainer.step(inputs, targets, mask)
    trainer.save(tmp_path / "run")
    for _ in range(2):
        trainer.step(inputs, targets, mask)
    resumed = Trainer.load(tmp_path / "run")
    assert resumed.dropout == P and resumed.seed == SETTINGS["seed"] and resumed.step_count == 1
    for _ in range(2):
        resumed.step(inputs, targets, mask)
    got, want = R.flatten_params(resumed.params_numpy()), R.flatten_params(trainer.params_numpy())
    assert all(np.array_equal(got[k], want[k]) for k in want)

    into = Trainer(config, float32_model(config, 5)[0], mode="pynative", **settings)  # resume(): the CLI's path
    into.resume(tmp_path / "run")  # its step count is 0: resume must set it to 1, and the masks follow
    for _ in range(2):
        into.step(inputs, targets, mask)
    got = R.flatten_params(into.params_numpy())
    assert all(np.array_equal(got[k], want[k]) for k in want)

    fresh = Trainer.load(tmp_path / "run", seed=SETTINGS["seed"] + 1)
    for _ in range(2):
        fresh.step(inputs, targets, mask)
    assert not np.array_equal(fresh.params_numpy()["wte"], trainer.params_numpy()["wte"])


def test_grads_numpy_with_dropout_needs_a_seed():
    config = CONFIGS["gpt2"]
    trainer = Trainer(config, float32_model(config, 1)[0], mode="pynative", dropout=P, seed=0)
    with pytest.raises(ValueError, match="seed is required when the Trainer has dropout > 0"):
        trainer.grads_numpy([[1, 2, 3]], [[2, 3, 4]])
    with pytest.raises(ValueError, match="dropout"):
        Trainer(config, float32_model(config, 1)[0], dropout=1.0)


def test_data_parallel_ranks_keep_their_rows_of_the_whole_batchs_masks():
    """Data parallel (no cluster needed): rank r of 2 draws the whole batch's masks and keeps its
    rows (placement), and divides by the global target count, so the two ranks' gradients add up to
    one process's on the whole batch -- the same masks; a rank drawing for its own rows alone would
    not."""
    config = CONFIGS["gpt2"]
    params32, _ = float32_model(config, 1)
    trainer = Trainer(config, params32, mode="pynative", loss_scale=None, dropout=P, seed=0)
    inputs, targets, mask = padded_batch(config, lengths=[9, 5, 7, 2], length=9, seed=3, side="right")
    whole = trainer.grads_numpy(inputs, targets, mask, seed=7)
    totals = {"targets": int(np.count_nonzero(targets != R.IGNORE_INDEX))}
    halves = [trainer.grads_numpy(inputs[rows], targets[rows], mask[rows], seed=7, totals=totals, placement=(first, 4))
              for first, rows in ((0, slice(0, 2)), (2, slice(2, 4)))]
    assert abs(halves[0].loss + halves[1].loss - whole.loss) <= forward_bound(config, "float32").allowed(whole.loss)
    flat, parts = R.flatten_params(whole.grads), [R.flatten_params(h.grads) for h in halves]
    bound = ms_backward_bounds(config, inputs.size, flat["wte"], flat["wte"])[0]
    failures = [c.describe() for name, g in flat.items()
                if not (c := compare(name, parts[0][name] + parts[1][name], g, bound)).passed]
    assert not failures, "\n".join(failures)
    alone = trainer.grads_numpy(inputs[2:], targets[2:], mask[2:], seed=7, totals=totals)  # its own rows' draw
    assert not compare("wte", parts[0]["wte"] + R.flatten_params(alone.grads)["wte"], flat["wte"], bound).passed


def test_classifier_head_with_dropout_matches_the_spec_with_the_same_seed():
    """With a head the classify tokens' mask [R, C] is drawn after the model's, as
    ref_numpy.classifier_loss_and_grads draws it: model and head gradients within backward_bound."""
    from .test_ms_train_classifier import CONFIGS as CLASSIFIER_CONFIGS
    from .test_ms_train_classifier import classification_batch

    config = CLASSIFIER_CONFIGS["gpt1"]
    params32, params64 = float32_model(config, 4)
    head32 = R.init_classifier(config, 3, seed=1)
    head64 = R.cast_params(head32, np.float64)
    ids, mask, labels, positions = classification_batch(config)
    trainer = Trainer(config, params32, mode="pynative", loss_scale=None, objective=Classifier(head32), dropout=P,
                      seed=0)
    loss, grads, head_grads = trainer.grads_numpy(ids, labels, mask, clf_positions=positions, seed=3)
    loss64, grads64, head_grads64 = R.classifier_loss_and_grads(config, params64, head64, ids, labels, positions,
                                                                attention_mask=mask, dropout=P, seed=3)
    assert abs(loss - loss64) <= forward_bound(config, "float32").allowed(loss64), (loss, loss64)
    flat, flat64 = R.flatten_params(grads), R.flatten_params(grads64)
    pairs = [(name, flat[name], g) for name, g in flat64.items()]
    pairs += [(f"head.{k}", head_grads[k], g) for k, g in head_grads64.items()]
    failures = [c.describe() for name, got, want in pairs
                if not (c := compare(name, got, want, ms_backward_bounds(config, ids.size, want, want)[0])).passed]
    assert not failures, "\n".join(failures)
    _, _, other_head = R.classifier_loss_and_grads(config, params64, head64, ids, labels, positions,
                                                   attention_mask=mask, dropout=P, seed=4)
    bound = ms_backward_bounds(config, ids.size, head_grads64["w"], head_grads64["w"])[0]
    assert not compare("head.w", head_grads["w"], other_head["w"], bound).passed, "the masks must matter"


def test_fp16_amp_gradients_with_dropout_match_the_spec():
    """O2 (the dropout multiplies in float16, the elementwise dtype) with the dynamic loss scale
    divided out: per tensor within amp_backward_bound of the float64 spec with the same masks
    (observed <= 1.1e-3 of it).  This checks the AMP path (casts, unscaling), not which elements
    are dropped: another seed's masks are still at 0.55 of this wide bound -- the float32 tests
    above tell the masks apart."""
    config = CONFIGS["gpt2"]
    params32, params64 = float32_model(config, 3)
    inputs, targets, mask = padded_batch(config, **BATCHES["gpt2"])
    trainer = Trainer(config, params32, amp_level="O2", dtype="float16", mode="pynative", dropout=P, seed=0)
    _, grads, _ = trainer.grads_numpy(inputs, targets, mask, seed=7)
    _, grads64 = R.loss_and_grads(config, params64, inputs, targets, attention_mask=mask, dropout=P, seed=7)
    bound, flat = amp_backward_bound(config, "O2"), R.flatten_params(grads)
    failures = [c.describe() for name, g in R.flatten_params(grads64).items()
                if not (c := compare(name, flat[name], g, bound)).passed]
    assert not failures, "\n".join(failures)


def test_the_cli_backend_draws_the_numpy_backends_masks():
    """gptspec train --backend mindspore --dropout p --seed s: the adapter's Trainer drops with p,
    and step k's masks are the NumPy backend's (default_rng(dropout_seed(s, k, 0))): each step's
    loss is the loss of those masks at the step's start, and another step's masks give another."""
    from gptspec.training.backends import Hyper
    from gptspec.training.ms_backend_adapter import MindSporeBackend
    from gptspec.training.objectives import LanguageModelling

    config = CONFIGS["gpt2"]
    backend = MindSporeBackend(config, float32_model(config, 1)[0], Hyper(lr=1e-3, total_steps=4, dropout=P, seed=9),
                               LanguageModelling(), mode="pynative")
    trainer = backend.trainer
    assert trainer.dropout == P and trainer.seed == 9
    inputs, targets, mask = padded_batch(config, **BATCHES["gpt2"])
    bound = forward_bound(config, "float32")
    for step in (0, 1):
        expected = trainer.grads_numpy(inputs, targets, mask, seed=R.dropout_seed(9, step, 0)).loss
        other = trainer.grads_numpy(inputs, targets, mask, seed=R.dropout_seed(9, step + 1, 0)).loss
        result = backend.train_step(step, [(inputs, targets, mask)])
        assert abs(result.loss - expected) <= bound.allowed(expected), (step, result.loss, expected)
        assert abs(result.loss - other) > bound.allowed(other), "the masks must differ from step to step"
