"""Mixed precision (AMP): which dtype each kind of operation computes in, per level.

    level  matmuls   bias, GELU, residual, embeddings   LayerNorm, softmax   final logits
    O0     float32   float32                           float32              float32
    O1     low       float32                           float32              float32
    O2     low       low                               float32              float32
    O3     low       low                               low                  low

"low" is float16 (default) or bfloat16.  These are the levels of
`mindspore.amp.auto_mixed_precision` with LayerNorm, softmax and the logits on the black list
at O2.  A matmul takes low-precision operands; the kernel accumulates in float32 (checked on
CPU: ones(1, 4096) @ ones(4096, 1) in float16 is exactly 4096) and rounds its result to the
low dtype.  At O1 the bias add then promotes back to float32.

Why not call `auto_mixed_precision` itself: it casts at the boundary of Cells it knows
(nn.Dense, nn.LayerNorm, ...) or rewrites calls of primitives it knows.  Our layers are plain
functions on float32 Parameters, as in the spec, so at O2/O3 graph mode stops with "For
primitive[MatMulExt], the input type must be same" (float16 input, float32 weight) and at
O1 nothing is converted.  A `Precision` states the same policy explicitly, and every Cell
casts its inputs and weights to it (casts to the dtype a tensor already has are skipped).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import mindspore as ms

from .device import DTYPES, check_matmul_dtype

AMP_LEVELS = ("O0", "O1", "O2", "O3")


class Precision(NamedTuple):
    """The MindSpore dtype of each kind of operation (see the table above)."""
    matmul: object
    elementwise: object
    norm: object  # LayerNorm and softmax
    logits: object


def precision_for(amp_level: str = "O0", dtype: str | None = None) -> Precision:
    """The Precision of an AMP level; `dtype` is the low dtype, "float16" (default) or "bfloat16".
    Checks that the device can run matmuls in it."""
    if amp_level not in AMP_LEVELS:
        raise ValueError(f"amp_level must be one of {AMP_LEVELS}, got {amp_level!r}")
    if amp_level == "O0":
        if dtype not in (None, "float32"):
            raise ValueError(f"dtype={dtype!r} needs an amp_level of O1, O2 or O3; O0 computes in float32")
        full = ms.float32
        return Precision(full, full, full, full)
    dtype = "float16" if dtype is None else dtype
    if dtype not in ("float16", "bfloat16"):
        raise ValueError(f"the AMP dtype must be 'float16' or 'bfloat16', got {dtype!r}")
    check_matmul_dtype(dtype)
    low, full = DTYPES[dtype], ms.float32
    return {
        "O1": Precision(low, full, full, full),
        "O2": Precision(low, low, full, full),
        "O3": Precision(low, low, low, low),
    }[amp_level]


def to(x, dtype):
    """x cast to `dtype`; no cast op at all when it already has it."""
    return x if x.dtype == dtype else x.astype(dtype)


# The dtype trace: which dtype each operation actually ran in
# ------------------------------------------------------------
# An AMP policy violation (softmax in float16 at O2, the bias added in float16 at O1) moves the
# error no further than an honest reordering does, so no error bound catches it.  Instead every
# Cell records the dtypes of the tensors it actually hands to, and gets back from, each operation
# (not the dtype its Precision says), and gptspec.parity compares them with the table above.
# Recording only happens in PyNative calls inside `record_dtypes()`; a compiled graph sees the
# log as None and the call as dead code.  record_dtype returns its last tensor and the Cells use
# that value, so a compiled graph keeps the call in its data flow (an isolated call is pruned
# with a warning).

# Operation -> the Precision field that decides its dtype.
OPERATION_PRECISION = {"matmul": "matmul", "bias_add": "elementwise", "gelu": "elementwise",
                       "residual": "elementwise", "embed": "elementwise", "layer_norm": "norm",
                       "softmax": "norm", "logits": "logits"}
# Records per block: 4 Linear matmuls + attention (q k^T and weights v, one record), 4 bias adds,
# one GELU, one softmax, two LayerNorms, two residual adds.
RECORDS_PER_BLOCK = {"matmul": 5, "bias_add": 4, "gelu": 1, "softmax": 1, "layer_norm": 2, "residual": 2}

_dtype_log = None  # a list while record_dtypes() is active


def record_dtype(operation: str, *tensors):
    """Note that `operation` ran on (or produced) `tensors`: their dtypes go to the active log.
    Returns the last tensor, unchanged."""
    if _dtype_log is not None:
        _dtype_log.append((operation, tuple(t.dtype for t in tensors)))
    return tensors[-1]


@contextmanager
def record_dtypes():
    """Collect (operation, dtypes) of every operation run inside the block (PyNative only)."""
    global _dtype_log
    previous, _dtype_log = _dtype_log, []
    try:
        yield _dtype_log
    finally:
        _dtype_log = previous


def expected_records(n_layer: int, has_ln_f: bool) -> dict:
    """How many records one forward pass of the whole model makes, per operation."""
    counts = {op: n * n_layer for op, n in RECORDS_PER_BLOCK.items()}
    counts["embed"], counts["logits"] = 1, 1
    counts["layer_norm"] += int(has_ln_f)
    return counts
