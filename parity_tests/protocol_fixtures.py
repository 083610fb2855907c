"""Backends that break the protocol one way each, for test_backend_protocol.py: each is the spec
backend (gptspec/backends/spec.py) with one thing wrong, loaded by the CLI as
`--backend parity_tests.protocol_fixtures:NAME`."""
from __future__ import annotations

import numpy as np

from gptspec.backends.spec import SpecBackend, factory as spec_factory

NOT_A_FACTORY = 42


class Broken(SpecBackend):
    """The spec backend whose forward passes its result through `self.damage`."""

    def damage(self, logits, trace):
        return logits

    def forward(self, ids, attention_mask=None, *, trace=None, past=None):
        logits, present = super().forward(ids, attention_mask, trace=trace, past=past)
        return self.damage(logits, trace), present


def broken(damage):
    def factory(config, params):
        backend = Broken(config, params)
        backend.damage = damage
        return backend
    return factory


wrong_shape = broken(lambda logits, trace: logits[..., :-1])
as_list = broken(lambda logits, trace: logits.tolist())
int_logits = broken(lambda logits, trace: logits.astype(np.int64))
nan_logits = broken(lambda logits, trace: np.full_like(logits, np.nan))
unknown_trace_name = broken(lambda logits, trace: (trace.update({"blocks.0.attention": trace["blocks.0.attn"]})
                                                   if trace is not None else None) or logits)
missing_trace_name = broken(lambda logits, trace: (trace.pop("blocks.0.mlp") if trace is not None else None,
                                                   logits)[1])


def raises_in_forward(config, params):
    backend = Broken(config, params)

    def damage(logits, trace):
        raise RuntimeError("kernel exploded")
    backend.damage = damage
    return backend


def no_forward(config, params):
    return object()


def refuses(config, params, *, precision="fp32"):
    if precision != "fp32":
        raise ValueError(f"precision must be 'fp32', got {precision!r}")
    return spec_factory(config, params)


def fails_to_build(config, params):
    raise RuntimeError("no device")


class ForwardOnly:
    """The required part alone: forward, nothing optional."""

    def __init__(self, config, params):
        self.inner = SpecBackend(config, params)

    def forward(self, ids, attention_mask=None):
        return self.inner.forward(ids, attention_mask)[0]


def forward_only(config, params):
    return ForwardOnly(config, params)


def bad_grads(config, params):
    backend = SpecBackend(config, params)
    inner = backend.loss_and_grads

    def loss_and_grads(inputs, targets, attention_mask=None):
        loss, grads = inner(inputs, targets, attention_mask)
        del grads["blocks"][0]["mlp"]["c_fc"]["b"]
        return loss, grads
    backend.loss_and_grads = loss_and_grads
    return backend


def decays_biases(config, params):
    """A real porting bug: AdamW's weight decay on every tensor (torch's default param group)."""
    backend = SpecBackend(config, params)
    inner = backend.train_step

    def train_step(inputs, targets, attention_mask=None, *, lr, weight_decay, **hyper):
        before = backend.params
        result = inner(inputs, targets, attention_mask, lr=lr, weight_decay=weight_decay, **hyper)
        import ref_numpy
        flat, old = ref_numpy.flatten_params(result["params"]), ref_numpy.flatten_params(before)
        for name, value in flat.items():
            if value.ndim < 2:  # the spec skipped these: decay them too
                value -= value.dtype.type(lr * weight_decay) * old[name]
        return result
    backend.train_step = train_step
    return backend
