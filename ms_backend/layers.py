"""The layers of GPT in MindSpore, name for name the functions of ref_numpy.layers.

Shapes: B batch, T query length, S key length, C n_embd, H n_head, D head_dim = C // H.
The functions compute in the dtype of their inputs, like the spec's.  The Cells below hold
the parameters (named like the spec's params dict) and decide the dtype of each operation
from a `Precision` (see amp.py); they call the functions by their module-level name at call
time, so a test can monkeypatch e.g. `ms_backend.layers.gelu` to build a broken variant.

The attention Cell supports two KV caches:
    dynamic  past (k, v) [B, H, S_past, D] is concatenated with the new keys (PyNative)
    static   past (k, v) [B, H, L, D] (L <= n_ctx slots) is preallocated and the new keys are
             written into slots given by a one-hot [L, T] (`cache_write`): shapes never
             change, so a graph compiles once (graph mode generation)
"""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from ref_numpy.layers import merge_heads, split_heads  # pure reshapes: NumPy and MindSpore alike

from .amp import Precision, record_dtype, to

FLOAT16_MIN = float(np.finfo(np.float16).min)
FLOAT32_MIN = float(np.finfo(np.float32).min)
FLOAT64_MIN = float(np.finfo(np.float64).min)
BFLOAT16_MIN = -3.3895313892515355e38  # (2 - 2**-7) * 2**127; numpy has no bfloat16

_batch_matmul_t = ops.BatchMatMul(transpose_b=True)  # q k^T without materialising k^T
_matmul = ops.MatMul()
# weights @ v: BatchMatMul, not ops.matmul, whose backward fails in MindSpore 2.10 when the weights
# are [1, 1, 1, 1] (one row, one head, one token: "MatMulExt ... shape1[-1] must be equal to
# shape2[-2], but got 1 and D"); the forward is the same product.
_batch_matmul = ops.BatchMatMul()


def finite_min(dtype):
    """The most negative finite number of a MindSpore float dtype: the masked score."""
    if dtype == ms.float16:
        return FLOAT16_MIN
    if dtype == ms.bfloat16:
        return BFLOAT16_MIN
    if dtype == ms.float64:
        return FLOAT64_MIN
    return FLOAT32_MIN


GELU_2K = 2 * math.sqrt(2 / math.pi)


def gelu(x):
    """GELU in the tanh form of the GPT-1/GPT-2 code:

        0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
      = x sigmoid(2u)                          since 0.5 (1 + tanh(u)) = sigmoid(2u)

    computed in the second form: MindSpore's CPU GeLU kernel (ops.gelu(approximate="tanh")) runs at
    ~20 ns per element (67 ms on [1024, 3072] float32, one thread; torch 5 ms), 0.8 s of a 124M
    8x128 prefill; these four elementwise ops take 12 ms, max error vs float64 5.7e-7 (the kernel's
    3.9e-7), on x in [-5, 5].  (ops.tanh is not used: on CPU float32 it is off by ~1e-4.)"""
    return x * ops.sigmoid(GELU_2K * (x + 0.044715 * (x * x * x)))


def softmax(x, axis=-1):
    """exp(x - max) / sum(exp(x - max)) along `axis`, the spec's formula."""
    e = ops.exp(x - ops.amax(x, axis, True))
    return e / e.sum(axis=axis, keepdims=True)


def layer_norm(x, g, b, eps=1e-5):
    """(x - mean) / sqrt(population variance + eps) * g + b over the last axis.

    Written from primitive ops rather than ops.LayerNorm: the epsilon is explicit (nn.LayerNorm
    defaults to 1e-7) and it runs in float16 too (ops.LayerNorm has no float16 CPU kernel)."""
    mean = x.mean(axis=-1, keep_dims=True)
    centered = x - mean
    variance = (centered * centered).mean(axis=-1, keep_dims=True)
    return g * centered / ops.sqrt(variance + eps) + b


def linear(x, w, b):
    """x [..., in] @ w [in, out] + b [out] -> [..., out], as one 2-D matmul.  The MatMul primitive
    (ops.matmul expands into it): its derivative reads w and x transposed in place, where
    ops.matmul's materialises both transposes (0.2 s of a 124M training step on CPU)."""
    out = _matmul(x.reshape(-1, x.shape[-1]), w) + b
    return out.reshape(x.shape[:-1] + (w.shape[-1],))


def causal_mask(n_query, n_key, n_slots=None):
    """Boolean [T, S], True where query i may attend key j <= S - T + i (aligned lower right).

    n_slots: the width of the mask when the keys sit in a preallocated cache of n_slots
    (n_key may then be a Tensor); slots >= n_key are never attended."""
    width = n_key if n_slots is None else n_slots
    return ops.arange(width)[None, :] <= ops.arange(n_query)[:, None] + (n_key - n_query)


def padding_mask(attention_mask):
    """attention_mask [B, S] of 1 (real token) / 0 (padding) -> boolean [B, 1, 1, S]."""
    return (attention_mask != 0)[:, None, None, :]


def attention(q, k, v, mask, softmax_dtype=None, n_keys=None, weights_drop=None):
    """Scaled dot-product attention: (out [B, H, T, D], weights [B, H, T, S]).

    q [B, H, T, D], k and v [B, H, S, D], mask boolean broadcastable to [B, H, T, S].
    The scores are computed in the dtype of q and k, then scaled, masked and normalised in
    `softmax_dtype` (default: the same).  Masked scores become the most negative *finite*
    number of that dtype, so a fully masked row (a padding query) is uniform, not NaN.

    n_keys: with a static cache only the first n_keys of the S slots hold keys.  The empty
    slots get -inf, so even a fully masked row is uniform over the n_keys real keys exactly
    as without the cache (at least one score per row stays finite: no NaN).

    weights_drop: training's dropout multiplier [B, H, T, S] (ref_numpy.dropout_masks), applied
    to the weights before they weight v, in its own dtype; the returned weights are undropped.
    """
    scores = _batch_matmul_t(q, k)
    if softmax_dtype is not None:
        scores = to(scores, softmax_dtype)
    scores = scores / math.sqrt(q.shape[-1])
    scores = ops.where(mask, scores, finite_min(scores.dtype))
    if n_keys is not None:
        scores = ops.where(ops.arange(k.shape[-2]) < n_keys, scores, float("-inf"))
    weights = softmax(scores, axis=-1)
    used = weights if weights_drop is None else to(weights, weights_drop.dtype) * weights_drop
    return _batch_matmul(to(used, v.dtype), v), weights


def split_qkv(qkv, n_head):
    """[B, T, 3C] from one projection -> q, k, v each [B, H, T, D]."""
    q, k, v = ops.split(qkv, qkv.shape[-1] // 3, axis=-1)
    return split_heads(q, n_head), split_heads(k, n_head), split_heads(v, n_head)


def extend_cache(past, k, v, cache_write=None):
    """The keys and values of all positions: past (k, v) followed by the new k, v [B, H, T, D].

    Dynamic cache (cache_write None): concatenation, [B, H, S_past + T, D].
    Static cache: past is [B, H, n_slots, D] and cache_write = (slots, n_keys), slots
    [n_slots, T] one-hot marking where each new position goes; slots @ new copies it there
    exactly (one 1, zeros elsewhere)."""
    if past is None:
        return k, v
    if cache_write is None:
        return ops.cat((past[0], k), axis=-2), ops.cat((past[1], v), axis=-2)
    slots = cache_write[0]
    written = slots.sum(axis=-1)[:, None] > 0  # [n_slots, 1]
    slots = to(slots, k.dtype)
    return (ops.where(written, ops.matmul(slots, k), past[0]),
            ops.where(written, ops.matmul(slots, v), past[1]))


def mha(x, attn_params, n_head, mask, past=None):
    """Multi-head masked self-attention with Tensor params, as ref_numpy.mha.
    Returns (out [B, T, C], present (k, v) each [B, H, S, D], weights [B, H, T, S])."""
    q, k, v = split_qkv(linear(x, **attn_params["c_attn"]), n_head)
    k, v = extend_cache(past, k, v)
    y, weights = attention(q, k, v, mask)
    return linear(merge_heads(y), **attn_params["c_proj"]), (k, v), weights


def mlp(x, mlp_params):
    """Position-wise feed-forward: [B, T, C] -> 4C -> GELU -> C, as ref_numpy.mlp."""
    return linear(gelu(linear(x, **mlp_params["c_fc"])), **mlp_params["c_proj"])


def _parameter(array, name):
    return Parameter(Tensor(np.asarray(array, dtype=np.float32)), name=name)


class Linear(nn.Cell):
    """w [in, out], b [out]: matmul in precision.matmul, bias add in precision.elementwise."""

    def __init__(self, params: dict, precision: Precision):
        super().__init__()
        self.w = _parameter(params["w"], "w")
        self.b = _parameter(params["b"], "b")
        self.matmul_dtype = precision.matmul
        self.bias_dtype = precision.elementwise

    def construct(self, x):
        x, w = to(x, self.matmul_dtype), to(self.w, self.matmul_dtype)
        w = record_dtype("matmul", x, w)
        out = linear(x, w, to(self.b, self.bias_dtype))
        return record_dtype("bias_add", out)  # O1: the float16 product + the float32 bias runs in float32


class LayerNorm(nn.Cell):
    """g, b [C]; normalises in precision.norm, returns `out_dtype` (default precision.elementwise)."""

    def __init__(self, params: dict, eps: float, precision: Precision, out_dtype=None):
        super().__init__()
        self.g = _parameter(params["g"], "g")
        self.b = _parameter(params["b"], "b")
        self.eps = float(eps)
        self.norm_dtype = precision.norm
        self.out_dtype = precision.elementwise if out_dtype is None else out_dtype

    def construct(self, x):
        dtype = self.norm_dtype
        x = to(x, dtype)
        out = record_dtype("layer_norm", x, layer_norm(x, to(self.g, dtype), to(self.b, dtype), self.eps))
        return to(out, self.out_dtype)


class MHA(nn.Cell):
    """Multi-head attention with parameters c_attn, c_proj; softmax in precision.norm."""

    def __init__(self, params: dict, n_head: int, precision: Precision):
        super().__init__()
        self.c_attn = Linear(params["c_attn"], precision)
        self.c_proj = Linear(params["c_proj"], precision)
        self.n_head = n_head
        self.matmul_dtype = precision.matmul
        self.softmax_dtype = precision.norm
        self.elementwise_dtype = precision.elementwise

    def construct(self, x, mask, past=None, cache_write=None, weights_drop=None):
        """x [B, T, C] -> (out [B, T, C], present (k, v), weights [B, H, T, S]).
        cache_write: None (dynamic cache) or (slots, n_keys) for the static cache.  weights_drop:
        training's dropout multiplier of the weights [B, H, T, S] (float32), None at inference;
        the multiply is elementwise (precision.elementwise)."""
        q, k, v = split_qkv(self.c_attn(x), self.n_head)
        k, v = extend_cache(past, k, v, cache_write)
        n_keys = None if cache_write is None else cache_write[1]
        dtype = self.matmul_dtype
        q, k_low, v_low = to(q, dtype), to(k, dtype), to(v, dtype)
        if weights_drop is not None:
            weights_drop = to(weights_drop, self.elementwise_dtype)
        y, weights = attention(q, k_low, v_low, mask, self.softmax_dtype, n_keys, weights_drop)
        y = record_dtype("matmul", q, k_low, v_low, y)  # q k^T and weights v
        weights = record_dtype("softmax", weights)
        return self.c_proj(merge_heads(y)), (k, v), weights


class MLP(nn.Cell):
    """c_fc -> GELU (in precision.elementwise) -> c_proj."""

    def __init__(self, params: dict, precision: Precision):
        super().__init__()
        self.c_fc = Linear(params["c_fc"], precision)
        self.c_proj = Linear(params["c_proj"], precision)

    def construct(self, x):
        h = record_dtype("gelu", gelu(self.c_fc(x)))
        return self.c_proj(h)


def dropout(x, scale, dtype):
    """Training's inverted dropout: x * scale (0 or 1/(1-p), from ref_numpy.dropout_masks), an
    elementwise multiply in `dtype`; x itself when scale is None (inference)."""
    return x if scale is None else to(x, dtype) * to(scale, dtype)


class Block(nn.Cell):
    """What both blocks share: the residual branches' dropout."""

    def dropped(self, branch, drops, name):
        """branch with multiplier drops[name] applied (precision.elementwise); unchanged without drops."""
        return dropout(branch, None if drops is None else drops[name], self.attn.elementwise_dtype)


class GPT2Block(Block):
    """Pre-LN: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))."""

    def __init__(self, params: dict, n_head: int, eps: float, precision: Precision):
        super().__init__()
        self.ln_1 = LayerNorm(params["ln_1"], eps, precision)
        self.attn = MHA(params["attn"], n_head, precision)
        self.ln_2 = LayerNorm(params["ln_2"], eps, precision)
        self.mlp = MLP(params["mlp"], precision)

    def construct(self, x, mask, past=None, cache_write=None, drops=None):
        """-> (x [B, T, C], present, (attn out, attn weights, mlp out)) -- the last for tracing.
        drops: training's dropout multipliers {"attn_weights", "attn", "mlp"} (one layer of
        ref_numpy.dropout_masks) or None."""
        a, present, weights = self.attn(self.ln_1(x), mask, past, cache_write,
                                        None if drops is None else drops["attn_weights"])
        x = record_dtype("residual", x + self.dropped(a, drops, "attn"))
        m = self.mlp(self.ln_2(x))
        x = record_dtype("residual", x + self.dropped(m, drops, "mlp"))
        return x, present, (a, weights, m)


class GPT1Block(Block):
    """Post-LN: n = ln_1(x + attn(x)); h = ln_2(n + mlp(n))."""

    def __init__(self, params: dict, n_head: int, eps: float, precision: Precision):
        super().__init__()
        self.attn = MHA(params["attn"], n_head, precision)
        self.ln_1 = LayerNorm(params["ln_1"], eps, precision)
        self.mlp = MLP(params["mlp"], precision)
        self.ln_2 = LayerNorm(params["ln_2"], eps, precision)

    def construct(self, x, mask, past=None, cache_write=None, drops=None):
        """-> (h [B, T, C], present, (attn out, attn weights, mlp out)) -- the last for tracing.
        drops as in GPT2Block."""
        a, present, weights = self.attn(x, mask, past, cache_write, None if drops is None else drops["attn_weights"])
        n = self.ln_1(record_dtype("residual", x + self.dropped(a, drops, "attn")))
        m = self.mlp(n)
        h = self.ln_2(record_dtype("residual", n + self.dropped(m, drops, "mlp")))
        return h, present, (a, weights, m)


BLOCK_CELLS = {"gpt1": GPT1Block, "gpt2": GPT2Block}
