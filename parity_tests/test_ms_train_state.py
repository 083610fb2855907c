"""ms_backend.Trainer: edge batches as the spec treats them, bad input refused with the spec's
messages, save / load / resume continuing bit for bit."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("mindspore", reason="the MindSpore backend needs the `mindspore` extra")

import ref_numpy as R  # noqa: E402
from gptspec.compare import compare  # noqa: E402
from gptspec.tolerances import backward_reorder_bound, ms_backward_bounds  # noqa: E402
from ms_backend.train import Trainer  # noqa: E402
from ms_backend.train_state import OPTIMIZER_FILE, TRAINER_FILE  # noqa: E402

from .test_ms_train import float32_model, padded_batch  # noqa: E402

pytestmark = pytest.mark.mindspore

CONFIG = R.GPTConfig(arch="gpt2", n_vocab=40, n_ctx=12, n_embd=16, n_head=2, n_layer=2)


@pytest.fixture(scope="module")
def model():
    return float32_model(CONFIG, 6)


@pytest.fixture(scope="module")
def eager(model):
    return Trainer(CONFIG, model[0], mode="pynative", loss_scale=None)


def assert_grads_close(config, got, want, bound):
    flat = R.flatten_params(got)
    for name, w in R.flatten_params(want).items():
        c = compare(name, flat[name], w, bound)
        assert c.passed, c.describe()


# -- edge batches ----------------------------------------------------------------------------------

def test_a_fully_padded_row_changes_nothing(model, eager):
    """A row that is all padding (mask 0, every target ignored) adds no loss and no gradient: the
    batch gives the loss and gradients of the batch without it, and the spec's, finite."""
    params32, params64 = model
    inputs, targets, mask = padded_batch(CONFIG, [8, 5], 8, seed=3)
    inputs_p = np.concatenate([inputs, np.zeros_like(inputs[:1])])
    targets_p = np.concatenate([targets, np.full_like(targets[:1], -100)])
    mask_p = np.concatenate([mask, np.zeros_like(mask[:1])])
    loss, grads, _ = eager.grads_numpy(inputs, targets, mask)
    loss_p, grads_p, _ = eager.grads_numpy(inputs_p, targets_p, mask_p)
    assert all(np.isfinite(g).all() for g in R.flatten_params(grads_p).values())
    assert abs(loss_p - loss) <= 1e-6 * abs(loss)
    assert_grads_close(CONFIG, grads_p, grads, backward_reorder_bound(CONFIG, "float32", inputs_p.size))
    loss64, grads64 = R.loss_and_grads(CONFIG, params64, inputs_p, targets_p, attention_mask=mask_p)
    _, grads32 = R.loss_and_grads(CONFIG, params32, inputs_p, targets_p, attention_mask=mask_p)
    for name, g64 in R.flatten_params(grads64).items():
        derived, measured = ms_backward_bounds(CONFIG, inputs_p.size, R.flatten_params(grads32)[name], g64)
        for bound in (derived, measured):
            c = compare(name, R.flatten_params(grads_p)[name], g64, bound)
            assert c.passed, c.describe()


def test_a_batch_of_one_token(model, eager):
    """B = T = 1: one prediction from one token, as the spec computes it.  (Only the derived bound:
    the measured noise of sums of one or two terms is one rounding's luck, not a noise level.)"""
    params32, params64 = model
    loss, grads, _ = eager.grads_numpy([[7]], [[3]])
    loss64, grads64 = R.loss_and_grads(CONFIG, params64, [[7]], [[3]])
    _, grads32 = R.loss_and_grads(CONFIG, params32, [[7]], [[3]])
    assert abs(loss - loss64) <= 1e-5 * loss64
    for name, g64 in R.flatten_params(grads64).items():
        derived, _ = ms_backward_bounds(CONFIG, 1, R.flatten_params(grads32)[name], g64)
        c = compare(name, R.flatten_params(grads)[name], g64, derived)
        assert c.passed, c.describe()


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_a_batch_of_one_token_with_one_head(arch):
    """B = T = H = 1: the attention weights are [1, 1, 1, 1], whose matmul backward fails in
    MindSpore 2.10's ops.matmul (layers.attention uses BatchMatMul); graph mode too."""
    config = CONFIG.replace(arch=arch, n_head=1)
    params32, params64 = float32_model(config, 6)
    loss64, grads64 = R.loss_and_grads(config, params64, [[7]], [[3]])
    _, grads32 = R.loss_and_grads(config, params32, [[7]], [[3]])
    for mode in ("pynative", "graph"):
        loss, grads, _ = Trainer(config, params32, mode=mode, loss_scale=None).grads_numpy([[7]], [[3]])
        assert abs(loss - loss64) <= 1e-5 * loss64
        for name, g64 in R.flatten_params(grads64).items():
            derived, _ = ms_backward_bounds(config, 1, R.flatten_params(grads32)[name], g64)
            c = compare(name, R.flatten_params(grads)[name], g64, derived)
            assert c.passed, f"{mode}: {c.describe()}"


def test_an_all_ignored_batch_is_refused_with_the_spec_message(eager):
    targets = np.full((2, 4), -100)
    with pytest.raises(ValueError) as spec:
        R.loss_and_grads(CONFIG, R.init_params(CONFIG), np.ones((2, 4), np.int64), targets)
    with pytest.raises(ValueError) as ours:
        eager.step(np.ones((2, 4), np.int64), targets)
    assert str(ours.value) == str(spec.value)
    assert eager.step_count == 0


# -- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("inputs, targets, mask", [
    (np.ones((2, 4), np.int64), np.ones((2, 3), np.int64), None),  # shapes differ
    (np.ones((2, 4), np.int64), np.full((2, 4), 40), None),  # target outside the vocabulary
    (np.ones((2, 4), np.int64), np.ones((2, 4), np.float32), None),  # float targets
    (np.full((2, 4), 40), np.ones((2, 4), np.int64), None),  # input id outside the vocabulary
    (np.ones((2, 13), np.int64), np.ones((2, 13), np.int64), None),  # longer than n_ctx
    (np.ones((2, 4), np.int64), np.ones((2, 4), np.int64), np.full((2, 4), 2)),  # mask not 0/1
])
def test_bad_batches_get_the_spec_message(eager, inputs, targets, mask):
    with pytest.raises((ValueError, TypeError)) as spec:
        R.loss_and_grads(CONFIG, R.init_params(CONFIG), inputs, targets, attention_mask=mask)
    with pytest.raises(type(spec.value)) as ours:
        eager.grads_numpy(inputs, targets, mask)
    assert str(ours.value) == str(spec.value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(amp_level="O4"), "amp_level must be one of"),
    (dict(amp_level="O2", dtype="bfloat16"), "cannot compute matmuls in bfloat16"),
    (dict(dtype="float16"), "needs an amp_level of O1, O2 or O3"),
    (dict(mode="eager"), "mode must be one of"),
    (dict(loss_scale="static"), "loss_scale must be"),
    (dict(loss_scale=0.5), "loss_scale must be"),
    (dict(loss_scale=float("inf")), "loss_scale must be"),
    (dict(initial_scale=0.5), "initial_scale must be a finite number >= 1"),
    (dict(scale_window=0), "scale_window must be a positive integer"),
    (dict(lr=-1e-3), "lr must be a finite number >= 0"),
    (dict(betas=(0.9, 1.0)), r"betas\[1\] must lie in \[0, 1\)"),
    (dict(eps=0.0), "eps must be a finite number > 0"),
    (dict(weight_decay=-0.1), "weight_decay must be a finite number >= 0"),
    (dict(max_grad_norm=0.0), "max_norm must be a number > 0"),
    (dict(warmup_steps=5, total_steps=3), "warmup_steps must be an int in"),
    (dict(schedule="step"), "schedule must be one of"),
    (dict(dropout=1.0), r"dropout must be a probability in \[0, 1\)"),
])
def test_bad_settings_are_refused(model, kwargs, message):
    if kwargs.get("dtype") == "bfloat16":
        from ms_backend.device import _matmul_error, device_target
        if _matmul_error(device_target(), "bfloat16") is None:
            pytest.skip("this device has bfloat16 matmuls")
    with pytest.raises(ValueError, match=message):
        Trainer(CONFIG, model[0], **kwargs)


def test_bad_params_get_the_spec_message(model):
    params = R.unflatten_params({k: v for k, v in R.flatten_params(model[0]).items() if k != "wpe"})
    with pytest.raises(ValueError) as spec:
        R.check_params(CONFIG, params)
    with pytest.raises(ValueError) as ours:
        Trainer(CONFIG, params)
    assert str(ours.value) == str(spec.value)


# -- save / load -------------------------------------------------------------------------------------

def test_save_and_load_resume_bit_for_bit(model, tmp_path):
    """A step, save, then 2 more steps by the original, by Trainer.load and by resume() into a fresh
    Trainer: identical losses, weights and moments (fp16 O2 with dynamic scaling: the scale too)."""
    settings = dict(amp_level="O2", mode="pynative", lr=1e-2, warmup_steps=1, total_steps=6, weight_decay=0.1,
                    max_grad_norm=1.0, scale_window=2)
    batch = padded_batch(CONFIG, [9, 6], 9, seed=5)
    original = Trainer(CONFIG, model[0], **settings)
    original.step(*batch)
    original.save(tmp_path)
    loaded = Trainer.load(tmp_path)
    fresh = Trainer(CONFIG, model[0], **settings)
    fresh.resume(tmp_path)
    runs = [[t.step(*batch) for _ in range(2)] for t in (original, loaded, fresh)]
    assert runs[0] == runs[1] == runs[2]
    assert original.step_count == loaded.step_count == fresh.step_count == 3
    for trainer in (loaded, fresh):
        for mine, theirs in ((original.params_numpy(), trainer.params_numpy()),
                             (original.optimizer_state_numpy()["m"], trainer.optimizer_state_numpy()["m"]),
                             (original.optimizer_state_numpy()["v"], trainer.optimizer_state_numpy()["v"])):
            for name, a in R.flatten_params(mine).items():
                assert np.array_equal(a, R.flatten_params(theirs)[name]), name
        assert trainer.loss_scale == original.loss_scale


def test_resume_into_a_trainer_whose_graph_already_ran(model, tmp_path):
    """resume() after the compiled step has run: the graph must compute with the restored weights,
    moments and loss scale (Parameter.set_data swapped the tensors under a compiled graph, which
    went on from its own state: one lr step off, found by gptspec parity --train's overflow)."""
    settings = dict(amp_level="O2", mode="graph", lr=1e-2, weight_decay=0.1, max_grad_norm=1.0, scale_window=2)
    batch = padded_batch(CONFIG, [9, 6], 9, seed=5)
    original = Trainer(CONFIG, model[0], **settings)
    original.step(*batch)
    original.save(tmp_path)
    reused = Trainer(CONFIG, R.cast_params(model[0], np.float32), **settings)
    reused.step(*batch)
    reused.step(*batch)  # its own state now differs from the saved one: weights, moments, scale counter
    reused.resume(tmp_path)
    assert [reused.step(*batch) for _ in range(2)] == [original.step(*batch) for _ in range(2)]
    for name, a in R.flatten_params(original.params_numpy()).items():
        assert np.array_equal(a, R.flatten_params(reused.params_numpy())[name]), name
    reused.scaler.restore({"scale": 2.0 ** 100, "counter": 0})  # overflows any float16 gradient
    result = reused.step(*batch)
    assert result.skipped and reused.loss_scale == 2.0 ** 99


def test_resume_refuses_another_config_or_missing_state(model, tmp_path):
    trainer = Trainer(CONFIG, model[0], mode="pynative")
    trainer.save(tmp_path / "run")
    other = CONFIG.replace(n_layer=1)
    stranger = Trainer(other, R.init_params(other), mode="pynative")
    with pytest.raises(ValueError, match="holds a model of another config"):
        stranger.resume(tmp_path / "run")
    (tmp_path / "run" / OPTIMIZER_FILE).unlink()
    for resume in (trainer.resume, Trainer.load):
        with pytest.raises(ValueError, match=f"has no optimizer state \\({OPTIMIZER_FILE} is missing\\)"):
            resume(tmp_path / "run")
    saved = json.loads((tmp_path / "run" / TRAINER_FILE).read_text())
    assert saved["settings"]["mode"] == "pynative" and saved["step"] == 0


def test_resume_refuses_a_checkpoint_of_the_earlier_format_or_another_objective(model, tmp_path):
    """Format 1 (a saved dropout generator, the head as a flag) cannot be resumed exactly by this
    Trainer: refused, saying what to do; a language model's checkpoint does not resume into a
    classifier's Trainer."""
    from ms_backend import Classifier

    trainer = Trainer(CONFIG, model[0], mode="pynative")
    trainer.save(tmp_path / "run")
    classifier = Trainer(CONFIG, model[0], mode="pynative", objective=Classifier(R.init_classifier(CONFIG, 2)))
    with pytest.raises(ValueError, match=r"was trained on the objective \{'name': 'lm'\}"):
        classifier.resume(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / TRAINER_FILE).read_text())
    (tmp_path / "run" / TRAINER_FILE).write_text(json.dumps({**meta, "format": "gptspec-ms-trainer-1"}))
    for resume in (trainer.resume, Trainer.load):
        with pytest.raises(ValueError, match=r"has format 'gptspec-ms-trainer-1', expected 'gptspec-ms-trainer-2' "
                                             r"\(a checkpoint of an earlier gptspec"):
            resume(tmp_path / "run")
