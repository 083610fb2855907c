"""Generation with the MindSpore model: the spec's loop (ref_numpy.decode_stream), checks and
seeded sampling, with a MindSpore step function.  Only the step differs:

    pynative  the dynamic KV cache, concatenated each step (as ref_numpy.numpy_step)
    graph     a static cache [B, H, L, D] per layer and a write position: the compiled
              step sees the same shapes at every decode step, so it compiles twice in all
              (once for the prompt, which creates the cache, once for the one-token step).
              L = prompt + max_new_tokens rounded up to a power of two (model.cache_slots):
              every step attends over all L slots, so L = n_ctx = 1024 would double the
              cost of a 124M decode step

The cache stays on the device between steps; only ids, masks and the last logits cross to NumPy.
"""
from __future__ import annotations

import numpy as np
from mindspore import Tensor

from ref_numpy import GPTConfig, collect, decode_stream
from ref_numpy.validation import default_position_ids

from .model import GPTModel, as_numpy, cache_slots


def ms_step(model: GPTModel, max_new_tokens=None):
    """A ref_numpy step function (new_ids [B, t], attention_mask [B, S]) -> logits [B, V]
    running `model`, keeping its KV cache between calls.  In graph mode, max_new_tokens (if
    known) sizes the static cache to prompt + max_new_tokens slots instead of n_ctx."""
    return _static_step(model, max_new_tokens) if model.mode == "graph" else _dynamic_step(model)


def _dynamic_step(model):
    past = None

    def step(new_ids, attention_mask):
        nonlocal past
        logits, past = model(Tensor(new_ids), Tensor(attention_mask), past)
        return as_numpy(logits[:, -1])

    return step


def _static_step(model, max_new_tokens):
    cache = None
    n_slots = model.config.n_ctx

    def step(new_ids, attention_mask):
        nonlocal cache, n_slots
        batch, n_new = new_ids.shape
        n_past = attention_mask.shape[1] - n_new
        if cache is None and max_new_tokens is not None:  # the prompt; checked by decode_stream by now
            n_slots = cache_slots(n_new + max_new_tokens, model.config.n_ctx)
        positions = default_position_ids(attention_mask, n_past, batch, n_new)
        key_mask = np.zeros((batch, n_slots), np.int64)
        key_mask[:, :attention_mask.shape[1]] = attention_mask
        logits, cache = model.step_numpy(new_ids, positions, key_mask, n_past, cache, last_only=True)
        return as_numpy(logits[:, -1])

    return step


def generate(config: GPTConfig, params, ids, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None,
             greedy=False, seed=None, eos_id=None, attention_mask=None, top_p_convention="hf",
             amp_level="O0", dtype=None, mode="pynative") -> np.ndarray:
    """ref_numpy.generate on MindSpore: same arguments, checks, sampling and results.

    params: the spec's params dict, or an already built GPTModel (then amp_level, dtype and
    mode are the model's)."""
    if isinstance(params, GPTModel):
        model = params
        if model.config != config:
            raise ValueError(f"the model was built for {model.config}, not for {config}")
    else:
        model = GPTModel(config, params, amp_level=amp_level, dtype=dtype, mode=mode)
    stream = decode_stream(ms_step(model, max_new_tokens), config, ids, max_new_tokens, temperature=temperature, top_k=top_k,
                           top_p=top_p, greedy=greedy, seed=seed, eos_id=eos_id, attention_mask=attention_mask,
                           top_p_convention=top_p_convention)
    return collect(ids, stream)
