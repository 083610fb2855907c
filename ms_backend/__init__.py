"""gptspec's MindSpore backend: ref_numpy's layers, model and generation as MindSpore Cells.

Read side by side with ref_numpy: layers.py <-> layers.py, model.py <-> model.py,
generate.py <-> generate.py; amp.py (mixed precision levels) and device.py (device and
dtype checks) have no NumPy counterpart.
"""
from .amp import AMP_LEVELS, Precision, precision_for
from .device import check_matmul_dtype, device_target
from .generate import generate, ms_step
from .layers import (GPT1Block, GPT2Block, MHA, MLP, LayerNorm, Linear, attention, causal_mask, gelu,
                     layer_norm, linear, merge_heads, mha, mlp, padding_mask, softmax, split_heads)
from .model import GPTModel

__all__ = [
    "GPTModel", "generate", "ms_step",
    "gelu", "softmax", "layer_norm", "linear", "split_heads", "merge_heads", "causal_mask", "padding_mask",
    "attention", "mha", "mlp", "Linear", "LayerNorm", "MHA", "MLP", "GPT1Block", "GPT2Block",
    "AMP_LEVELS", "Precision", "precision_for", "device_target", "check_matmul_dtype",
]
# Training (issue 12): train.py (Trainer, cross_entropy), optim.py (AdamW groups, clipping),
# scaler.py (loss scaling), train_state.py (save / resume).
from .train import StepResult, Trainer, cross_entropy  # noqa: E402
__all__ += ["Trainer", "StepResult", "cross_entropy"]
