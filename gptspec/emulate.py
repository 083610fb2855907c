"""The spec at an AMP level: ref_numpy's own forward pass, with every operation's operands cast
where ms_backend's Cells cast them (the level table of ms_backend/amp.py), in NumPy.

    level  matmuls   bias, GELU, residual, embeddings   LayerNorm, softmax   final logits
    O0     float32   float32                           float32              float32
    O1     low       float32                           float32              float32
    O2     low       low                               float32              float32
    O3     low       low                               low                  low

Run against the float64 spec, it measures the rounding noise a faithful backend at that level
makes on *this* model and input, tensor by tensor -- the second reference of `gptspec parity`.

How, without a second copy of the forward: `emulated_forward` runs `ref_numpy.forward` itself and,
for the duration of the call, puts policy wrappers in place of the layer functions it looks up by
module-level name (linear, gelu, layer_norm, attention in ref_numpy.layers; embed, layer_norm,
lm_head in ref_numpy.model).  Each wrapper casts its inputs to the level's dtype for that
operation and calls the spec's own function; only attention's scores need more (see
`_attention`).  A matmul in the low dtype is computed as MindSpore's kernels do it: operands
rounded to float16, products summed in float32, the result rounded to float16,
`(a.astype(f32) @ b.astype(f32)).astype(f16)` (exact products: 11 + 11 significand bits fit
float32's 24).  At O0 nothing is replaced: it is the spec in float32.

numpy has no bfloat16, so only float16 is emulated.  ref_numpy never imports this module.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

import ref_numpy
from ref_numpy import layers as spec_layers
from ref_numpy import model as spec_model

F32, F16 = np.dtype(np.float32), np.dtype(np.float16)


class Policy(NamedTuple):
    """The NumPy dtype of each kind of operation, as ms_backend.amp.Precision."""
    matmul: np.dtype
    elementwise: np.dtype
    norm: np.dtype  # LayerNorm and softmax
    logits: np.dtype


POLICIES = {
    "O0": Policy(F32, F32, F32, F32),
    "O1": Policy(F16, F32, F32, F32),
    "O2": Policy(F16, F16, F32, F32),
    "O3": Policy(F16, F16, F16, F16),
}

# The spec's functions, captured once: the wrappers call these, never the (replaced) module names.
SPEC = {"linear": spec_layers.linear, "gelu": spec_layers.gelu, "layer_norm": spec_layers.layer_norm,
        "attention": spec_layers.attention, "embed": spec_model.embed, "lm_head": spec_model.lm_head}
_LOCK = threading.Lock()  # the replacement is process-wide for the duration of one call


def policy_for(amp_level: str, dtype: str | None = None) -> Policy:
    if amp_level not in POLICIES:
        raise ValueError(f"amp_level must be one of {tuple(POLICIES)}, got {amp_level!r}")
    if amp_level != "O0" and dtype not in (None, "float16"):
        raise ValueError(f"only float16 AMP can be emulated in NumPy (it has no {dtype}), got dtype={dtype!r}")
    return POLICIES[amp_level]


def low_matmul(a, b, dtype):
    """a @ b as a kernel of `dtype` does it: operands rounded to dtype, float32 accumulation,
    result rounded to dtype (float32: a plain float32 matmul)."""
    if dtype == F32:
        return a.astype(F32) @ b.astype(F32)
    return (a.astype(dtype).astype(F32) @ b.astype(dtype).astype(F32)).astype(dtype)


def _wrappers(policy: Policy) -> dict:
    mm, ew, norm, out = policy

    def linear(x, w, b):
        """Matmul in the matmul dtype, then the bias added in the element-wise dtype (at O1 the
        float16 product is promoted by the float32 bias, as in MindSpore)."""
        product = SPEC["linear"](x.astype(mm).astype(F32), w.astype(mm).astype(F32), np.zeros(w.shape[1], F32))
        return product.astype(mm) + b.astype(ew)  # + 0 above is exact: this is the matmul alone

    def gelu(x):
        return SPEC["gelu"](x.astype(ew))

    def block_layer_norm(x, g, b, eps=1e-5):
        return SPEC["layer_norm"](x.astype(norm), g.astype(norm), b.astype(norm), eps=eps).astype(ew)

    def final_layer_norm(x, g, b, eps=1e-5):  # ln_f hands over to the logits
        return SPEC["layer_norm"](x.astype(norm), g.astype(norm), b.astype(norm), eps=eps).astype(out)

    def attention(q, k, v, mask):
        return _attention(q, k, v, mask, mm, norm)

    def embed(params, ids, position_ids):
        return SPEC["embed"]({"wte": params["wte"].astype(ew), "wpe": params["wpe"].astype(ew)}, ids, position_ids)

    def lm_head(params, x):
        B, T, C = x.shape
        return low_matmul(x.reshape(B * T, C), params["wte"].T, out).reshape(B, T, -1)

    return {spec_layers: {"linear": linear, "gelu": gelu, "layer_norm": block_layer_norm, "attention": attention},
            spec_model: {"embed": embed, "layer_norm": final_layer_norm, "lm_head": lm_head}}


def _attention(q, k, v, mask, mm, norm):
    """ms_backend's attention at a level: q k^T and weights v in the matmul dtype, the scaling,
    masking and softmax in the norm dtype.  When both are the same (O0, O3) this is the spec's
    attention on cast inputs.  At O1/O2 the float16 scores are promoted to float32 *inside* the
    spec's function, so its three lines are restated here with that cast (the masked score is
    the norm dtype's finite minimum, as in the spec)."""
    q, k, v = q.astype(mm), k.astype(mm), v.astype(mm)
    if mm == norm:
        return SPEC["attention"](q, k, v, mask)  # numpy's float16 matmul accumulates in float32
    scores = low_matmul(q, k.swapaxes(-1, -2), mm).astype(norm) / np.sqrt(q.shape[-1]).astype(norm)
    scores = np.where(mask, scores, np.finfo(norm).min)
    with np.errstate(over="ignore"):
        weights = ref_numpy.softmax(scores, axis=-1)
    return low_matmul(weights, v, mm), weights


@contextmanager
def _policy_in_place(policy: Policy):
    replaced = _wrappers(policy)
    with _LOCK:
        saved = {module: {name: getattr(module, name) for name in names} for module, names in replaced.items()}
        try:
            for module, names in replaced.items():
                for name, wrapper in names.items():
                    setattr(module, name, wrapper)
            yield
        finally:
            for module, names in saved.items():
                for name, original in names.items():
                    setattr(module, name, original)


def emulated_forward(config, params, ids, *, amp_level="O0", dtype=None, attention_mask=None, trace=None):
    """ref_numpy.forward as a backend at `amp_level` computes it (see the module docstring):
    (logits [B, T, V], present).  `params` are read as float32 (the backend's Parameters)."""
    policy = policy_for(amp_level, dtype)
    params32 = ref_numpy.cast_params(params, np.float32, copy=False)  # read only
    if amp_level == "O0":
        return ref_numpy.forward(config, params32, ids, attention_mask=attention_mask, trace=trace)
    with _policy_in_place(policy):
        return ref_numpy.forward(config, params32, ids, attention_mask=attention_mask, trace=trace)
