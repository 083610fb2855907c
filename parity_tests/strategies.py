"""Hypothesis strategies for small random models and inputs, shared by the property tests."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import ref_numpy
from gptspec.parity import probe_params


@st.composite
def configs(draw, arch=None, max_layers=3, max_heads=4, max_head_dim=16, max_ctx=16, max_vocab=64):
    """A small GPTConfig: arch gpt1/gpt2, 1-3 layers, 1-4 heads, head dim 1-16."""
    n_head = draw(st.integers(1, max_heads))
    head_dim = draw(st.integers(1, max_head_dim))
    return ref_numpy.GPTConfig(
        arch=arch or draw(st.sampled_from(ref_numpy.config.ARCHITECTURES)),
        n_vocab=draw(st.integers(2, max_vocab)),
        n_ctx=draw(st.integers(2, max_ctx)),
        n_embd=n_head * head_dim,
        n_head=n_head,
        n_layer=draw(st.integers(1, max_layers)),
    )


def model_for(config, seed):
    """float64 spec params with every parameter randomised at probe scale (see
    gptspec.parity.probe_params: GELU inputs of order 1, small embeddings)."""
    return probe_params(config, seed, dtype=np.float64)


@st.composite
def token_batches(draw, config, max_batch=3, min_length=1, max_length=None):
    """int64 ids [B, T] with 1 <= B <= max_batch and min_length <= T <= max_length (default n_ctx)."""
    batch = draw(st.integers(1, max_batch))
    length = draw(st.integers(min_length, max_length or config.n_ctx))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(0, config.n_vocab, size=(batch, length))


def left_padding_mask(lengths, total):
    """attention_mask [B, total] with the last lengths[b] slots real (1) and the rest padding (0)."""
    mask = np.zeros((len(lengths), total), dtype=np.int64)
    for row, n in enumerate(lengths):
        mask[row, total - n:] = 1
    return mask
