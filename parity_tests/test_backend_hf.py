"""The hf backend (gptspec/backends/hf.py) through the backend protocol, against the float64 spec.

Every check goes through gptspec.backend.BackendUnderTest, as `gptspec parity --backend hf` does:
what it provides per arch and dtype; every traced tensor of a batch of [a prompt, the prompt left
padded] within the derived bounds (float32, and float16/bfloat16 as O3); GPT-2's KV cache against
full recomputation; the gradients within backward_bound; each AdamW update within ms_update_bound of
the spec's clip_grad_norm + adamw_step from the backend's own gradients; GPT-1's classifier
objective; and the errors for bad options.

    python -m parity_tests.test_backend_hf     prints the worst err/bound of every check
"""
from __future__ import annotations

import numpy as np
import pytest

import ref_numpy as R
from gptspec.backend import BackendUnderTest, make_backend, trace_shapes
from gptspec.compare import compare
from gptspec.parity import (check_greedy, compare_traces, padded_batch, precision_bound, probe_params,
                            reference_layer_norm_condition)
from gptspec.tolerances import (amp_backward_bound, backward_bound, forward_bound, grad_norm_bound, ms_backward_bounds,
                                ms_update_bound, reorder_bound)
from ref_numpy.data import pad_or_truncate, shift_targets
from ref_numpy.optim import adamw_init, adamw_step, clip_grad_norm

pytest.importorskip("torch", reason="the hf backend needs the oracle extra (torch)")
pytest.importorskip("transformers", reason="the hf backend needs the oracle extra (transformers)")
pytestmark = pytest.mark.oracle

from gptspec.backends.hf import factory  # noqa: E402  (needs torch)

CONFIGS = {arch: R.GPTConfig(arch=arch, n_vocab=61, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
           for arch in ("gpt2", "gpt1")}
DTYPES = ("float32", "float16", "bfloat16")
PROMPT = np.random.default_rng(5).integers(0, 61, 12)
PADDING = 5
HYPER = dict(lr=3e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, max_grad_norm=0.5)


def backend(arch, dtype="float32"):
    config = CONFIGS[arch]
    return BackendUnderTest(factory(config, probe_params(config), dtype=dtype), config, "hf")


def params64(arch):
    return R.cast_params(probe_params(CONFIGS[arch]), np.float64)


def training_batch(config, seed=3):
    """(inputs, targets with -100, attention_mask) [3, 11]: rows of 12, 7 and 3 tokens, left padded."""
    rng = np.random.default_rng(seed)
    ids, mask = pad_or_truncate([rng.integers(0, config.n_vocab, n) for n in (12, 7, 3)], 12, 0, side="left")
    return shift_targets(ids, mask)


# -- what it provides --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", CONFIGS)
def test_provides_exactly_what_it_implements(arch, dtype):
    """GPT-2 has a cache, GPT-1 (OpenAIGPTModel has no KV cache) does not; only float32 trains; no
    loss scaling (overflow) and no dtype log anywhere."""
    wrapped = backend(arch, dtype)
    assert wrapped.provides == {"trace": True, "cache": arch == "gpt2", "dtype_log": False, "gradients": True,
                                "optimizer": dtype == "float32", "overflow": False, "classifier": True}
    info = wrapped.describe()
    assert (info["name"], info["device"], info["dtype"]) == ("hf-transformers", "cpu", dtype)
    assert info["amp_level"] == ("O0" if dtype == "float32" else "O3")
    assert info["version"].startswith("transformers ") and ", torch " in info["version"]


# -- forward: every traced tensor -----------------------------------------------------------------------

def trace_rows(arch, dtype):
    """compare_traces rows of [the prompt, the prompt left padded by PADDING] vs the float64 spec,
    plus the returned logits' rows."""
    config, wrapped, reference_params = CONFIGS[arch], backend(arch, dtype), params64(arch)
    ids, mask = padded_batch(PROMPT, PADDING)
    reference, actual = {}, {}
    R.forward(config, reference_params, ids, attention_mask=mask, trace=reference)
    logits = wrapped.forward(ids, mask, trace=actual)
    condition = reference_layer_norm_condition(config, reference_params, ids, mask)
    rows = compare_traces(config, reference, actual, amp_level=wrapped.amp_level, dtype=dtype, padding=PADDING,
                          layer_norm_condition=condition)
    bound = precision_bound(config, wrapped.amp_level, dtype)
    real = mask.astype(bool)
    rows.append(compare("logits (forward's return)", logits[real], reference["logits"][real], bound))
    return rows


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", CONFIGS)
def test_every_traced_tensor_within_the_derived_bound(arch, dtype):
    rows = trace_rows(arch, dtype)
    names = {row.name.removeprefix("padded: ") for row in rows}
    assert set(trace_shapes(CONFIGS[arch], 2, len(PROMPT), len(PROMPT))) <= names
    failures = [row.describe() for row in rows if not row.passed]
    assert not failures, "\n".join(failures)


def test_trace_hooks_are_removed_after_the_call():
    wrapped = backend("gpt2")
    wrapped.forward(PROMPT, trace={})
    model = wrapped.backend.model
    assert not any(module._forward_hooks for module in model.modules())


# -- the cache --------------------------------------------------------------------------------------------

def test_gpt2_cache_equals_full_recompute_with_left_padding():
    """The prompt through the cache in three pieces (positions continue over the whole mask) against
    one forward over everything; continuing the same `past` twice gives the same logits (the backend
    never grows a cache it handed out)."""
    config, wrapped = CONFIGS["gpt2"], backend("gpt2")
    ids, mask = padded_batch(PROMPT, PADDING)
    full = wrapped.forward(ids, mask)
    half = 7
    first, past = wrapped.forward_cached(ids[:, :half], mask[:, :half], None)
    second, present = wrapped.forward_cached(ids[:, half:-1], mask[:, :-1], past)
    again, _ = wrapped.forward_cached(ids[:, half:-1], mask[:, :-1], past)
    real = mask.astype(bool)
    bound = reorder_bound(config, "float32")
    for name, got, want, where in (("first half", first, full[:, :half], real[:, :half]),
                                   ("second half", second, full[:, half:-1], real[:, half:-1]),
                                   ("second half again", again, full[:, half:-1], real[:, half:-1])):
        row = compare(name, got[where], want[where], bound)
        assert row.passed, row.describe()
    last, _ = wrapped.forward_cached(ids[:, -1:], mask, present)  # the new cache continues in turn
    row = compare("last token after both halves", last[:, 0], full[:, -1], bound)
    assert row.passed, row.describe()


@pytest.mark.parametrize("arch", CONFIGS)
def test_greedy_generation_equals_the_spec(arch):
    """BackendUnderTest.generate: GPT-2 steps through the cache one token at a time, GPT-1 recomputes
    the whole sequence per token; a divergence is allowed only at a near tie (check_greedy)."""
    config, wrapped = CONFIGS[arch], backend(arch)
    prompt = PROMPT[:6]
    tokens = wrapped.generate(prompt, 6, greedy=True)[len(prompt):]
    spec = R.generate(config, params64(arch), prompt, 6, greedy=True)[len(prompt):]
    check = check_greedy(config, params64(arch), prompt, spec, tokens, precision_bound(config))
    assert check.passed, check.describe()
    assert check.distinct_tokens > 1, "a continuation repeating one token compares almost nothing"


def test_gpt1_takes_no_past():
    wrapped = backend("gpt1")
    with pytest.raises(ValueError, match="KV-cache"):
        wrapped.forward_cached(PROMPT, None, None)
    with pytest.raises(TypeError):
        wrapped.backend.forward(PROMPT[None], None, past=None)


def test_cache_refuses_a_foreign_past_and_a_wrong_mask():
    wrapped = backend("gpt2")
    _, past = wrapped.forward_cached(PROMPT[None, :4], None, None)
    with pytest.raises(TypeError, match="DynamicCache"):
        wrapped.forward_cached(PROMPT[None, 4:6], None, [(np.zeros(1), np.zeros(1))])
    with pytest.raises(ValueError, match="attention_mask has shape"):
        wrapped.forward_cached(PROMPT[None, 4:6], np.ones((1, 2), np.int64), past)
    with pytest.raises(ValueError, match="past holds 1 rows"):
        wrapped.forward_cached(np.stack([PROMPT[4:6]] * 2), None, past)


# -- gradients ---------------------------------------------------------------------------------------------

def gradient_rows(arch):
    """[(Comparison vs backward_bound, Comparison vs the measured float32 noise)] per tensor, and the losses."""
    config, wrapped = CONFIGS[arch], backend(arch)
    params32 = probe_params(config)
    inputs, targets, mask = training_batch(config)
    loss, grads = wrapped.loss_and_grads(inputs, targets, mask, params_like=params32)
    loss64, grads64 = R.loss_and_grads(config, params64(arch), inputs, targets, attention_mask=mask)
    _, grads32 = R.loss_and_grads(config, params32, inputs, targets, attention_mask=mask)
    flat, flat32 = R.flatten_params(grads), R.flatten_params(grads32)
    rows = []
    for name, reference in R.flatten_params(grads64).items():
        derived, measured = ms_backward_bounds(config, inputs.size, flat32[name], reference)
        rows.append((compare(name, flat[name], reference, derived), compare(name, flat[name], reference, None,
                                                                            measured)))
    return rows, loss, loss64


@pytest.mark.parametrize("arch", CONFIGS)
def test_gradients_within_backward_bound_of_the_float64_spec(arch):
    rows, loss, loss64 = gradient_rows(arch)
    failures = [c.describe() for pair in rows for c in pair if not c.passed]
    assert not failures, "\n".join(failures)
    assert abs(loss - loss64) <= forward_bound(CONFIGS[arch], "float32").allowed(loss64), (loss, loss64)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("arch", CONFIGS)
def test_low_precision_gradients_within_the_amp_backward_bound(arch, dtype):
    """The whole model in the low dtype (O3), no loss scaling: float32 NumPy gradients, each tensor
    within amp_backward_bound of the float64 spec's."""
    config, wrapped = CONFIGS[arch], backend(arch, dtype)
    inputs, targets, mask = training_batch(config)
    _, grads = wrapped.loss_and_grads(inputs, targets, mask, params_like=probe_params(config))
    _, grads64 = R.loss_and_grads(config, params64(arch), inputs, targets, attention_mask=mask)
    bound, flat = amp_backward_bound(config, "O3", dtype), R.flatten_params(grads)
    assert all(g.dtype == np.float32 for g in flat.values())
    failures = [c.describe() for name, g in R.flatten_params(grads64).items()
                if not (c := compare(name, flat[name], g, bound)).passed]
    assert not failures, "\n".join(failures)


# -- the update -------------------------------------------------------------------------------------------

def update_rows(arch, n_steps=2):
    """Per step: the spec's clip_grad_norm + adamw_step in float64 from the backend's weights before the
    step and its own gradients there (loss_and_grads), with the moments the spec accumulated from those
    gradients, against the params train_step returns.  Why from the same gradients: ms_update_bound."""
    config, wrapped = CONFIGS[arch], backend(arch)
    params = probe_params(config)
    inputs, targets, mask = training_batch(config)
    state = adamw_init(R.cast_params(params, np.float64))
    rows, norms = [], []
    for step in range(n_steps):
        _, grads = wrapped.loss_and_grads(inputs, targets, mask, params_like=params)
        clipped, norm = clip_grad_norm(R.cast_params(grads, np.float64), HYPER["max_grad_norm"])
        hyper = {key: value for key, value in HYPER.items() if key != "max_grad_norm"}
        want, state = adamw_step(R.cast_params(params, np.float64), clipped, state, **hyper)
        result = wrapped.train_step(inputs, targets, mask, params_like=params, **HYPER)
        got = R.flatten_params(result["params"])
        bound = ms_update_bound(sum(g.size for g in got.values()), len(got), HYPER["lr"])
        rows += [compare(f"step {step} {name}", got[name], w, bound) for name, w in R.flatten_params(want).items()]
        norms.append((result["grad_norm"], norm, grad_norm_bound("float32", sum(g.size for g in got.values()),
                                                                  len(got))))
        params = result["params"]
    return rows, norms


@pytest.mark.parametrize("arch", CONFIGS)
def test_train_steps_equal_the_spec_update(arch):
    rows, norms = update_rows(arch)
    failures = [row.describe() for row in rows if not row.passed]
    assert not failures, "\n".join(failures)
    for got, want, bound in norms:
        assert want > HYPER["max_grad_norm"], "the test must exercise clipping"
        assert abs(got - want) <= bound.allowed(want), (got, want, bound.reason)
    moved = [row for row in rows if row.name.startswith("step 0")]
    assert len(moved) == len(R.expected_shapes(CONFIGS[arch]))


def test_train_step_keeps_its_hyper_parameters_but_takes_a_new_lr():
    config, wrapped = CONFIGS["gpt1"], backend("gpt1")
    params, batch = probe_params(config), training_batch(config)
    wrapped.train_step(*batch, params_like=params, **HYPER)
    wrapped.train_step(*batch, params_like=params, **dict(HYPER, lr=1e-3))  # a schedule's next rate
    with pytest.raises(ValueError, match=r"betas \(0.9, 0.95\) -> \(0.8, 0.95\)"):
        wrapped.train_step(*batch, params_like=params, **dict(HYPER, betas=(0.8, 0.95)))
    with pytest.raises(ValueError, match="max_grad_norm must be"):
        wrapped.train_step(*batch, params_like=params, **dict(HYPER, max_grad_norm=0))


def test_returned_params_and_grads_are_not_changed_by_later_steps():
    """They are copies: torch updates its parameters and zeroes their .grad in place."""
    config, wrapped = CONFIGS["gpt2"], backend("gpt2")
    params, batch = probe_params(config), training_batch(config)
    _, grads = wrapped.loss_and_grads(*batch, params_like=params)
    first = wrapped.train_step(*batch, params_like=params, **HYPER)["params"]
    kept_grads, kept_params = R.flatten_params(R.cast_params(grads, np.float64)), R.cast_params(first, np.float64)
    second = wrapped.train_step(*batch, params_like=params, **HYPER)["params"]
    wrapped.loss_and_grads(*batch, params_like=params)
    for name, g in R.flatten_params(grads).items():
        np.testing.assert_array_equal(g, kept_grads[name], err_msg=f"grads[{name!r}] changed")
    for name, p in R.flatten_params(first).items():
        np.testing.assert_array_equal(p, R.flatten_params(kept_params)[name], err_msg=f"params[{name!r}] changed")
    assert not np.array_equal(first["wte"], second["wte"]), "the second step must move the weights"


def test_train_step_without_clipping_reports_the_norm():
    config, wrapped = CONFIGS["gpt2"], backend("gpt2")
    params, (inputs, targets, mask) = probe_params(config), training_batch(config)
    _, grads = wrapped.loss_and_grads(inputs, targets, mask, params_like=params)
    _, norm = clip_grad_norm(R.cast_params(grads, np.float64), np.inf)
    result = wrapped.train_step(inputs, targets, mask, params_like=params, **dict(HYPER, max_grad_norm=None))
    n = sum(g.size for g in R.flatten_params(grads).values())
    assert abs(result["grad_norm"] - norm) <= grad_norm_bound("float32", n, len(R.flatten_params(grads))).allowed(norm)


# -- GPT-1's classifier objective ----------------------------------------------------------------------------

@pytest.mark.parametrize("arch", CONFIGS)
def test_classifier_loss_and_grads_equal_the_spec(arch):
    config, wrapped = CONFIGS[arch], backend(arch)
    params = probe_params(config)
    head = R.init_classifier(config, 3, seed=1)
    inputs, _, mask = training_batch(config)
    positions, labels = np.array([10, 9, 10]), np.array([2, 0, 1])
    loss, grads, head_grads = wrapped.classifier_loss_and_grads(head, inputs, labels, positions, mask, lm_coef=0.5,
                                                                params_like=params)
    loss64, grads64, head64 = R.classifier_loss_and_grads(config, params64(arch), R.cast_params(head, np.float64),
                                                          inputs, labels, positions, attention_mask=mask)
    bound = backward_bound(config, "float32", inputs.size)
    rows = [compare(name, R.flatten_params(grads)[name], g, bound) for name, g in R.flatten_params(grads64).items()]
    rows += [compare(f"head {name}", head_grads[name], g, bound) for name, g in head64.items()]
    failures = [row.describe() for row in rows if not row.passed]
    assert not failures, "\n".join(failures)
    assert abs(loss - loss64) <= forward_bound(config, "float32").allowed(loss64)


# -- bad options ---------------------------------------------------------------------------------------------

def test_bad_options_are_refused():
    config = CONFIGS["gpt2"]
    params = probe_params(config)
    with pytest.raises(ValueError, match="dtype must be one of float32, float16, bfloat16, got 'float64'"):
        make_backend("hf", config, params, {"dtype": "float64"})
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        make_backend("hf", config, params, {"threads": 0})
    with pytest.raises(ValueError, match="takes no option 'amp_level'"):
        make_backend("hf", config, params, {"amp_level": "O2"})


def test_missing_torch_is_an_import_error_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install torch==2\.13\.0 .*first.*\[oracle\]"):
        factory(CONFIGS["gpt2"], probe_params(CONFIGS["gpt2"]))


def main():
    for arch in CONFIGS:
        for dtype in DTYPES:
            rows = trace_rows(arch, dtype)
            worst = max(rows, key=lambda row: row.bound_ratio)
            logits = [row for row in rows if row.name.endswith("logits")]
            print(f"{arch} {dtype}: trace worst err/bound {worst.bound_ratio:.3g} ({worst.name}); logits "
                  f"{max(row.bound_ratio for row in logits):.3g}")
        rows, loss, loss64 = gradient_rows(arch)
        print(f"{arch} gradients: worst err/bound {max(d.bound_ratio for d, _ in rows):.3g}, err/measured noise "
              f"{max(m.noise_ratio for _, m in rows):.3g}; loss {loss:.9f} vs {loss64:.9f}")
        rows, _ = update_rows(arch)
        print(f"{arch} updates: worst err/bound {max(row.bound_ratio for row in rows):.3g}")


if __name__ == "__main__":
    main()
