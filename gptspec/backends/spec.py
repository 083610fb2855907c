"""The spec itself as a protocol backend: ref_numpy computing in float32 (or float64).

    gptspec parity --backend numpy                   the float32 spec against the float64 spec
    pytest parity_tests --gptspec-backend numpy --gptspec-option dtype=float64

It provides every optional part but the dtype log and the injected overflow (no loss scaling), so
it is the baseline every check must pass on, and the template a new backend can follow."""
from __future__ import annotations

import math

import numpy as np

import ref_numpy
from ref_numpy.optim import adamw_init, adamw_step, clip_grad_norm

__all__ = ["factory", "SpecBackend"]

DTYPES = ("float32", "float64")


def factory(config, params, *, dtype="float32"):
    if dtype not in DTYPES:
        raise ValueError(f"the numpy backend computes in one of {DTYPES}, got dtype={dtype!r}")
    return SpecBackend(config, params, dtype)


class SpecBackend:
    name = "numpy (gptspec ref_numpy)"
    version = f"numpy {np.__version__}"
    device = "cpu"
    amp_level = "O0"

    def __init__(self, config, params, dtype="float32"):
        ref_numpy.check_params(config, params)
        self.config, self.dtype = config, dtype
        self.params = ref_numpy.cast_params(params, dtype)
        self.optimizer = None  # (hyper-parameters, AdamW state) from the first train_step

    def forward(self, ids, attention_mask=None, *, trace=None, past=None):
        return ref_numpy.forward(self.config, self.params, ids, attention_mask=attention_mask, past=past,
                                 trace=trace)

    def loss_and_grads(self, inputs, targets, attention_mask=None):
        return ref_numpy.loss_and_grads(self.config, self.params, inputs, targets, attention_mask=attention_mask)

    def classifier_loss_and_grads(self, head, ids, labels, clf_positions, attention_mask=None, *, lm_coef=0.5):
        head = ref_numpy.cast_params(head, self.dtype)
        return ref_numpy.classifier_loss_and_grads(self.config, self.params, head, ids, labels, clf_positions,
                                                   attention_mask=attention_mask, lm_coef=lm_coef)

    def train_step(self, inputs, targets, attention_mask=None, *, lr, betas, eps, weight_decay, max_grad_norm):
        hyper = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        if self.optimizer is None:
            self.optimizer = (hyper, adamw_init(self.params))
        elif self.optimizer[0] != hyper:
            raise ValueError(f"train_step's hyper-parameters changed from {self.optimizer[0]} to {hyper}: this "
                             f"backend's optimizer keeps the first ones")
        loss, grads = self.loss_and_grads(inputs, targets, attention_mask)
        clipped, norm = clip_grad_norm(grads, math.inf if max_grad_norm is None else max_grad_norm)
        self.params, state = adamw_step(self.params, clipped, self.optimizer[1], **hyper)
        self.optimizer = (hyper, state)
        return {"loss": loss, "grad_norm": norm, "params": self.params}
