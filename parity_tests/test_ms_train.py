"""ms_backend.Trainer against the spec: gradients per tensor (float32 autodiff vs the float64 spec),
AdamW updates with warmup, decay and clipping, PyNative vs graph, edge batches, bad input.

Graph compilation dominates the cost (~5 s for the gradient graph, ~15 s for a whole training step
of a tiny model on this CPU), so the graph-mode tests share one Trainer per architecture and fixed
shapes; the hypothesis property runs in PyNative.

    python -m parity_tests.test_ms_train     prints the per-tensor gradient table (both archs)
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("mindspore", reason="the MindSpore backend needs the `mindspore` extra")

import ref_numpy as R  # noqa: E402
from gptspec.compare import compare  # noqa: E402
from gptspec.tolerances import backward_bound, forward_bound, ms_backward_bounds, ms_update_bound  # noqa: E402
from ms_backend.train import Trainer  # noqa: E402
from ref_numpy.data import pad_or_truncate, shift_targets  # noqa: E402
from ref_numpy.optim import adamw_step, clip_grad_norm, lr_at  # noqa: E402

from .strategies import configs, model_for  # noqa: E402

pytestmark = pytest.mark.mindspore

CONFIGS = {arch: R.GPTConfig(arch=arch, n_vocab=48, n_ctx=16, n_embd=24, n_head=3, n_layer=2)
           for arch in ("gpt1", "gpt2")}


def padded_batch(config, lengths, length, seed, side="right"):
    """(inputs, targets, attention_mask) [B, length - 1] from rows of the given lengths."""
    rng = np.random.default_rng(seed)
    rows = [rng.integers(0, config.n_vocab, n) for n in lengths]
    ids, mask = pad_or_truncate(rows, length, 0, side=side)
    return shift_targets(ids, mask)


def float32_model(config, seed):
    """(float32 params, the same numbers in float64): the reference sees exactly the Trainer's weights."""
    params32 = R.cast_params(model_for(config, seed), np.float32)
    return params32, R.cast_params(params32, np.float64)


def gradient_comparisons(trainer, config, params32, params64, batch):
    """[(Comparison vs the derived bound, Comparison vs the measured noise)] per tensor, and the losses."""
    inputs, targets, mask = batch
    loss, grads, _ = trainer.grads_numpy(inputs, targets, mask)
    loss64, grads64 = R.loss_and_grads(config, params64, inputs, targets, attention_mask=mask)
    _, grads32 = R.loss_and_grads(config, params32, inputs, targets, attention_mask=mask)
    flat, flat64, flat32 = (R.flatten_params(g) for g in (grads, grads64, grads32))
    assert list(flat) == list(flat64), "grads_numpy must have the params dict's structure"
    rows = []
    for name, reference in flat64.items():
        derived, measured = ms_backward_bounds(config, inputs.size, flat32[name], reference)
        rows.append((compare(name, flat[name], reference, derived), compare(name, flat[name], reference, None,
                                                                            measured)))
    return rows, loss, loss64


def assert_gradients_match(trainer, config, params32, params64, batch, *, measured_noise=True):
    """Every tensor within the derived bound and (measured_noise) 8x the spec's own float32 noise.
    The noise is a noise level only over many roundings: the hypothesis configs go down to one-
    element tensors and one-token batches, where it is one rounding's luck, so they use the
    derived bound alone."""
    rows, loss, loss64 = gradient_comparisons(trainer, config, params32, params64, batch)
    failures = [c.describe() for derived, noise in rows for c in ((derived, noise) if measured_noise else (derived,))
                if not c.passed]
    assert not failures, "\n".join(failures)
    loss_bound = forward_bound(config, "float32")
    assert abs(loss - loss64) <= loss_bound.allowed(loss64), (loss, loss64, loss_bound.reason)


# -- gradients -------------------------------------------------------------------------------------

@settings(max_examples=4)
@given(config=configs(max_layers=2, max_heads=2, max_head_dim=8, max_ctx=8, max_vocab=32),
       side=st.sampled_from(["right", "left"]), seed=st.integers(0, 2**16), data=st.data())
def test_gradients_match_the_float64_spec_per_tensor(config, side, seed, data):
    """PyNative autodiff on small random configs of both architectures, padded batches."""
    length = data.draw(st.integers(2, config.n_ctx))
    lengths = data.draw(st.lists(st.integers(2, length), min_size=1, max_size=3))
    params32, params64 = float32_model(config, seed)
    trainer = Trainer(config, params32, mode="pynative", loss_scale=None)
    assert_gradients_match(trainer, config, params32, params64, padded_batch(config, lengths, length, seed, side),
                           measured_noise=False)


GRAPH_BATCH = dict(lengths=[9, 5, 2], length=9, seed=11)  # right padding: rows of 8, 4 and 1 targets
UPDATE_SETTINGS = dict(lr=3e-2, warmup_steps=2, total_steps=8, min_lr=1e-3, weight_decay=0.1, max_grad_norm=0.5,
                       loss_scale=None)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_graph_gradients_match_the_float64_spec(arch):
    config = CONFIGS[arch]
    params32, params64 = float32_model(config, 3)
    trainer = Trainer(config, params32, mode="graph", loss_scale=None)
    assert_gradients_match(trainer, config, params32, params64, padded_batch(config, **GRAPH_BATCH))


@pytest.fixture(scope="module")
def graph_trainer():
    """One compiled gpt2 Trainer shared by the update tests (the optimizer does not depend on the arch)."""
    config = CONFIGS["gpt2"]
    return config, Trainer(config, float32_model(config, 3)[0], mode="graph", **UPDATE_SETTINGS)


# -- the update --------------------------------------------------------------------------------------

def spec_update(trainer, config, grads, step):
    """The spec's clip_grad_norm + adamw_step in float64 from the Trainer's current weights, moments
    and the given gradients: what the Trainer's next update must compute."""
    h = trainer.hyper
    state = trainer.optimizer_state_numpy()
    spec_state = {"step": state["step"], "m": R.cast_params(state["m"], np.float64),
                  "v": R.cast_params(state["v"], np.float64)}
    params = R.cast_params(trainer.params_numpy(), np.float64)
    clipped, norm = clip_grad_norm(R.cast_params(grads, np.float64), h["max_grad_norm"])
    lr = lr_at(step, max_lr=h["lr"], warmup_steps=h["warmup_steps"], total_steps=h["total_steps"],
               min_lr=h["min_lr"], schedule=h["schedule"])
    new_params, _ = adamw_step(params, clipped, spec_state, lr=lr, betas=h["betas"], eps=h["eps"],
                               weight_decay=h["weight_decay"])
    return new_params, norm, lr


def assert_updates_match_the_spec(trainer, config, batch, n_steps):
    """Each of the next n_steps updates equals the spec's clip_grad_norm + adamw_step from the same
    gradients and state within ms_update_bound, and each step's loss the float64 spec's loss at the
    Trainer's weights within the forward bound.  Why from the same gradients: see ms_update_bound."""
    inputs, targets, mask = batch
    for step in range(trainer.step_count, trainer.step_count + n_steps):
        before = R.cast_params(trainer.params_numpy(), np.float64)
        loss64 = R.cross_entropy(R.forward(config, before, inputs, attention_mask=mask)[0], targets)
        _, grads, _ = trainer.grads_numpy(inputs, targets, mask)
        want, norm, lr = spec_update(trainer, config, grads, step)
        result = trainer.step(inputs, targets, mask)
        assert not result.skipped and result.lr == lr
        assert norm > trainer.hyper["max_grad_norm"], "the test must exercise clipping"
        assert abs(result.grad_norm - norm) <= 1e-5 * norm, (result.grad_norm, norm)
        assert abs(result.loss - loss64) <= forward_bound(config, "float32").allowed(loss64)
        got = R.flatten_params(trainer.params_numpy())
        bound = ms_update_bound(sum(g.size for g in got.values()), len(got), lr)
        failures = [c.describe() for name, w in R.flatten_params(want).items()
                    if not (c := compare(f"step {step} {name}", got[name], w, bound)).passed]
        assert not failures, "\n".join(failures)
        start = R.flatten_params(before)
        moved = max(np.abs(got[k] - start[k]).max() for k in got)
        assert moved > 100 * bound.allowed(1.0), "the update must move the weights far beyond the bound"


def test_adamw_steps_with_warmup_decay_and_clipping_match_the_spec(graph_trainer):
    """4 updates: 2 in the warmup, then cosine decay to min_lr; weight decay; clipping active."""
    config, trainer = graph_trainer
    assert_updates_match_the_spec(trainer, config, padded_batch(config, **GRAPH_BATCH), 4)


def test_pynative_computes_what_graph_computes(graph_trainer):
    """A PyNative Trainer on the graph Trainer's current weights: the same loss and gradients (within
    the float32 backward bound), and its own next update is the spec's too.  (Weights after several
    updates of both are not compared: where a gradient is zero up to rounding -- the key bias's,
    exactly, since softmax ignores a shift of all scores -- Adam turns the rounding's sign into
    +-lr.)"""
    config, graph = graph_trainer
    eager = Trainer(config, graph.params_numpy(), mode="pynative", **UPDATE_SETTINGS)
    batch = padded_batch(config, **GRAPH_BATCH)
    (loss_graph, g_graph, _), (loss_eager, g_eager, _) = graph.grads_numpy(*batch), eager.grads_numpy(*batch)
    assert abs(loss_graph - loss_eager) <= 2 * forward_bound(config, "float32").allowed(loss_graph)
    for name, g in R.flatten_params(g_graph).items():
        derived, _ = ms_backward_bounds(config, batch[0].size, g, g)
        c = compare(name, R.flatten_params(g_eager)[name], g, derived)
        assert c.passed, c.describe()
    assert_updates_match_the_spec(eager, config, batch, 1)


def gradient_table():
    """The per-tensor gradient error table of both architectures (printed by __main__)."""
    lines = []
    for arch, config in sorted(CONFIGS.items()):
        params32, params64 = float32_model(config, 3)
        trainer = Trainer(config, params32, mode="graph", loss_scale=None)
        rows, loss, loss64 = gradient_comparisons(trainer, config, params32, params64,
                                                  padded_batch(config, **GRAPH_BATCH))
        lines.append(f"{arch} {config}: loss {loss:.7f} vs float64 {loss64:.7f}")
        lines.append(f"{'tensor':28s} {'max abs err':>11s} {'allowed':>9s} {'err/allowed':>11s} {'err/noise':>9s}")
        for derived, measured in rows:
            lines.append(f"{derived.name:28s} {derived.max_abs:11.3g} {derived.allowed:9.3g} "
                         f"{derived.bound_ratio:11.3g} {measured.noise_ratio:9.3g}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(gradient_table())


@pytest.mark.slow
def test_124m_gradients_match_the_float64_spec():
    """The 124M config once (1 x 32 tokens, random GPT-2 init): every gradient tensor of the graph
    Trainer within backward_bound of the float64 spec's (the measured-noise bound is not used: the
    float32 spec's backward on 124M would double the test's time and memory)."""
    config = R.GPTConfig.from_name("gpt2")
    params32 = R.init_params(config, seed=0)
    ids = np.random.default_rng(0).integers(0, config.n_vocab, (1, 33))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    loss, grads, _ = Trainer(config, params32, mode="graph", loss_scale=None).grads_numpy(inputs, targets)
    loss64, grads64 = R.loss_and_grads(config, R.cast_params(params32, np.float64), inputs, targets)
    assert abs(loss - loss64) <= forward_bound(config, "float32").allowed(loss64)
    flat = R.flatten_params(grads)
    bound = backward_bound(config, "float32", inputs.size)
    failures = [c.describe() for name, g in R.flatten_params(grads64).items()
                if not (c := compare(name, flat[name], g, bound)).passed]
    assert not failures, "\n".join(failures)
