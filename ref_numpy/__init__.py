"""gptspec's executable specification of GPT-1 and GPT-2 inference, in plain NumPy.

Read in this order: config -> params -> layers -> model -> sampling -> generate.
Every other backend must compute what these functions compute.
"""
from .config import PRESETS, GPTConfig
from .generate import collect, decode_stream, generate, numpy_step
from .layers import (attention, causal_mask, gelu, gpt1_block, gpt2_block, layer_norm, linear, merge_heads,
                     mha, mlp, padding_mask, softmax, split_heads)
from .model import ModelInputs, attention_mask_4d, embed, forward, lm_head, prepare_inputs
from .params import (cast_params, check_params, expected_shapes, flatten_params, init_params,
                     unflatten_params)
from .sampling import apply_temperature, draw, next_tokens, processed_probs, top_k_filter, top_p_filter

__all__ = [
    "GPTConfig", "PRESETS",
    "init_params", "check_params", "expected_shapes", "flatten_params", "unflatten_params", "cast_params",
    "gelu", "softmax", "layer_norm", "linear", "split_heads", "merge_heads", "causal_mask", "padding_mask",
    "attention", "mha", "mlp", "gpt1_block", "gpt2_block",
    "forward", "prepare_inputs", "ModelInputs", "embed", "attention_mask_4d", "lm_head",
    "apply_temperature", "top_k_filter", "top_p_filter", "processed_probs", "draw", "next_tokens",
    "generate", "decode_stream", "numpy_step", "collect",
    "Tokenizer", "MergeStep",
]
# Tokenizers (see tokenizer.py) are exported below this line.
from .tokenizer import MergeStep, Tokenizer  # noqa: E402  (bpe_gpt1/bpe_gpt2 hold the two tokenizers)
# Learning a byte-level BPE tokenizer from text (bpe_train.py), for training from scratch.
from .bpe_train import save_bpe, train_bpe  # noqa: E402
__all__ += ["train_bpe", "save_bpe"]
