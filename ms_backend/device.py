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


def overwrite(parameter, value, dtype) -> None:
    """Write `value` (NumPy or a number) into `parameter` in place.  Parameter.set_data swaps the
    Parameter's tensor for a new one, and a graph compiled before (mindspore.jit) keeps reading
    the old one: a Trainer resumed after its first step would silently go on from its own
    weights.  ops.assign writes the memory the graph reads (checked: a loss scale restored to
    2^100 after a compiled step overflows that step only with assign)."""
    ops.assign(parameter, ms.Tensor(np.asarray(value), dtype))


_launch_blocking_set = False


def launch_blocking_on_cpu() -> None:
    """On CPU, run PyNative ops synchronously (mindspore.runtime.launch_blocking); elsewhere
    nothing.  Called by every GPTModel; once set it holds for the process (MindSpore has no way
    back).

    By default MindSpore queues each PyNative op for dispatch threads.  On a CPU those threads
    compete with the kernels' own threads for the same cores, and waiting on the queue costs
    far more than the ops: measured on the project's 2-core machine, a 124M forward of 2 x 16
    tokens took 0.57 s queued and 0.15 s synchronous, a 2 x 1 decode step 0.76 s and 0.08 s, and
    a PyNative training step 7.7 s and 6.2 s.  Compiled graphs (mindspore.jit) are not affected
    (the graph fp32 training step: 3.75 s and 3.89 s, within noise).  On GPU and Ascend the
    queue overlaps host and device work, so it is left on there."""
    global _launch_blocking_set
    if not _launch_blocking_set and device_target() == "CPU":
        ms.runtime.launch_blocking()
        _launch_blocking_set = True


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
