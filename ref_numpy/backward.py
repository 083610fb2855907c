"""The backward pass: one function per forward function of layers.py / model.py, same names
with `_backward`, each written out next to the math (as llm.c's train_gpt2.c does in C).

Convention: `d_x` is d loss / d x, an array of x's shape.  A backward function takes the
gradient of its forward's output and whatever the forward saw (its inputs, sometimes its
output), and returns the gradients of the inputs, in the dtype of the inputs.

The composite layers (mha, mlp, the blocks) read what their training forward kept in a small
dict, the *tape*, filled by ref_numpy/train.py with the same layer functions the inference
pass uses.  Shapes: B batch, T length, C n_embd, H n_head, D = C / H, V n_vocab.
"""
from __future__ import annotations

import math

import numpy as np

from .layers import merge_heads, split_heads

GELU_K = math.sqrt(2 / math.pi)


def linear_backward(d_out, x, w):
    """y = x @ w + b.   x [..., in], w [in, out], d_out [..., out].

        d_x = d_out @ w^T        [..., in]
        d_w = x^T @ d_out        [in, out]   (summed over every leading position)
        d_b = sum(d_out)         [out]
    Leading axes are flattened, as in `linear`, so each product is one BLAS call."""
    d2 = d_out.reshape(-1, d_out.shape[-1])  # [N, out]
    x2 = x.reshape(-1, x.shape[-1])  # [N, in]
    d_x = (d2 @ w.T).reshape(x.shape)
    return d_x, x2.T @ d2, d2.sum(axis=0)


def gelu_backward(d_out, x):
    """gelu(x) = 0.5 x (1 + tanh(u)),  u = K (x + 0.044715 x^3),  K = sqrt(2/pi).  x, d_out [...].

        d gelu / dx = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) K (1 + 3 * 0.044715 x^2)"""
    x2 = x * x
    t = np.tanh(GELU_K * (x + 0.044715 * (x2 * x)))
    return d_out * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * (GELU_K * (1 + 3 * 0.044715 * x2)))


def softmax_backward(d_out, y, axis=-1):
    """y = softmax(x) along `axis`; d_out, y [...].   dy_i/dx_j = y_i (delta_ij - y_j), so

        d_x = y * (d_out - sum(d_out * y))          (the sum along `axis`)"""
    return y * (d_out - np.sum(d_out * y, axis=axis, keepdims=True))


def layer_norm_backward(d_out, x, g, eps=1e-5):
    """y = g * xhat + b,  xhat = (x - mean) * r,  r = 1 / sqrt(var + eps).  x, d_out [..., C], g [C].

    Returns (d_x [..., C], d_g [C], d_b [C]):
        d_b = sum(d_out),   d_g = sum(d_out * xhat)          (over every leading position)
        d_x = r * (d_xhat - mean(d_xhat) - xhat * mean(d_xhat * xhat)),   d_xhat = d_out * g
    the three terms of d_x: the direct path, the path through the mean, the path through var
    (derivation in docs/backprop.md).  mean and var are recomputed from x, as the forward does."""
    mean = np.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    r = 1 / np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True) + eps)
    xhat = centred * r
    d_xhat = d_out * g
    d_x = r * (d_xhat - np.mean(d_xhat, axis=-1, keepdims=True)
               - xhat * np.mean(d_xhat * xhat, axis=-1, keepdims=True))
    lead = tuple(range(x.ndim - 1))
    return d_x, np.sum(d_out * xhat, axis=lead), np.sum(d_out, axis=lead)


def split_heads_backward(d_heads):
    """[B, H, T, D] -> [B, T, C]: split_heads only moves numbers, so its backward moves them back."""
    return merge_heads(d_heads)


def merge_heads_backward(d_out, n_head):
    """[B, T, C] -> [B, H, T, D]: the inverse move of merge_heads."""
    return split_heads(d_out, n_head)


def dropout_backward(d_out, scale):
    """Dropout is y = x * scale, scale = keep / (1 - p) (0 or 1/(1-p) per element), so
    d_x = d_out * scale; scale None means no dropout."""
    return d_out if scale is None else d_out * scale


def attention_backward(d_out, q, k, v, mask, weights, drop=None):
    """out = w' v,  w' = w * drop (attention dropout, or w itself),  w = softmax(s),
    s = mask(q k^T / sqrt(D)).   q [B, H, T, D], k and v [B, H, S, D], mask broadcastable to
    [B, H, T, S], weights w [B, H, T, S] (softmax output), d_out [B, H, T, D].

        d_v  = w'^T d_out                      [B, H, S, D]
        d_w  = (d_out v^T) * drop              [B, H, T, S]
        d_s  = softmax_backward(d_w, w), then 0 where masked: a masked score was replaced by a
               constant, so it has no gradient.  A fully masked (padding) row has uniform w;
               its d_s is all zeros -- finite, no NaN.
        d_q  = d_s k / sqrt(D),  d_k = d_s^T q / sqrt(D)
    Returns (d_q, d_k, d_v)."""
    used = weights if drop is None else weights * drop
    d_v = used.swapaxes(-1, -2) @ d_out
    d_weights = dropout_backward(d_out @ v.swapaxes(-1, -2), drop)
    d_scores = np.where(mask, softmax_backward(d_weights, weights), 0).astype(q.dtype, copy=False)
    d_scores /= np.sqrt(q.shape[-1]).astype(q.dtype)
    return d_scores @ k, d_scores.swapaxes(-1, -2) @ q, d_v


def mha_backward(d_out, tape, attn_params, n_head):
    """Backward of mha (no KV cache).  d_out [B, T, C]; tape from train.mha_forward holds x (the
    input), q, k, v, mask, weights, drop and y (merged heads, the input of c_proj).
    Returns (d_x [B, T, C], grads {"c_attn": {"w", "b"}, "c_proj": {"w", "b"}})."""
    d_y, d_proj_w, d_proj_b = linear_backward(d_out, tape["y"], attn_params["c_proj"]["w"])
    d_q, d_k, d_v = attention_backward(merge_heads_backward(d_y, n_head), tape["q"], tape["k"], tape["v"],
                                       tape["mask"], tape["weights"], tape["drop"])
    d_qkv = np.concatenate([split_heads_backward(d) for d in (d_q, d_k, d_v)], axis=-1)  # [B, T, 3C]
    d_x, d_attn_w, d_attn_b = linear_backward(d_qkv, tape["x"], attn_params["c_attn"]["w"])
    return d_x, {"c_attn": {"w": d_attn_w, "b": d_attn_b}, "c_proj": {"w": d_proj_w, "b": d_proj_b}}


def mlp_backward(d_out, tape, mlp_params):
    """Backward of mlp: x -> h = c_fc(x) -> a = gelu(h) -> c_proj(a).  d_out [B, T, C]; tape holds
    x [B, T, C], h and a [B, T, 4C].  Returns (d_x, grads {"c_fc": {...}, "c_proj": {...}})."""
    d_a, d_proj_w, d_proj_b = linear_backward(d_out, tape["a"], mlp_params["c_proj"]["w"])
    d_h = gelu_backward(d_a, tape["h"])
    d_x, d_fc_w, d_fc_b = linear_backward(d_h, tape["x"], mlp_params["c_fc"]["w"])
    return d_x, {"c_fc": {"w": d_fc_w, "b": d_fc_b}, "c_proj": {"w": d_proj_w, "b": d_proj_b}}


def gpt2_block_backward(d_out, tape, block_params, n_head, eps=1e-5):
    """Pre-LN block:  x1 = x + drop(attn(ln_1(x)));  out = x1 + drop(mlp(ln_2(x1))).
    A residual add passes its gradient to both branches unchanged.  d_out [B, T, C]; tape holds
    x, x1, the two sub-layer tapes and the two residual dropout scales.
    Returns (d_x [B, T, C], grads shaped like block_params)."""
    p = block_params
    d_h2, d_mlp = mlp_backward(dropout_backward(d_out, tape["mlp_drop"]), tape["mlp"], p["mlp"])
    d_x1, d_g2, d_b2 = layer_norm_backward(d_h2, tape["x1"], p["ln_2"]["g"], eps)
    d_x1 += d_out  # the residual path
    d_h1, d_attn = mha_backward(dropout_backward(d_x1, tape["attn_drop"]), tape["attn"], p["attn"], n_head)
    d_x, d_g1, d_b1 = layer_norm_backward(d_h1, tape["x"], p["ln_1"]["g"], eps)
    d_x += d_x1  # the residual path
    return d_x, {"ln_1": {"g": d_g1, "b": d_b1}, "attn": d_attn, "ln_2": {"g": d_g2, "b": d_b2}, "mlp": d_mlp}


def gpt1_block_backward(d_out, tape, block_params, n_head, eps=1e-5):
    """Post-LN block:  s1 = x + drop(attn(x));  n = ln_1(s1);  s2 = n + drop(mlp(n));  out = ln_2(s2).
    d_out [B, T, C]; tape holds s1, s2, the two sub-layer tapes (attn's x is the block input,
    mlp's x is n) and the two residual dropout scales.  Returns (d_x, grads like block_params)."""
    p = block_params
    d_s2, d_g2, d_b2 = layer_norm_backward(d_out, tape["s2"], p["ln_2"]["g"], eps)
    d_n, d_mlp = mlp_backward(dropout_backward(d_s2, tape["mlp_drop"]), tape["mlp"], p["mlp"])
    d_n += d_s2  # the residual path
    d_s1, d_g1, d_b1 = layer_norm_backward(d_n, tape["s1"], p["ln_1"]["g"], eps)
    d_x, d_attn = mha_backward(dropout_backward(d_s1, tape["attn_drop"]), tape["attn"], p["attn"], n_head)
    d_x += d_s1  # the residual path
    return d_x, {"ln_1": {"g": d_g1, "b": d_b1}, "attn": d_attn, "ln_2": {"g": d_g2, "b": d_b2}, "mlp": d_mlp}


def embed_backward(d_x, ids, position_ids, n_vocab, n_ctx):
    """x = wte[ids] + wpe[position_ids].   d_x [B, T, C], ids and position_ids int [B, T].

    Each row of wte / wpe receives the sum of d_x over every position that looked it up.
    A token used twice must get both contributions: np.add.at accumulates repeated indices,
    whereas d_wte[ids] += d_x would keep only one of them.  Returns (d_wte [V, C], d_wpe [n_ctx, C])."""
    C = d_x.shape[-1]
    d_wte = np.zeros((n_vocab, C), d_x.dtype)
    d_wpe = np.zeros((n_ctx, C), d_x.dtype)
    np.add.at(d_wte, ids.reshape(-1), d_x.reshape(-1, C))
    np.add.at(d_wpe, position_ids.reshape(-1), d_x.reshape(-1, C))
    return d_wte, d_wpe


def lm_head_backward(d_logits, hidden, wte):
    """logits = hidden @ wte^T (the tied head).   d_logits [B, T, V], hidden [B, T, C], wte [V, C].

        d_hidden = d_logits @ wte        [B, T, C]
        d_wte    = d_logits^T @ hidden   [V, C]   -- the *head* part of wte's gradient; the
                                                     embedding part comes from embed_backward.
    Returns (d_hidden, d_wte)."""
    d2 = d_logits.reshape(-1, d_logits.shape[-1])  # [N, V]
    d_hidden = (d2 @ wte).reshape(hidden.shape)
    return d_hidden, d2.T @ hidden.reshape(-1, hidden.shape[-1])
