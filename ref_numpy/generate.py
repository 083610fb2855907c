"""Autoregressive generation with a KV cache, batched with left padding.

The loop itself (`decode_stream`) knows nothing about NumPy models: it drives a `step`
function, so every backend reuses the same loop, checks and sampling and differs only in
how it computes the next logits.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from .config import GPTConfig
from .model import forward_unchecked
from .params import check_params
from .sampling import TOP_P_CONVENTIONS, next_tokens
from .validation import as_attention_mask, as_token_ids, check_generation_args

# step(new_ids [B, t], attention_mask [B, S]) -> logits of the last new position [B, V].
# A step keeps its own KV cache: the first call gets the whole prompt, later calls one token.
Step = Callable[[np.ndarray, np.ndarray], np.ndarray]


def numpy_step(config: GPTConfig, params: dict) -> Step:
    """A step function running `forward` with a growing KV cache.

    The params are checked against the config here, once (check_params raises ValueError), not
    at every token: the per-token forward skips the check (forward_unchecked)."""
    check_params(config, params)
    past = None

    def step(new_ids, attention_mask):
        nonlocal past
        logits, past = forward_unchecked(config, params, new_ids, attention_mask=attention_mask, past=past)
        return logits[:, -1]

    return step


def decode_stream(step: Step, config: GPTConfig, ids, max_new_tokens, *, temperature=1.0, top_k=None,
                  top_p=None, greedy=False, seed=None, eos_id=None, attention_mask=None,
                  top_p_convention="hf") -> Iterator[np.ndarray]:
    """Yield the next token of every row, [B] int64, once per step.

    Rows that produced `eos_id` keep yielding `eos_id`; the stream ends when every row has
    finished or after `max_new_tokens` steps.  Arguments as in `generate`.
    """
    ids = as_token_ids(ids, config)
    batch, prompt_length = ids.shape
    check_generation_args(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                          eos_id=eos_id, config=config, prompt_length=prompt_length)
    if top_p_convention not in TOP_P_CONVENTIONS:
        raise ValueError(f"top_p_convention must be one of {TOP_P_CONVENTIONS}, got {top_p_convention!r}")
    mask = as_attention_mask(attention_mask, batch, prompt_length)
    if mask is None:
        mask = np.ones((batch, prompt_length), dtype=np.int64)
    if (mask.sum(axis=-1) == 0).any():
        raise ValueError("attention_mask has a row with no real token: nothing to continue from")
    return _stream(step, ids, mask, max_new_tokens, np.random.default_rng(seed), eos_id,
                   dict(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p,
                        top_p_convention=top_p_convention))


def _stream(step, ids, mask, max_new_tokens, rng, eos_id, sampling) -> Iterator[np.ndarray]:
    # A separate generator so that decode_stream's checks run at call time, not at the first token.
    batch = ids.shape[0]
    finished = np.zeros(batch, dtype=bool)
    new_ids = ids
    for _ in range(max_new_tokens):
        logits = step(new_ids, mask)
        token = next_tokens(logits, rng, **sampling)
        if eos_id is not None:
            token = np.where(finished, eos_id, token)
            finished |= token == eos_id
        yield token
        if finished.all():
            return
        new_ids = token[:, None]
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=mask.dtype)], axis=1)

def collect(ids, stream: Iterator[np.ndarray]) -> np.ndarray:
    """Prompt followed by the streamed tokens: [B, T + n] (or [T + n] for a 1-D prompt)."""
    prompt = np.asarray(ids)
    rows = np.atleast_2d(prompt).astype(np.int64)
    tokens = list(stream)
    out = np.concatenate([rows, np.stack(tokens, axis=1)], axis=1) if tokens else rows
    return out[0] if prompt.ndim == 1 else out


def generate(config: GPTConfig, params: dict, ids, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None,
             greedy=False, seed=None, eos_id=None, attention_mask=None, top_p_convention="hf") -> np.ndarray:
    """Continue `ids` ([B, T] or [T]) by up to `max_new_tokens` tokens.

    greedy / temperature=0   argmax at each step
    temperature, top_k, top_p logits processors (see `sampling`); top_p_convention "hf"
                              (smallest set with mass >= p) or "openai" (largest <= p)
    seed                      seeds numpy.random.default_rng: same seed, same tokens
    eos_id                    a row stops at this token (later slots repeat it); generation
                              ends early once every row has stopped
    attention_mask            [B, T] 0/1 for a left-padded batch of prompts

    Returns the prompt followed by the new tokens, [B, T + n] (or [T + n]), n <= max_new_tokens.
    prompt length + max_new_tokens must fit in n_ctx: this raises rather than truncating.
    Params that do not fit the config raise ValueError (checked once, by numpy_step).
    """
    stream = decode_stream(numpy_step(config, params), config, ids, max_new_tokens, temperature=temperature,
                           top_k=top_k, top_p=top_p, greedy=greedy, seed=seed, eos_id=eos_id,
                           attention_mask=attention_mask, top_p_convention=top_p_convention)
    return collect(ids, stream)
