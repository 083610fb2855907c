"""gptspec's MindSpore backend: ref_numpy's layers, model, generation and training as MindSpore Cells.

Read side by side with ref_numpy.  Inference: layers.py <-> layers.py, model.py <-> model.py,
generate.py <-> generate.py.  Training: train.py (Trainer: the spec's loss by autodiff, one
compiled update) <-> train.py, objectives.py (the LM loss, GPT-1's four fine-tuning losses) <->
loss.py and classifier.py, optim.py <-> optim.py, classifier.py <-> classifier.py.  With no NumPy
counterpart: amp.py (mixed precision levels), device.py (device and dtype checks),
scaler.py (dynamic loss scaling), train_state.py (save / resume), distributed.py (data parallel
under msrun).
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
# Training: the Trainer (train.py; AdamW and clipping in optim.py, loss scaling in scaler.py, save and
# resume in train_state.py) and what it minimises (objectives.py: the LM loss, GPT-1's fine-tuning).
from .objectives import Classifier, LanguageModel, cross_entropy  # noqa: E402
from .train import Gradients, StepResult, Trainer  # noqa: E402
__all__ += ["Trainer", "StepResult", "Gradients", "LanguageModel", "Classifier", "cross_entropy"]
