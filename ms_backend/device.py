"""Which device we run on, and whether it can compute in the requested dtype.

Nothing here names a device: the target comes from MindSpore's context (CPU here, Ascend
NPU or GPU elsewhere), and dtype support is found out by running one tiny matmul there.
"""
from __future__ import annotations

import functools

import mindspore as ms
import numpy as np
from mindspore import ops

DTYPES = {"float32": ms.float32, "float16": ms.float16, "bfloat16": ms.bfloat16}


def device_target() -> str:
    """The device MindSpore runs on: "CPU", "GPU" or "Ascend"."""
    return ms.get_context("device_target")


@functools.lru_cache(maxsize=None)
def _matmul_error(device: str, dtype_name: str) -> str | None:
    """None if a [2, 2] @ [2, 2] matmul runs in `dtype_name` on `device`, else the error text."""
    x = ms.Tensor(np.ones((2, 2), np.float32)).astype(DTYPES[dtype_name])
    try:
        ops.matmul(x, x).asnumpy()
    except (RuntimeError, TypeError, ValueError) as error:
        return str(error).splitlines()[0]
    return None


def check_matmul_dtype(dtype_name: str) -> None:
    """Raise a clear error if the current device cannot run matmuls in `dtype_name`.

    MindSpore 2.10 has no bfloat16 MatMul kernel on CPU: without this check the failure
    would surface mid-forward as "Select CPU operator[MatMul] fail! Unsupported data type!".
    """
    device = device_target()
    error = _matmul_error(device, dtype_name)
    if error is not None:
        raise ValueError(f"MindSpore cannot compute matmuls in {dtype_name} on device {device} "
                         f"({error}); use dtype='float16' there, or run on a device with {dtype_name} "
                         f"kernels (Ascend)")
