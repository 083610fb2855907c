"""ms_backend.Trainer with dropout against the spec: the Trainer draws the spec's masks
(ref_numpy.dropout_masks, from numpy.random.default_rng(seed)) and feeds them to its compiled step,
so with the same seed its gradients are the spec's loss_and_grads(..., dropout=p, seed=seed).

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
from ms_backend.train import Trainer  # noqa: E402

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
    loss, grads = trainer.grads_numpy(inputs, targets, mask, seed=7)
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
    """Step k's masks are the k-th draw of default_rng(seed): the gradients of those masks
    (grads_numpy with a Generator replaying the Trainer's draws), clipped and AdamW'd by the spec
    in float64, are each step's update within ms_update_bound."""
    config, trainer, _, _, (inputs, targets, mask) = graph_trainer
    replay = np.random.default_rng(SETTINGS["seed"])
    for step in range(2):
        loss, grads = trainer.grads_numpy(inputs, targets, mask, seed=replay)  # draws the step's masks
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
    parameters bit for bit -- only if it draws the masks the saved one would have (the generator's
    state is in the checkpoint: a fresh default_rng(seed) would redraw step 0's masks)."""
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
    into.resume(tmp_path / "run")  # its generator is at draw 0: resume must move it to draw 1
    for _ in range(2):
        into.step(inputs, targets, mask)
    got = R.flatten_params(into.params_numpy())
    assert all(np.array_equal(got[k], want[k]) for k in want)

    fresh = Trainer.load(tmp_path / "run")
    fresh.rng = np.random.default_rng(SETTINGS["seed"])  # what a checkpoint without the state would do
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


def test_data_parallel_with_dropout_is_refused_not_run_with_the_same_masks_on_every_rank():
    from ms_backend.distributed import DataParallelError, DataParallelTrainer, Topology

    config = CONFIGS["gpt2"]
    trainer = Trainer(config, float32_model(config, 1)[0], mode="pynative", dropout=P, seed=0)
    with pytest.raises(DataParallelError, match=r"data parallel with dropout > 0 \(p=0.1\) is not implemented"):
        DataParallelTrainer(trainer, Topology(0, 2))
    assert DataParallelTrainer(trainer, Topology(0, 1)).trainer is trainer  # one process: nothing to refuse


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
    trainer = Trainer(config, params32, mode="pynative", loss_scale=None, head=head32, dropout=P, seed=0)
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
    _, grads = trainer.grads_numpy(inputs, targets, mask, seed=7)
    _, grads64 = R.loss_and_grads(config, params64, inputs, targets, attention_mask=mask, dropout=P, seed=7)
    bound, flat = amp_backward_bound(config, "O2"), R.flatten_params(grads)
    failures = [c.describe() for name, g in R.flatten_params(grads64).items()
                if not (c := compare(name, flat[name], g, bound)).passed]
    assert not failures, "\n".join(failures)


def test_the_cli_backend_hands_dropout_and_seed_to_the_trainer():
    """gptspec train --backend mindspore --dropout p --seed s: the adapter's Trainer drops with p,
    step k draws from the NumPy backend's generator default_rng(dropout_seed(s, k, 0)) (the
    adapter's StepSeededDropout, never replaced), and one step draws exactly one set of masks of
    the batch's shape."""
    from gptspec.training.backends import Hyper, dropout_seed
    from gptspec.training.ms_backend_adapter import MindSporeBackend

    config = CONFIGS["gpt2"]
    backend = MindSporeBackend(config, float32_model(config, 1)[0], Hyper(lr=1e-3, total_steps=4, dropout=P, seed=9),
                               mode="pynative")
    assert backend.trainer.dropout == P and backend.trainer.seed == 9
    inputs, targets, mask = padded_batch(config, **BATCHES["gpt2"])
    result = backend.train_step(0, [(inputs, targets, mask)])
    assert np.isfinite(result.loss) and not result.skipped
    generator = backend.trainer.rng      # the backend's one dropout generator, handed over once
    for step in (0, 1):
        if step:
            backend.train_step(step, [(inputs, targets, mask)])
        replay = np.random.default_rng(dropout_seed(9, step, 0))
        R.dropout_masks(config, *inputs.shape, P, replay, np.float32)  # one step's draw
        assert backend.trainer.rng is generator
        assert generator.bit_generator.state == replay.bit_generator.state
