"""The whole model: embeddings -> n_layer blocks -> (GPT-2: final LayerNorm) -> tied logits."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .config import GPTConfig
from .layers import causal_mask, gpt1_block, gpt2_block, layer_norm, padding_mask
from .params import check_params
from .validation import (as_attention_mask, as_position_ids, as_token_ids, check_length,
                         default_position_ids, past_length)

BLOCKS = {"gpt1": gpt1_block, "gpt2": gpt2_block}


class ModelInputs(NamedTuple):
    """Validated inputs of one forward call (shared by every backend)."""
    ids: np.ndarray  # int64 [B, T]
    attention_mask: np.ndarray | None  # int64 [B, S] (S = n_past + T) or None
    position_ids: np.ndarray  # int64 [B, T]
    n_past: int


def prepare_inputs(config: GPTConfig, ids, *, attention_mask=None, past=None, position_ids=None) -> ModelInputs:
    """Validate the arguments of `forward` and fill in the default position ids."""
    ids = as_token_ids(ids, config)
    batch, n_new = ids.shape
    n_past = past_length(past, config, batch)
    check_length(n_past, n_new, config)
    mask = as_attention_mask(attention_mask, batch, n_past + n_new)
    if position_ids is None:
        position_ids = default_position_ids(mask, n_past, batch, n_new)
    else:
        position_ids = as_position_ids(position_ids, config, batch, n_new)
    return ModelInputs(ids, mask, position_ids, n_past)


def embed(params, ids, position_ids):
    """Token embedding plus position embedding: [B, T] ids -> [B, T, C]."""
    return params["wte"][ids] + params["wpe"][position_ids]


def attention_mask_4d(n_query, n_key, attention_mask=None):
    """Causal mask [1, 1, T, S], combined with the padding mask into [B, 1, T, S] if given."""
    mask = causal_mask(n_query, n_key)[None, None]
    if attention_mask is not None:
        mask = mask & padding_mask(attention_mask)
    return mask


def lm_head(params, x):
    """Logits from the *tied* embedding: the output projection is wte itself, [B, T, C] @ [C, V].
    (wte.T is a free transposed view; BLAS reads it as is.)"""
    wte = params["wte"]
    return (x.reshape(-1, x.shape[-1]) @ wte.T).reshape(*x.shape[:-1], wte.shape[0])


def forward(config: GPTConfig, params: dict, ids, *, attention_mask=None, past=None, position_ids=None,
            trace=None):
    """Run the model.

    ids            int [B, T] (or [T], read as B = 1)
    attention_mask 0/1 [B, S_past + T], 1 = real token; left padding.  Optional.
    past           KV cache from an earlier call: one (k, v) per layer, each [B, H, S_past, D].
    position_ids   int [B, T]; default: S_past + arange(T), or cumsum(attention_mask) - 1.
    trace          optional dict; receives every intermediate under a flat name
                   ("embed", "blocks.{i}.attn", "blocks.{i}.attn_weights", "blocks.{i}.mlp",
                   "blocks.{i}.out", "ln_f", "logits") for layer-by-layer comparison.

    Returns (logits [B, T, n_vocab], present), present being the cache extended by these T
    tokens.  The computation runs in the dtype of the parameters.  Params that do not fit the
    config (check_params: a missing, extra or mis-shaped array) raise ValueError.
    """
    check_params(config, params)
    return forward_unchecked(config, params, ids, attention_mask=attention_mask, past=past,
                             position_ids=position_ids, trace=trace)


def forward_unchecked(config: GPTConfig, params: dict, ids, *, attention_mask=None, past=None, position_ids=None,
                      trace=None):
    """`forward` without check_params, for a caller that checked the params once and then runs
    the model many times: generation's per-token step (numpy_step).  Inputs are still checked."""
    inputs = prepare_inputs(config, ids, attention_mask=attention_mask, past=past, position_ids=position_ids)
    batch, n_new = inputs.ids.shape
    x = embed(params, inputs.ids, inputs.position_ids)  # [B, T, C]
    mask = attention_mask_4d(n_new, inputs.n_past + n_new, inputs.attention_mask)  # [B|1, 1, T, S]
    block = BLOCKS[config.arch]
    if trace is not None:
        trace["embed"] = x
    present = []
    for i, block_params in enumerate(params["blocks"]):
        block_trace = {} if trace is not None else None
        x, layer_present = block(x, block_params, config.n_head, mask, None if past is None else past[i],
                                 eps=config.layer_norm_epsilon, trace=block_trace)
        present.append(layer_present)
        if trace is not None:
            trace.update({f"blocks.{i}.{k}": v for k, v in block_trace.items()})
    if config.arch == "gpt2":
        x = layer_norm(x, **params["ln_f"], eps=config.layer_norm_epsilon)
        if trace is not None:
            trace["ln_f"] = x
    logits = lm_head(params, x)  # [B, T, V]
    if trace is not None:
        trace["logits"] = logits
    return logits, present
