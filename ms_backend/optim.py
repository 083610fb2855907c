"""The spec's optimizer (ref_numpy/optim.py) in MindSpore: AdamW with decay on >= 2-D tensors only,
gradient clipping by the global norm, the learning rate set each step from ref_numpy.lr_at.

AdamW is `mindspore.experimental.optim.AdamW`, which computes torch.optim.AdamW's formula (decoupled
decay, bias-corrected moments, eps outside the square root) -- the spec's.  `nn.AdamWeightDecay` is
another optimizer (no bias correction, eps 1e-6 inside, decays every tensor) and is not used.
The two parameter groups are the spec's rule: matrices and embeddings decay, biases and LayerNorm
gains do not (GPT-2 / nanoGPT practice).
"""
from __future__ import annotations

import logging

import mindspore as ms
import numpy as np
from mindspore import log as ms_log
from mindspore import ops
from mindspore.experimental.optim import AdamW

# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing (no division by zero).
CLIP_EPSILON = 1e-6


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
    """sqrt(sum over every gradient element of its square), float32 scalar Tensor."""
    return ops.sqrt(sum(ops.square(g).sum() for g in grads))


def clip_grad_norm(grads, max_norm, total_norm):
    """torch.nn.utils.clip_grad_norm_ (as ref_numpy.clip_grad_norm): every gradient times
    min(1, max_norm / (total_norm + 1e-6)).  max_norm None: no clipping."""
    if max_norm is None:
        return grads
    coefficient = ops.minimum(max_norm / (total_norm + CLIP_EPSILON), 1.0)
    return tuple(g * coefficient for g in grads)


class _DropRecompileWarning(logging.Filter):
    def filter(self, record):
        return not record.getMessage().startswith("Constant value tensor are detected in tuple or list")


def quiet_pynative_update(optimizer: AdamW):
    """optimizer(grads) for PyNative mode.  There the optimizer's own jit-compiled kernel receives
    each group's gradients as a fresh tuple, and MindSpore warns that the tuple may recompile it --
    printing every gradient.  The tuple's shapes never change, so nothing recompiles; the warning
    is dropped for the duration of the call only."""
    def update(grads):
        logger, quiet = ms_log._get_logger(), _DropRecompileWarning()
        logger.addFilter(quiet)
        try:
            return optimizer(grads)
        finally:
            logger.removeFilter(quiet)

    return update


def optimizer_state(optimizer: AdamW, names: dict) -> dict:
    """{"m": {name: array}, "v": {name: array}, "step": int}: the first and second moments of each
    parameter (by its params-dict name; `names` maps Parameter.name to it) and the update count."""
    m = {names[p.name]: np.array(avg.asnumpy()) for p, avg in zip(optimizer.parameters, optimizer.exp_avg)}
    v = {names[p.name]: np.array(avg.asnumpy()) for p, avg in zip(optimizer.parameters, optimizer.exp_avg_sq)}
    return {"m": m, "v": v, "step": int(optimizer.state_step.asnumpy())}


def restore_optimizer_state(optimizer: AdamW, names: dict, state: dict) -> None:
    """Inverse of optimizer_state (shapes were checked by the caller)."""
    for p, m, v in zip(optimizer.parameters, optimizer.exp_avg, optimizer.exp_avg_sq):
        m.set_data(ms.Tensor(state["m"][names[p.name]], ms.float32))
        v.set_data(ms.Tensor(state["v"][names[p.name]], ms.float32))
    optimizer.state_step.set_data(ms.Tensor(int(state["step"]), ms.int32))
