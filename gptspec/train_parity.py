"""Training parity (`gptspec parity --train`): a backend's loss, gradients, gradient norm and one
AdamW update against the float64 spec, and under float16 an injected overflow.

The batch: three rows cut from the prompt at different lengths, right padded to one length, with
shift_targets's ignored targets (-100) wherever a target or its predictor is padding -- the cases
ports get wrong (a loss averaged over padding, a mask missing in the backward).

    loss, grads     backend.loss_and_grads vs ref_numpy.loss_and_grads in float64, per tensor
                    within the derived bound (backward_bound; amp_backward_bound under AMP) and,
                    in float32, NOISE_MULTIPLE x the spec's own float32 error (the measured noise)
    grad norm       train_step's global norm (before clipping) vs the float64 norm of the
                    backend's own gradients (loss_and_grads at the same weights): the norm's
                    float32 arithmetic, grad_norm_bound (the gradients have their own rows)
    params          after one train_step (clipping to half the spec's norm, AdamW with weight
                    decay) vs ref_numpy's clipping + adamw_step in float64 applied to the
                    backend's OWN gradients and norm: the update's arithmetic alone,
                    ms_update_bound (why the same gradients: see there), and NOISE_MULTIPLE x
                    the same update computed by the spec in float32
    overflow        float16 with dynamic loss scaling: a step whose scale overflows the gradients
                    is skipped (parameters bit-identical) and halves the scale
    --head N        the classifier objective (classifier_loss_and_grads): loss, every gradient
                    and the head's gradients, as above

AdamW's eps is set to the median magnitude of the spec's gradients: the first update
lr * g / (|g| + eps) is then not just lr * sign(g), so it depends on the clipping coefficient
(with eps -> 0 Adam is blind to a common scale of the gradients, and clipping would go unseen), and
it is Lipschitz in g (a gradient within rounding of zero cannot flip an update by 2 lr).
"""
from __future__ import annotations

import math

import numpy as np

import ref_numpy
from gptspec.backend import OPTIONAL_PARTS, BackendUnderTest
from gptspec.compare import compare
from gptspec.parity import float64_params, reference_layer_norm_condition
from gptspec.parity_report import Check, ParityReport
from gptspec.tolerances import (Bound, amp_backward_bound, amp_loss_curve_bound, backward_bound, conditioned,
                                grad_norm_bound, lm_loss_bound, ms_update_bound, noise_bound)
from ref_numpy.data import pad_or_truncate, shift_targets
from ref_numpy.optim import adamw_init, adamw_step, scale_to_norm

__all__ = ["run_train_parity", "training_batch", "TRAIN_LR", "TRAIN_BETAS", "TRAIN_WEIGHT_DECAY"]

# One update large enough that a wrong decay (on biases and gains too) or a missing bias correction
# moves parameters far beyond the update's rounding: lr x wd x |p| = 1e-3 |p| against ~1e-6.
TRAIN_LR, TRAIN_BETAS, TRAIN_WEIGHT_DECAY = 1e-2, (0.9, 0.95), 0.1


def training_batch(prompt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, attention_mask) [3, T - 1] from a prompt of T >= 4 tokens: the prompt,
    its first 3/4 and its first half, right padded to T, targets shifted (-100 on padding)."""
    prompt = np.asarray(prompt, dtype=np.int64).reshape(-1)
    T = len(prompt)
    if T < 4:
        raise ValueError(f"--train needs a prompt of at least 4 tokens (rows of 3 lengths, each with a target), "
                         f"got {T}")
    rows = [prompt, prompt[:max(2, 3 * T // 4)], prompt[:max(2, T // 2)]]
    ids, mask = pad_or_truncate(rows, T, 0, side="right")
    return shift_targets(ids, mask)


def gradient_bound(config, amp_level: str, dtype: str, n_tokens: int) -> Bound:
    if amp_level == "O0":
        return backward_bound(config, dtype, n_tokens)
    return amp_backward_bound(config, amp_level, dtype)


def significant(x: float, digits: int = 1) -> float:
    """x rounded to `digits` significant digits (a hyper-parameter a reader can retype)."""
    return float(f"{x:.{digits - 1}e}")


def run_train_parity(config, params, backend, prompt, *, head_classes: int | None = None,
                     seed: int = 0) -> ParityReport:
    """The training report of `backend` (a BackendUnderTest or a protocol backend) on `params`
    (the weights the backend was built from) and the batch training_batch(prompt)."""
    if not isinstance(backend, BackendUnderTest):
        backend = BackendUnderTest(backend, config)
    backend.require("gradients", "gptspec parity --train")
    inputs, targets, mask = training_batch(prompt)
    amp_level, dtype = backend.amp_level, backend.dtype
    params64 = float64_params(params)
    condition = reference_layer_norm_condition(config, params64, inputs, mask)
    n_tokens = inputs.size
    grad_allowed = conditioned(gradient_bound(config, amp_level, dtype, n_tokens), condition)
    measured = dtype == "float32"  # the spec's own float32 run is the noise of a float32 backend
    notes = [f"batch: {inputs.shape[0]} rows of {inputs.shape[1]} inputs, right padded, "
             f"{int((targets != ref_numpy.IGNORE_INDEX).sum())} counted targets of {targets.size}"]
    if not measured:
        notes.append(f"no measured noise at {dtype}: the spec has no {dtype} backward to emulate (derived "
                     f"bounds only)")

    loss64, grads64 = ref_numpy.loss_and_grads(config, params64, inputs, targets, attention_mask=mask)
    spec32 = ref_numpy.loss_and_grads(config, ref_numpy.cast_params(params, np.float32), inputs, targets,
                                      attention_mask=mask) if measured else None
    loss, grads = backend.loss_and_grads(inputs, targets, mask, params_like=params)
    logits64 = ref_numpy.forward(config, params64, inputs, attention_mask=mask)[0]
    loss_bound = (lm_loss_bound(config, dtype, float(np.abs(logits64).max()), int((targets != ref_numpy.IGNORE_INDEX).sum()))
                  if amp_level == "O0" else amp_loss_curve_bound(config, amp_level, dtype))
    rows = [compare("loss", loss, loss64, loss_bound, noise_bound(spec32[0], loss64, dtype) if measured else None)]
    rows += gradient_rows("grad ", grads, grads64, None if spec32 is None else spec32[1], grad_allowed, dtype)
    if head_classes is not None:
        rows += classifier_rows(config, params, params64, backend, (inputs, mask), head_classes, seed,
                                grad_allowed, loss_bound, notes)
    checks = []  # the update last: it changes the backend's weights
    if backend.provides["optimizer"]:
        more_rows, more_checks = update_rows(params64, backend, (inputs, targets, mask), grads, grads64, notes)
        rows += more_rows
        checks += more_checks
    else:
        notes.append(f"the update (clipping, AdamW): not provided by the backend ({OPTIONAL_PARTS['optimizer']})")
    info = backend.describe()
    settings = {"backend": info["name"], "version": info["version"], "device": info["device"], "arch": config.arch,
                "n_layer": config.n_layer, "n_embd": config.n_embd, "n_head": config.n_head,
                "n_vocab": config.n_vocab, "amp_level": amp_level, "dtype": dtype, "check": "training"}
    return ParityReport(settings, rows, None, notes=notes, checks=checks)


def gradient_rows(prefix, actual, reference, spec32, bound, dtype) -> list:
    flat, flat64 = ref_numpy.flatten_params(actual), ref_numpy.flatten_params(reference)
    flat32 = None if spec32 is None else ref_numpy.flatten_params(spec32)
    return [compare(f"{prefix}{name}", flat[name], ref, bound,
                    None if flat32 is None else noise_bound(flat32[name], ref, dtype))
            for name, ref in flat64.items()]


def update_rows(params64, backend, batch, grads, grads64, notes):
    """The global norm, the parameters after one update and (float16) the injected overflow."""
    flat64 = ref_numpy.flatten_params(grads64)
    norm64 = math.sqrt(sum(float(np.sum(g * g)) for g in flat64.values()))
    magnitudes = np.concatenate([np.abs(g).reshape(-1) for g in flat64.values()])
    hyper = dict(lr=TRAIN_LR, betas=TRAIN_BETAS, weight_decay=TRAIN_WEIGHT_DECAY,
                 eps=max(significant(float(np.median(magnitudes))), 1e-8), max_grad_norm=significant(norm64 / 2, 3))
    notes.append(f"update: AdamW lr={hyper['lr']:g} betas={hyper['betas']} weight_decay={hyper['weight_decay']:g} "
                 f"eps={hyper['eps']:g} (the gradients' median magnitude), clipping to max_grad_norm="
                 f"{hyper['max_grad_norm']:g} (half the spec's norm {norm64:.4g})")
    step = backend.train_step(*batch, params_like=params64, **hyper)
    own_grads = ref_numpy.cast_params(grads, np.float64)
    own = ref_numpy.flatten_params(own_grads)
    own_norm = math.sqrt(sum(float(np.sum(g * g)) for g in own.values()))
    n_elements, n_tensors = sum(g.size for g in own.values()), len(own)
    # The norm of the backend's own gradients (each checked in its row above), computed by the
    # backend in float32: a sum of n_elements squares in some order (torch's sums 124M of them with
    # a relative error of ~6e-5, numpy's pairwise nrm2 ~1e-7: both honest), so the derived bound.
    rows = [compare("grad norm (before clipping)", step["grad_norm"], own_norm,
                    grad_norm_bound("float32", n_elements, n_tensors))]
    # What the update must compute from the backend's own gradients and its own norm (the clipping
    # coefficient max_norm / (norm + 1e-6)), in float64 and (the noise) in float32.
    expected = spec_update(params64, own_grads, step["grad_norm"], hyper)
    noise = spec_update(ref_numpy.cast_params(params64, np.float32), ref_numpy.cast_params(grads, np.float32),
                        step["grad_norm"], hyper)
    bound = ms_update_bound(n_elements, n_tensors, hyper["lr"])
    got = ref_numpy.flatten_params(step["params"])
    noise_flat = ref_numpy.flatten_params(noise)
    rows += [compare(f"param after 1 step {name}", got[name], want, bound, noise_bound(noise_flat[name], want, "float32"))
             for name, want in ref_numpy.flatten_params(expected).items()]
    checks = []
    if step.get("skipped"):
        checks.append(Check("first update", False, "the backend skipped the first update (non-finite gradients "
                                                   "at its loss scale)"))
    if backend.dtype == "float16":
        if backend.provides["overflow"]:
            checks.append(overflow_check(backend, batch, step["params"], hyper, params64))
        else:
            notes.append(f"injected overflow: not provided by the backend ({OPTIONAL_PARTS['overflow']})")
    return rows, checks


def spec_update(params, grads, total_norm: float, hyper) -> dict:
    """One adamw_step from a fresh state on `grads` clipped as ref_numpy.clip_grad_norm does, with
    the global norm given (the backend's: its arithmetic is checked on its own row), in the
    arrays' dtype."""
    clipped = scale_to_norm(grads, hyper["max_grad_norm"], total_norm)
    new_params, _ = adamw_step(params, clipped, adamw_init(params), lr=hyper["lr"], betas=hyper["betas"],
                               eps=hyper["eps"], weight_decay=hyper["weight_decay"])
    return new_params


def overflow_check(backend, batch, params_before, hyper, params_like) -> Check:
    step = backend.train_step(*batch, params_like=params_like, overflow=True, **hyper)
    before, after = ref_numpy.flatten_params(params_before), ref_numpy.flatten_params(step["params"])
    changed = [name for name in before if not np.array_equal(before[name], after[name])]
    scale, next_scale = step["loss_scale"], step["next_loss_scale"]
    if scale is None or next_scale is None:
        return Check("injected overflow", False, f"skipped={step['skipped']}; the backend reported no loss_scale / "
                                                 f"next_loss_scale")
    halved = next_scale == max(1.0, scale / 2)
    kept = "bit-identical" if not changed else "CHANGED: " + ", ".join(changed[:3])
    return Check("injected overflow", step["skipped"] and not changed and halved,
                 f"skipped={step['skipped']}, parameters {kept}, loss scale {scale:g} -> {next_scale:g} "
                 f"({'halved' if halved else 'NOT halved'})")


def classifier_rows(config, params, params64, backend, batch, n_classes, seed, grad_allowed, lm_loss_allowed, notes):
    """The classifier objective's loss, gradients and head gradients vs the float64 spec.  The
    loss L2 + 0.5 L1 is bounded by 1.5 x the LM loss's bound: each cross-entropy moves by at most
    2 x its logits' error, and the head's logits are a C-long product of the same final hidden
    state the LM logits come from (a shorter reduction than the V-long tied head's)."""
    inputs, mask = batch
    measured = backend.dtype == "float32"
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"--head takes the number of classes, an integer >= 2, got {n_classes!r}")
    head = ref_numpy.init_classifier(config, n_classes, seed)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=inputs.shape[0])
    positions = mask.sum(axis=1) - 1  # each row's last real token classifies it
    notes.append(f"--head {n_classes}: classifier_loss_and_grads with lm_coef 0.5 on the same rows, labels {list(labels)}, "
                 f"classify tokens at {list(positions)}")
    loss, grads, head_grads = backend.classifier_loss_and_grads(head, inputs, labels, positions, mask, lm_coef=0.5,
                                                                params_like=params)
    loss64, grads64, head64 = ref_numpy.classifier_loss_and_grads(
        config, params64, ref_numpy.cast_params(head, np.float64), inputs, labels, positions, attention_mask=mask)
    spec32 = (ref_numpy.classifier_loss_and_grads(config, ref_numpy.cast_params(params, np.float32), head, inputs,
                                                  labels, positions, attention_mask=mask) if measured else None)
    dtype = backend.dtype
    loss_bound = Bound(1.5 * lm_loss_allowed.value, f"1.5 x ({lm_loss_allowed.reason})", lm_loss_allowed.relative)
    rows = [compare("classifier loss", loss, loss64, loss_bound,
                    None if spec32 is None else noise_bound(spec32[0], loss64, dtype))]
    rows += gradient_rows("classifier grad ", grads, grads64, None if spec32 is None else spec32[1], grad_allowed,
                          dtype)
    rows += gradient_rows("classifier grad head.", head_grads, head64, None if spec32 is None else spec32[2],
                          grad_allowed, dtype)
    return rows
