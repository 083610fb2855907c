"""The optimizer: AdamW, gradient clipping and the learning-rate schedule.

One training step (see train.py for loss_and_grads):

    state = adamw_init(params)                                    # once
    loss, grads = loss_and_grads(config, params, inputs, targets)
    grads, norm = clip_grad_norm(grads, max_norm=1.0)
    params, state = adamw_step(params, grads, state, lr=lr_at(step, max_lr=2.5e-4, warmup_steps=2000,
                                                              total_steps=n_steps), weight_decay=0.01)

Parameters, gradients and moments are the same nested structure (dicts, lists of dicts, arrays:
see params.py); a classifier head or any other tree of arrays works the same way.  Every function
here is pure: it returns new arrays and never writes into the ones it was given.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

SCHEDULES = ("cosine", "linear")
ADAM_VARIANTS = ("torch", "openai-gpt1")


# -- trees of arrays ------------------------------------------------------------------------------
def _leaves(tree, prefix=""):
    """[(dotted name, array)] of a nested dict/list tree, in a fixed order."""
    if isinstance(tree, dict):
        return [leaf for key, child in tree.items() for leaf in _leaves(child, f"{prefix}{key}.")]
    if isinstance(tree, (list, tuple)):
        return [leaf for i, child in enumerate(tree) for leaf in _leaves(child, f"{prefix}{i}.")]
    return [(prefix[:-1], tree)]


def _rebuild(tree, values):
    """A tree shaped like `tree` whose leaves are taken, in order, from the iterator `values`."""
    if isinstance(tree, dict):
        return {key: _rebuild(child, values) for key, child in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_rebuild(child, values) for child in tree]
    return next(values)


def _check_same_structure(params, other, name: str):
    """`other` must have exactly params' names and shapes; returns both leaf lists."""
    mine, theirs = _leaves(params), _leaves(other)
    names, other_names = [n for n, _ in mine], [n for n, _ in theirs]
    if names != other_names:
        missing = sorted(set(names) - set(other_names))
        extra = sorted(set(other_names) - set(names))
        raise ValueError(f"{name} does not have the structure of params: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}" if missing or extra else
                         f"{name} lists the arrays of params in another order")
    for (key, p), (_, g) in zip(mine, theirs):
        if not isinstance(g, np.ndarray) or g.shape != p.shape:
            shape = g.shape if isinstance(g, np.ndarray) else type(g).__name__
            raise ValueError(f"{name}[{key!r}] has shape {shape}, but the parameter has shape {p.shape}")
    return mine, theirs


def decays(array) -> bool:
    """Weight decay applies to tensors with >= 2 dimensions: the weight matrices and the embeddings
    (wte, wpe).  Biases and LayerNorm gains/biases (1-D) are not decayed: shrinking a LayerNorm
    gain towards 0 or a bias towards 0 is no regularisation of the function's complexity.  This is
    GPT-2/nanoGPT practice, and GPT-1's (OpenAI's fine-tuning code decays only tensors with more
    than one dimension unless its vector_l2 flag is set)."""
    return np.ndim(array) >= 2


# -- AdamW ------------------------------------------------------------------------------------------
def adamw_init(params) -> dict:
    """Optimizer state for `params`: {"step": 0, "m": zeros like params, "v": zeros like params}
    (the first and second moment estimates, in the parameters' dtype and structure)."""
    leaves = _leaves(params)
    for name, p in leaves:
        if not isinstance(p, np.ndarray) or not np.issubdtype(p.dtype, np.floating):
            raise TypeError(f"params[{name!r}] must be a floating-point numpy array, got "
                            f"{getattr(p, 'dtype', type(p).__name__)}")
    zeros = [np.zeros_like(p) for _, p in leaves]
    return {"step": 0, "m": _rebuild(params, iter(zeros)), "v": _rebuild(params, iter([z.copy() for z in zeros]))}


def check_adamw_hyperparameters(lr, betas, eps, weight_decay):
    """The checks of adamw_step's hyper-parameters, shared with every backend's AdamW (same messages)."""
    def number(value):
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
            and math.isfinite(value)

    if not number(lr) or lr < 0:
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        if not number(beta) or not 0 <= beta < 1:
            raise ValueError(f"betas[{i}] must lie in [0, 1), got {beta!r}")
    if not number(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if not number(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")


def adamw_step(params, grads, state, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, variant="torch",
               inplace=False):
    """One AdamW update.  Returns (new params, new state); params, grads and state are not modified.

    inplace=True writes the same numbers, bit for bit, into params' and state's own arrays (and
    returns those objects): a training loop then holds one copy of the model and its moments, not
    two at the end of every update (for the 124M model, 1.5 GB less at the step's peak).

    params, grads   the same nested structure, same shapes (grads are cast to the params' dtype)
    state           from adamw_init, or from the previous adamw_step
    lr              this step's learning rate (from lr_at), >= 0
    betas           (beta1, beta2), each in [0, 1): decay rates of the moment estimates
    eps             > 0, keeps the division finite where v is ~0
    weight_decay    >= 0, applied only to tensors with >= 2 dimensions (see `decays`)

    variant="torch" (default) is torch.optim.AdamW, step t = state["step"] + 1, per tensor:

        p = p - lr * weight_decay * p          decoupled decay (Loshchilov & Hutter), before Adam
        m = beta1 * m + (1 - beta1) * g        first moment
        v = beta2 * v + (1 - beta2) * g^2      second moment
        m_hat = m / (1 - beta1^t)              bias correction: m, v start at 0
        v_hat = v / (1 - beta2^t)
        p = p - lr * m_hat / (sqrt(v_hat) + eps)

    variant="openai-gpt1" is the Adam of OpenAI's GPT-1 code (finetune-transformer-lm, opt.py):
    the bias correction is folded into the learning rate, eps is added to the uncorrected sqrt(v),
    and the decay is applied inside the same step, scaled by that corrected rate:

        lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
        p = p - lr_t * (m / (sqrt(v) + eps) + weight_decay * p)      (m, v updated as above)

    The two agree when weight_decay = 0 up to eps's placement (eps / sqrt(1 - beta2^t) in torch's
    terms, ~30x larger at t = 1); with decay, OpenAI's shrinks p by lr_t * wd instead of lr * wd.
    (There `lr` already includes the schedule, as here.)
    """
    if variant not in ADAM_VARIANTS:
        raise ValueError(f"variant must be one of {ADAM_VARIANTS}, got {variant!r}")
    check_adamw_hyperparameters(lr, betas, eps, weight_decay)
    if not isinstance(state, dict) or set(state) != {"step", "m", "v"}:
        raise ValueError("state must be the dict adamw_init returns ({'step', 'm', 'v'})")
    leaves, grad_leaves = _check_same_structure(params, grads, "grads")
    _, m_leaves = _check_same_structure(params, state["m"], "state['m']")
    _, v_leaves = _check_same_structure(params, state["v"], "state['v']")
    beta1, beta2 = float(betas[0]), float(betas[1])
    t = int(state["step"]) + 1
    correction1, correction2 = 1 - beta1 ** t, 1 - beta2 ** t

    # every check before the first tensor is updated: a refused update changes nothing (in place too)
    for (name, p), (_, g), (_, m), (_, v) in zip(leaves, grad_leaves, m_leaves, v_leaves):
        if not np.isfinite(g.astype(p.dtype, copy=False)).all():  # in the update's dtype: no overflow on the cast
            raise ValueError(f"grads[{name!r}] contains NaN or inf: the update would corrupt the parameter "
                             f"(skip the step, or lower the learning rate / loss scale)")
        if inplace:
            _check_writable(name, p, m, v)
    new_p, new_m, new_v = [], [], []
    # inplace: one scratch buffer for every tensor's temporaries (fresh memory is slow to get)
    scratch = np.empty(max(p.size for _, p in leaves), leaves[0][1].dtype) if inplace and variant == "torch" else None
    for (name, p), (_, g), (_, m), (_, v) in zip(leaves, grad_leaves, m_leaves, v_leaves):
        dtype = p.dtype  # the update runs in the parameters' dtype
        old = (p, m, v)
        g, m, v = (x.astype(dtype, copy=False) for x in (g, m, v))
        wd = weight_decay if decays(p) else 0.0
        if variant == "torch":
            own = None if scratch is None or scratch.dtype != dtype else scratch[:p.size].reshape(p.shape)
            p, m, v = _torch_adamw_update(p, g, m, v, lr, beta1, beta2, eps, wd, correction1, correction2,
                                          into=old if inplace else None, scratch=own)
        else:
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * (g * g)
            lr_t = lr * math.sqrt(correction2) / correction1
            p = p - lr_t * (m / (np.sqrt(v) + eps) + wd * p)
        if inplace:  # this tensor's new values into its own arrays (the torch update wrote them there)
            for target, value in zip(old, (p, m, v)):
                if value is not target:
                    np.copyto(target, value)
            continue
        new_p.append(p.astype(dtype, copy=False))
        new_m.append(m.astype(dtype, copy=False))
        new_v.append(v.astype(dtype, copy=False))
    if inplace:
        state["step"] = t
        return params, state
    state = {"step": t, "m": _rebuild(params, iter(new_m)), "v": _rebuild(params, iter(new_v))}
    return _rebuild(params, iter(new_p)), state


def _check_writable(name: str, p, m, v) -> None:
    """inplace=True: the parameter and its moments are writable arrays of the parameter's dtype."""
    for what, array in (("params", p), ("state['m']", m), ("state['v']", v)):
        if not array.flags.writeable:
            raise ValueError(f"inplace=True: {what}[{name!r}] is read-only (copy it first, e.g. with cast_params)")
        if array.dtype != p.dtype:
            raise ValueError(f"inplace=True: {what}[{name!r}] has dtype {array.dtype}, the parameter {p.dtype}: "
                             f"the moments must be in the parameters' dtype (adamw_init makes them so)")


def _torch_adamw_update(p, g, m, v, lr, beta1, beta2, eps, wd, correction1, correction2, *, into=None,
                        scratch=None):
    """adamw_step's torch formula for one tensor -> (new p, new m, new v):

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * (g * g)
        p = p * (1 - lr * wd)
        p = p - (lr / correction1) * (m / (np.sqrt(v) / sqrt(correction2) + eps))

    written as exactly these operations in this order (so bit for bit the same numbers), into three
    new arrays and one scratch array instead of a new array per operation: ~3x less memory traffic
    for the 124M model's 124M-element update, the spec's training step's largest elementwise cost.
    into=(p, m, v) writes the results into those arrays instead (the same operations, in place),
    with `scratch` (p's shape) as the scratch array."""
    new_p, new_m, new_v = into if into is not None else (None, None, None)
    new_m = np.multiply(m, beta1, out=new_m)
    scratch = np.multiply(g, 1 - beta1, out=scratch)
    new_m += scratch
    new_v = np.multiply(v, beta2, out=new_v)
    np.multiply(g, g, out=scratch)
    scratch *= 1 - beta2
    new_v += scratch
    new_p = np.multiply(p, 1 - lr * wd, out=new_p)  # decoupled weight decay, on the parameter before the Adam step
    np.sqrt(new_v, out=scratch)
    scratch /= math.sqrt(correction2)
    scratch += eps
    np.divide(new_m, scratch, out=scratch)
    scratch *= lr / correction1
    new_p -= scratch
    return new_p, new_m, new_v


# -- gradient clipping ----------------------------------------------------------------------------
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ divides by total_norm + 1e-6


def clip_grad_norm(grads, max_norm):
    """Scale all gradients together so that their global 2-norm is at most max_norm.

        total_norm = sqrt(sum over every tensor g of sum(g^2))
        coef = max_norm / (total_norm + 1e-6)
        grads = grads * coef    only if coef < 1 (otherwise unchanged)

    as torch.nn.utils.clip_grad_norm_ (each tensor's norm in its own dtype, the norm of those
    norms in float64).  max_norm > 0 (math.inf: only measure).  Returns (grads, total_norm: float);
    the input is not modified (when nothing is scaled the returned tree holds the same arrays).  A gradient with NaN or inf is an error naming the
    tensor: clipping it would spread the NaN into every other gradient.
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float, np.integer, np.floating)) \
            or not max_norm > 0:
        raise ValueError(f"max_norm must be a number > 0, got {max_norm!r}")
    leaves = _leaves(grads)
    norms = []
    for name, g in leaves:
        if not isinstance(g, np.ndarray) or not np.issubdtype(g.dtype, np.floating):
            raise TypeError(f"grads[{name!r}] must be a floating-point numpy array")
        norm = float(np.linalg.norm(g.reshape(-1)))
        if not math.isfinite(norm):
            what = "contains NaN or inf" if not np.isfinite(g).all() else "has a norm that overflows its dtype"
            raise ValueError(f"grads[{name!r}] {what}: cannot clip (skip this step, or lower the "
                             f"learning rate / loss scale)")
        norms.append(norm)
    total_norm = math.sqrt(sum(n * n for n in norms))
    return scale_to_norm(grads, max_norm, total_norm), total_norm


def scale_to_norm(grads, max_norm, total_norm):
    """clip_grad_norm's scaling for a global norm already known: grads * coef with
    coef = max_norm / (total_norm + 1e-6) when coef < 1, else the same arrays."""
    leaves = _leaves(grads)
    coef = max_norm / (total_norm + CLIP_EPS)
    if coef >= 1:
        return _rebuild(grads, iter([g for _, g in leaves]))
    return _rebuild(grads, iter([g * g.dtype.type(coef) for _, g in leaves]))


# -- learning-rate schedule -----------------------------------------------------------------------
class StepResult(NamedTuple):
    """What one optimizer update reports, whoever made it (the training loop's NumPy and MindSpore
    backends, ms_backend.Trainer)."""
    loss: float  # the batch's loss, before the update
    grad_norm: float  # global norm of the (unscaled) gradients, before clipping (inf/nan on overflow)
    lr: float  # the learning rate of this update: lr_at(step)
    loss_scale: float | None = None  # mixed precision: the scale this step's loss was multiplied by
    skipped: bool = False  # mixed precision: non-finite gradients, no update


def lr_at(step, *, max_lr, warmup_steps, total_steps, min_lr=0.0, schedule="cosine") -> float:
    """The learning rate of update number `step` (0-based: the first update is step 0).

        warmup   step < warmup_steps:    max_lr * (step + 1) / warmup_steps
                 (linear from 0: the first update already moves, update warmup_steps - 1 uses
                 max_lr; the convention of llm.c)
        decay    warmup_steps <= step < total_steps, progress = (step - warmup_steps) /
                 (total_steps - warmup_steps) in [0, 1):
                 cosine  min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2
                 linear  max_lr - (max_lr - min_lr) * progress
                 so the rate reaches min_lr just after the last step.

    GPT-1 (Radford et al. 2018): 2000 warmup steps to max_lr 2.5e-4, then cosine annealing to 0
    (min_lr=0).  (OpenAI's code evaluates its schedule at step/total_steps, 0-based, so its first
    update has rate 0, and its cosine spans the whole run, warmup included; here the cosine spans
    the steps after warmup, as in nanoGPT and llm.c.)  step must lie in [0, total_steps); 0 <= warmup_steps <= total_steps;
    0 <= min_lr <= max_lr.
    """
    def integer(value):
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not integer(total_steps) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
    if not integer(warmup_steps) or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be an int in [0, total_steps={total_steps}], got {warmup_steps!r}")
    if not integer(step) or not 0 <= step < total_steps:
        raise ValueError(f"step must be an int in [0, total_steps={total_steps}) (0-based), got {step!r}")
    for name, value in (("max_lr", max_lr), ("min_lr", min_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if min_lr > max_lr:
        raise ValueError(f"min_lr ({min_lr}) must not exceed max_lr ({max_lr})")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    if schedule == "cosine":
        return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    return max_lr - (max_lr - min_lr) * progress
