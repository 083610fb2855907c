"""ms_backend.Trainer's memory option recompute=True (block-wise recomputation, ms_backend/blockwise.py)
computes what the one-graph step computes: the gradients against the float64 spec within the same
bounds (test_ms_train's check) and equal to the Trainer's without it -- the same kernels on the same
shapes, the chain rule run in pieces -- for both architectures, with dropout, a classifier objective,
micro-batches, AMP with loss scaling, and in both modes.  Only the order in which wte's two
gradients (the embedding's rows, the tied head's) are added may differ, so after updates the
weights are held to reorder_bound (observed: 1 element of 1152 one float32 ulp apart).  The memory
it saves is measured by benchmarks/bench_train.py, not here."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mindspore", reason="the MindSpore backend needs the `mindspore` extra")

import ref_numpy as R  # noqa: E402
from gptspec.compare import assert_close  # noqa: E402
from gptspec.tolerances import reorder_bound  # noqa: E402
from ms_backend import Classifier, Trainer  # noqa: E402

from .test_ms_train import CONFIGS, GRAPH_BATCH, assert_gradients_match, float32_model, padded_batch  # noqa: E402
from .test_ms_train_classifier import CONFIGS as CLASSIFIER_CONFIGS  # noqa: E402

pytestmark = pytest.mark.mindspore

HYPER = dict(lr=1e-2, weight_decay=0.1, max_grad_norm=1.0)


def assert_same_arrays(what, got: dict, want: dict):
    got, want = R.flatten_params(got), R.flatten_params(want)
    assert got.keys() == want.keys()
    for name, array in want.items():
        np.testing.assert_array_equal(got[name], array, err_msg=f"{what}: {name}")


def assert_same_up_to_order(what, config, got: dict, want: dict):
    got, want = R.flatten_params(got), R.flatten_params(want)
    assert got.keys() == want.keys()
    for name, array in want.items():
        assert_close(f"{what}: {name}", got[name], array, reorder_bound(config, "float32"))


def assert_same_steps(config, got, want):
    """StepResults: the learning rate, loss scale and skip decision equal; loss and norm up to order."""
    assert (got.lr, got.loss_scale, got.skipped) == (want.lr, want.loss_scale, want.skipped)
    for field in ("loss", "grad_norm"):
        assert_close(field, np.float64(getattr(got, field)), np.float64(getattr(want, field)),
                     reorder_bound(config, "float32"))


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_recompute_gradients_match_the_float64_spec_and_the_one_graph_step(arch):
    config = CONFIGS[arch]
    params32, params64 = float32_model(config, 3)
    batch = padded_batch(config, **GRAPH_BATCH)
    recomputed = Trainer(config, params32, mode="graph", loss_scale=None, recompute=True)
    assert_gradients_match(recomputed, config, params32, params64, batch)
    loss, grads, _ = recomputed.grads_numpy(*batch)
    loss_kept, grads_kept, _ = Trainer(config, params32, mode="graph", loss_scale=None).grads_numpy(*batch)
    assert loss == loss_kept
    assert_same_arrays("gradients", grads, grads_kept)
    # grads_numpy leaves nothing behind in the sums: asking again gives the same gradients
    assert_same_arrays("gradients asked twice", recomputed.grads_numpy(*batch).grads, grads_kept)


@pytest.mark.parametrize("mode, amp_level", [("graph", "O0"), ("pynative", "O0"), ("graph", "O2")])
def test_recompute_steps_equal_the_one_graph_steps(mode, amp_level):
    """Two updates with dropout and clipping, the second from two micro-batches: losses, norms,
    loss scales and weights identical (O2: float16 blocks under dynamic loss scaling)."""
    config = CONFIGS["gpt2"]
    params32, _ = float32_model(config, 5)
    inputs, targets, mask = padded_batch(config, **GRAPH_BATCH)
    settings = dict(mode=mode, amp_level=amp_level, dropout=0.1, seed=7, **HYPER,
                    **({"loss_scale": None} if amp_level == "O0" else {}))
    kept, recomputed = Trainer(config, params32, **settings), Trainer(config, params32, recompute=True, **settings)
    for want, got in zip(*[(t.step(inputs, targets, mask),
                            t.accumulate_step([(inputs[:2], targets[:2], mask[:2]), (inputs[2:], targets[2:], mask[2:])]))
                           for t in (kept, recomputed)]):
        assert_same_steps(config, got, want)
    assert_same_up_to_order("weights", config, recomputed.params_numpy(), kept.params_numpy())
    for moment in ("m", "v"):
        assert_same_up_to_order(f"AdamW {moment}", config, recomputed.optimizer_state_numpy()[moment],
                                kept.optimizer_state_numpy()[moment])


@pytest.mark.parametrize("arch", sorted(CLASSIFIER_CONFIGS))
def test_recompute_trains_a_classifier_as_the_one_graph_step(arch):
    """GPT-1's similar task (two orders per example, summed states) with dropout on the head:
    the head's and the model's gradients and one update, identical."""
    config = CLASSIFIER_CONFIGS[arch]
    params32, _ = float32_model(config, 2)
    rng = np.random.default_rng(4)
    ids = rng.integers(0, config.n_vocab, (3, 2, 8))
    mask = np.ones_like(ids)
    mask[1, :, 6:] = 0
    positions = np.array([[7, 7], [5, 5], [7, 7]])
    labels = np.array([1, 0, 2])
    head = R.init_classifier(config, 3, seed=1)
    trainers = [Trainer(config, params32, mode="graph", loss_scale=None, dropout=0.1, seed=3, recompute=recompute,
                        objective=Classifier(head, "similar", 0.5), **HYPER) for recompute in (False, True)]
    kept, recomputed = (t.grads_numpy(ids, labels, mask, clf_positions=positions, seed=9) for t in trainers)
    assert kept.loss == recomputed.loss
    assert_same_arrays("gradients", recomputed.grads, kept.grads)
    assert_same_arrays("head gradients", recomputed.head_grads, kept.head_grads)
    want, got = (t.step(ids, labels, mask, clf_positions=positions) for t in trainers)
    assert_same_steps(config, got, want)
    assert_same_up_to_order("weights", config, trainers[1].params_numpy(), trainers[0].params_numpy())
    assert_same_up_to_order("head", config, trainers[1].head_numpy(), trainers[0].head_numpy())


def test_recompute_must_be_a_bool():
    config = CONFIGS["gpt2"]
    with pytest.raises(ValueError, match="recompute must be True or False, got 'yes'"):
        Trainer(config, float32_model(config, 0)[0], recompute="yes")
