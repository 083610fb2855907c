"""The spec's optimizer (ref_numpy/optim.py) in MindSpore: AdamW with decay on >= 2-D tensors only,
gradient clipping by the global norm, the learning rate set each step from ref_numpy.lr_at.

The state (parameter groups, moments, update count, per-group lr) is a
`mindspore.experimental.optim.AdamW`, whose formula is torch.optim.AdamW's (decoupled decay,
bias-corrected moments, eps outside the square root) -- the spec's.  The update itself is
`adamw_update`: the same formula through MindSpore's fused in-place kernel, with the bias
corrections folded into its lr, eps and decay (see there why).  `nn.AdamWeightDecay`, the
optimizer around that kernel, is another formula (no bias correction, eps 1e-6) and is not used.
The two parameter groups are the spec's rule: matrices and embeddings decay, biases and LayerNorm
gains do not (GPT-2 / nanoGPT practice).
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import ops
from mindspore.experimental.optim import AdamW

# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing (no division by zero).
from ref_numpy.optim import CLIP_EPS as CLIP_EPSILON

from .device import overwrite


def decays(parameter) -> bool:
    """The spec's rule: weight decay on tensors with 2 or more dimensions."""
    return len(parameter.shape) >= 2


def build_adamw(parameters, *, lr, betas, eps, weight_decay) -> AdamW:
    """AdamW over `parameters` (a list of Parameters) in two groups: decay / no decay.
    Its `parameters` (and so the gradients value_and_grad returns for it) are in group order."""
    decay = [p for p in parameters if decays(p)]
    no_decay = [p for p in parameters if not decays(p)]
    groups = [{"params": decay, "weight_decay": float(weight_decay)}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return AdamW(groups, lr=float(lr), betas=(float(betas[0]), float(betas[1])), eps=float(eps))


def set_lr(optimizer: AdamW, lr) -> None:
    """Write the step's learning rate (a float32 scalar Tensor) into every group (works in graph mode)."""
    for group_lr in optimizer.lrs:
        ops.assign(group_lr, lr)


def global_norm(grads):
    """sqrt(sum over every gradient element of its square), float32 scalar Tensor.  Each tensor's
    squares are summed along the last axis first, then over the rows: on CPU a whole-tensor ReduceSum
    runs ~7x slower (0.14 s for the [50257, 768] embedding), and partial sums round no worse.

    The tensors are summed one after another: each waits (ops.depend) for the running total, so
    one squared copy is alive at a time.  Without the order the compiled graph's breadth-first
    schedule squares every gradient before summing any, a second copy of all of them at once."""
    total = ops.zeros((), ms.float32)
    for g in grads:
        total = total + ops.square(ops.depend(g, total)).sum(axis=-1).sum()
    return ops.sqrt(total)


def clip_coefficient(max_norm, total_norm):
    """torch.nn.utils.clip_grad_norm_'s factor (as ref_numpy.clip_grad_norm): every gradient is
    multiplied by min(1, max_norm / (total_norm + 1e-6)); None when max_norm is None (no clipping).
    adamw_update applies it to each gradient just before that parameter's update."""
    if max_norm is None:
        return None
    return ops.minimum(max_norm / (total_norm + CLIP_EPSILON), 1.0)


_adam_kernel = ops.AdamWeightDecay()


def adamw_update(optimizer: AdamW, grads, clip=None):
    """Apply one AdamW update to `optimizer`'s parameters (its moments, update count and per-group lr,
    see set_lr) with one fused in-place kernel per parameter (`ops.AdamWeightDecay`); usable inside
    mindspore.jit.  Returns the new update count.  clip: None, or clip_coefficient's factor, by
    which each gradient is multiplied just before its kernel.  The parameters are updated one after
    another (each kernel waits, ops.depend, for the previous one): the graph's breadth-first
    schedule would otherwise make every clipped gradient first, a copy of all of them at once.

    Why not `optimizer(grads)`: its update is a dozen elementwise ops per parameter, each a new
    tensor of the parameter's size, and compiled the runtime keeps many of them alive at once
    (measured on the 124M model on CPU: 4.6 GB of the step's 14.2 GB peak, and 2.1 s of its 6.7 s
    of kernel time).  The fused kernel updates p, m, v in place in one pass: no temporaries.

    The kernel computes  m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2,
    p = p - lr' (m / (sqrt(v) + eps') + wd' p)  (the Adam of OpenAI's GPT-1 code).  torch's AdamW
    -- the spec's: p (1 - lr wd) - lr/c1 m / (sqrt(v)/sqrt(c2) + eps), c_i = 1 - b_i^t -- is the
    same with  lr' = lr sqrt(c2) / c1,  eps' = eps sqrt(c2),  wd' = wd c1 / sqrt(c2)  (lr' wd' =
    lr wd): equal up to the float32 rounding of these three scalars and of the kernel's order."""
    ops.assign_add(optimizer.state_step, ops.ones_like(optimizer.state_step))
    t = optimizer.state_step.astype(ms.float32)
    previous = t
    for i, group in enumerate(optimizer.param_groups):
        beta1, beta2 = (ms.Tensor(beta, ms.float32) for beta in group["betas"])
        correction1 = 1 - ops.pow(beta1, t)
        sqrt_correction2 = ops.sqrt(1 - ops.pow(beta2, t))
        lr = optimizer.lrs[i] * sqrt_correction2 / correction1
        eps = group["eps"] * sqrt_correction2
        decay = group["weight_decay"] * correction1 / sqrt_correction2
        for j in range(optimizer.group_start_id[i], optimizer.group_start_id[i + 1]):
            g = ops.depend(grads[j], previous)
            g = g if clip is None else g * clip
            previous = _adam_kernel(optimizer.parameters[j], optimizer.exp_avg[j], optimizer.exp_avg_sq[j], lr, beta1,
                                    beta2, eps, decay, g)
    return optimizer.state_step


def optimizer_state(optimizer: AdamW) -> dict:
    """{"m": {name: array}, "v": {name: array}, "step": int}: the first and second moments of each
    parameter (by its Parameter name, which is its flattened params-dict name) and the update count."""
    m = {p.name: np.array(avg.asnumpy()) for p, avg in zip(optimizer.parameters, optimizer.exp_avg)}
    v = {p.name: np.array(avg.asnumpy()) for p, avg in zip(optimizer.parameters, optimizer.exp_avg_sq)}
    return {"m": m, "v": v, "step": int(optimizer.state_step.asnumpy())}


def restore_optimizer_state(optimizer: AdamW, state: dict) -> None:
    """Inverse of optimizer_state (shapes were checked by the caller)."""
    for p, m, v in zip(optimizer.parameters, optimizer.exp_avg, optimizer.exp_avg_sq):
        overwrite(m, state["m"][p.name], ms.float32)
        overwrite(v, state["v"][p.name], ms.float32)
    overwrite(optimizer.state_step, int(state["step"]), ms.int32)
