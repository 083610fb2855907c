"""Mixed-precision training with loss scaling: AMP gradients vs the spec, overflow skips the step
bit for bit and halves the scale, the scale follows a NumPy model of the dynamic scaler, and whole
fp16 runs at O1-O3 follow the float32 loss curve (slow).

    python -m parity_tests.test_ms_train_amp    prints the AMP-vs-float32 loss-curve comparison
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ms = pytest.importorskip("mindspore", reason="the MindSpore backend needs the `mindspore` extra")

import ref_numpy as R  # noqa: E402
from gptspec.compare import compare  # noqa: E402
from gptspec.tolerances import amp_backward_bound, amp_loss_curve_bound  # noqa: E402
from ms_backend.scaler import LossScale  # noqa: E402
from ms_backend.train import Trainer  # noqa: E402
from ref_numpy.data import pad_or_truncate, shift_targets  # noqa: E402

from .test_ms_train import float32_model, padded_batch  # noqa: E402

pytestmark = pytest.mark.mindspore

CONFIG = R.GPTConfig(arch="gpt2", n_vocab=64, n_ctx=16, n_embd=32, n_head=2, n_layer=2)


def scaler_model(initial, window, finite_flags):
    """NumPy model of the dynamic loss scaler (mindspore.amp.DynamicLossScaler.adjust): the scale
    used by each step.  Overflow: halve (not below 1), reset the count; finite: count, and double
    after `window` finite steps in a row (if the double is a finite float32)."""
    scale, count, used = np.float32(initial), 0, []
    for finite in finite_flags:
        used.append(float(scale))
        if not finite:
            scale, count = max(np.float32(1), scale / np.float32(2)), 0
            continue
        if count == window - 1 and np.isfinite(scale * np.float32(2)):
            scale = scale * np.float32(2)
        count = (count + 1) % window
    return used, float(scale)


@settings(max_examples=10)
@given(flags=st.lists(st.booleans(), min_size=1, max_size=40), window=st.integers(1, 4),
       initial=st.sampled_from([1.0, 2.0 ** 10, 2.0 ** 126]))
def test_dynamic_scale_follows_the_state_machine(flags, window, initial):
    """LossScale.adjust (inside mindspore.jit, as in the training step) over a random pattern of
    overflows gives the model's sequence, including the floor at 1 and the float32 ceiling."""
    scaler = LossScale("dynamic", initial, window)

    @ms.jit
    def adjust(finite):
        return scaler.adjust(finite)

    used = []
    for finite in flags:
        used.append(scaler.value)
        adjust(ms.Tensor(finite))
    assert (used, scaler.value) == scaler_model(initial, window, flags)


def test_overflow_skips_exactly_that_step_and_halves_the_scale():
    """fp16 at O2 from a scale of 2^40: the scaled backward overflows, every such step leaves the
    weights and AdamW's moments and count bit-identical and halves the scale, until the scale fits;
    the skipped/applied pattern drives the model's scale sequence exactly."""
    params32, _ = float32_model(CONFIG, 1)
    trainer = Trainer(CONFIG, params32, amp_level="O2", lr=1e-2, initial_scale=2.0 ** 40, scale_window=3)
    batch = padded_batch(CONFIG, [12, 7, 3], 12, seed=4)
    flags, scales = [], []
    for _ in range(40):
        before, state = trainer.params_numpy(), trainer.optimizer_state_numpy()
        result = trainer.step(*batch)
        flags.append(not result.skipped)
        scales.append(result.loss_scale)
        after, state_after = trainer.params_numpy(), trainer.optimizer_state_numpy()
        same = all(np.array_equal(a, b) for a, b in zip(R.flatten_params(before).values(),
                                                        R.flatten_params(after).values()))
        if result.skipped:
            assert not np.isfinite(result.grad_norm)
            assert same and state_after["step"] == state["step"]
            assert all(np.array_equal(a, b) for key in "mv" for a, b in
                       zip(R.flatten_params(state[key]).values(), R.flatten_params(state_after[key]).values()))
            assert trainer.loss_scale == max(1.0, result.loss_scale / 2)
        else:
            assert not same and state_after["step"] == state["step"] + 1
        if len(flags) > 12 and all(flags[-6:]):
            break
    assert not flags[0] and any(flags), f"expected overflow first, then updates: {flags}"
    assert flags.count(False) >= 10, "2^40 should need at least 10 halvings before fp16 gradients fit"
    assert (scales, trainer.loss_scale) == scaler_model(2.0 ** 40, 3, flags)
    assert all(np.isfinite(v).all() for v in R.flatten_params(trainer.params_numpy()).values())


@pytest.mark.parametrize("amp_level", ["O1", "O3"])
def test_amp_gradients_match_the_float64_spec(amp_level):
    """grads_numpy under fp16 AMP with the (dynamic, 2^16) loss scale divided out, per tensor
    within amp_backward_bound: a missing unscale or a scale applied twice is off by 2^16."""
    params32, params64 = float32_model(CONFIG, 2)
    trainer = Trainer(CONFIG, params32, amp_level=amp_level, mode="pynative")
    inputs, targets, mask = padded_batch(CONFIG, [10, 6], 10, seed=8)
    loss, grads, _ = trainer.grads_numpy(inputs, targets, mask)
    loss64, grads64 = R.loss_and_grads(CONFIG, params64, inputs, targets, attention_mask=mask)
    bound = amp_backward_bound(CONFIG, amp_level)
    flat = R.flatten_params(grads)
    failures = [c.describe() for name, g in R.flatten_params(grads64).items()
                if not (c := compare(name, flat[name], g, bound)).passed]
    assert not failures, "\n".join(failures)
    assert trainer.loss_scale == 2.0 ** 16


def memorisation_batch():
    """8 rotations of one random 8-token pattern, 16 tokens each: a small model fits them in ~100 steps."""
    base = np.random.default_rng(0).integers(0, CONFIG.n_vocab, 8)
    rows = [np.roll(np.tile(base, 3), -k)[:16] for k in range(8)]
    ids, mask = pad_or_truncate(rows, 16, 0)
    return shift_targets(ids, mask)


def loss_curve(amp_level, n_steps):
    """(losses after each number of applied updates, skipped steps, final weights) of a run."""
    trainer = Trainer(CONFIG, R.init_params(CONFIG, 0), amp_level=amp_level, lr=3e-3, warmup_steps=20,
                      total_steps=n_steps, weight_decay=0.01, max_grad_norm=1.0,
                      loss_scale=None if amp_level == "O0" else "dynamic", scale_window=50)
    batch = memorisation_batch()
    losses, skipped = [], 0
    for _ in range(n_steps):
        result = trainer.step(*batch)
        if result.skipped:
            skipped += 1
        else:
            losses.append(result.loss)
    return np.array(losses), skipped, trainer.params_numpy()


def curve_comparison(n_steps=300):
    """{level: (max |AMP - float32| after equal applied updates, allowed at that step, skips, final loss)}."""
    reference, _, _ = loss_curve("O0", n_steps)
    rows = {}
    for level in ("O1", "O2", "O3"):
        losses, skipped, params = loss_curve(level, n_steps)
        assert all(np.isfinite(v).all() for v in R.flatten_params(params).values()), f"{level}: NaN/Inf weights"
        n = len(losses)
        diff = np.abs(losses - reference[:n])
        allowed = np.array([amp_loss_curve_bound(CONFIG, level).allowed(v) for v in reference[:n]])
        worst = int(np.argmax(diff / allowed))
        rows[level] = (float(diff.max()), float(diff[worst]), float(allowed[worst]), skipped,
                       float(losses[-1]), float(reference[n - 1]), bool((diff <= allowed).all()))
    return rows


@pytest.mark.slow
def test_fp16_runs_follow_the_float32_loss_curve():
    """300 steps at O1, O2, O3 in fp16 with dynamic loss scaling: never a NaN/Inf weight, and after
    each number of applied updates the loss within amp_loss_curve_bound of the float32 run's."""
    for level, (_, _, _, skipped, last, reference_last, within) in curve_comparison().items():
        assert within, f"{level} left the float32 loss curve"
        # At most one overflow per doubling of the scale (the halving returns it to a scale that did
        # not overflow): 300 // scale_window = 6 doublings; 2^16 itself fits this model's fp16 grads.
        assert skipped <= 300 // 50, f"{level}: {skipped} skipped steps"
        assert last < 0.1 * np.log(CONFIG.n_vocab), f"{level} did not fit the batch (final loss {last})"


if __name__ == "__main__":
    for level, (worst, at_worst, allowed, skipped, last, ref_last, within) in curve_comparison().items():
        print(f"{level}: max |loss - float32 loss| {worst:.3g}; worst/allowed {at_worst:.3g}/{allowed:.3g}; "
              f"skipped {skipped}; final loss {last:.6f} (float32 {ref_last:.6f}); {'ok' if within else 'FAIL'}")
