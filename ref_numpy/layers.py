"""The layers of GPT as small pure NumPy functions.

Shapes: B batch, T query length, S key length (= past + T), C n_embd, H n_head,
D head_dim = C // H.  Every function computes in the dtype of its inputs.

Masked self-attention, step by step (see `mha`):
    1. create q, k, v from one projection of x      linear(x, c_attn)  -> split in 3
    2. split heads                                    split_heads        [B, T, C] -> [B, H, T, D]
    3. scores with the causal (and padding) mask      attention          q k^T / sqrt(D), masked
    4. softmax, weighted sum of values                attention          softmax(scores) v
    5. merge heads                                    merge_heads        [B, H, T, D] -> [B, T, C]
    6. output projection                              linear(y, c_proj)
"""
from __future__ import annotations

import math

import numpy as np


def gelu(x):
    """GELU in the tanh form of the GPT-1/GPT-2 code (not the exact erf form):
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * (x * x * x))))  # x*x*x: 2x faster than x**3


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along `axis`.  Subtracting the row max first changes nothing
    mathematically and keeps exp() from overflowing."""
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def layer_norm(x, g, b, eps=1e-5):
    """Normalise the last axis to mean 0, variance 1 (population variance, i.e. divide by C),
    then scale by g and shift by b.  x [..., C], g and b [C]."""
    mean = np.mean(x, axis=-1, keepdims=True)
    variance = np.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return g * (x - mean) / np.sqrt(variance + eps) + b


def linear(x, w, b):
    """x [..., in] @ w [in, out] + b [out] -> [..., out].

    The leading axes are flattened first: one [B*T, in] @ [in, out] matrix product runs
    ~2.5x faster in BLAS than NumPy's loop of B small ones, with the same result."""
    return (x.reshape(-1, x.shape[-1]) @ w + b).reshape(*x.shape[:-1], w.shape[-1])


def split_heads(x, n_head):
    """[B, T, C] -> [B, H, T, D]: each head sees its own D = C / H slice of the features."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """[B, H, T, D] -> [B, T, C]: the inverse of split_heads."""
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def causal_mask(n_query, n_key):
    """Boolean [T, S], True where query i may attend key j.

    Aligned to the lower right: the T queries are the *last* T of the S positions, so
    query i sits at absolute position S - T + i and sees keys j <= S - T + i.  With no
    cache (S == T) this is the usual lower-triangular matrix."""
    offset = n_key - n_query
    return np.arange(n_key)[None, :] <= np.arange(n_query)[:, None] + offset


def padding_mask(attention_mask):
    """attention_mask [B, S] of 1 (real token) / 0 (padding) -> boolean [B, 1, 1, S]:
    no query may attend a padding key."""
    return (np.asarray(attention_mask) != 0)[:, None, None, :]


def attention(q, k, v, mask):
    """Scaled dot-product attention.

    q [B, H, T, D], k and v [B, H, S, D], mask boolean broadcastable to [B, H, T, S]
    (True = may attend).  Returns (out [B, H, T, D], weights [B, H, T, S]).

    Masked scores are replaced by the most negative *finite* number of the dtype rather
    than -inf or -1e10: -1e10 overflows float16 to -inf, and a row whose keys are all
    masked (a padding query) would then be softmax(-inf, ..., -inf) = NaN.  With a
    finite minimum that row becomes uniform instead -- its output is meaningless but
    finite, and real queries always see at least themselves.
    """
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1]).astype(q.dtype)
    scores = np.where(mask, scores, np.finfo(scores.dtype).min)
    with np.errstate(over="ignore"):  # min - rowmax may round to -inf: exp(-inf) = 0 is exact
        weights = softmax(scores, axis=-1)
    return weights @ v, weights


def mha(x, attn_params, n_head, mask, past=None):
    """Multi-head masked self-attention.

    x [B, T, C]; mask boolean broadcastable to [B, 1, T, S]; past None or (k, v), each
    [B, H, S - T, D], the keys and values of earlier positions (the KV cache).
    Returns (out [B, T, C], present (k, v) each [B, H, S, D], weights [B, H, T, S]).
    """
    qkv = linear(x, **attn_params["c_attn"])  # [B, T, 3C]
    q, k, v = (split_heads(part, n_head) for part in np.split(qkv, 3, axis=-1))
    if past is not None:
        k = np.concatenate([past[0], k], axis=-2)
        v = np.concatenate([past[1], v], axis=-2)
    y, weights = attention(q, k, v, mask)
    out = linear(merge_heads(y), **attn_params["c_proj"])
    return out, (k, v), weights


def mlp(x, mlp_params):
    """Position-wise feed-forward: [B, T, C] -> expand to 4C -> GELU -> back to C."""
    return linear(gelu(linear(x, **mlp_params["c_fc"])), **mlp_params["c_proj"])


def gpt2_block(x, block_params, n_head, mask, past=None, eps=1e-5, trace=None):
    """GPT-2 block, LayerNorm *before* each sub-layer (pre-LN):
        x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
    Returns (x [B, T, C], present).  `trace`, if a dict, receives the intermediates."""
    p = block_params
    a, present, weights = mha(layer_norm(x, **p["ln_1"], eps=eps), p["attn"], n_head, mask, past)
    x = x + a
    m = mlp(layer_norm(x, **p["ln_2"], eps=eps), p["mlp"])
    x = x + m
    if trace is not None:
        trace.update(attn_weights=weights, attn=a, mlp=m, out=x)
    return x, present


def gpt1_block(x, block_params, n_head, mask, past=None, eps=1e-5, trace=None):
    """GPT-1 block, LayerNorm *after* each residual add (post-LN, as in the Transformer paper):
        n = ln_1(x + attn(x));  h = ln_2(n + mlp(n))
    Returns (h [B, T, C], present).  `trace`, if a dict, receives the intermediates."""
    p = block_params
    a, present, weights = mha(x, p["attn"], n_head, mask, past)
    n = layer_norm(x + a, **p["ln_1"], eps=eps)
    m = mlp(n, p["mlp"])
    h = layer_norm(n + m, **p["ln_2"], eps=eps)
    if trace is not None:
        trace.update(attn_weights=weights, attn=a, mlp=m, out=h)
    return h, present
