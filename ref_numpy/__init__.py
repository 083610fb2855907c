"""gptspec's executable specification of GPT-1 and GPT-2, inference and training, in plain NumPy.

Read in this order.  Inference: config -> params -> layers -> model -> sampling -> generate, and
the tokenizers (tokenizer -> bpe_gpt1 / bpe_gpt2; bpe_train learns a new one).  Training: loss ->
backward (each layer's backward beside its forward) -> train (dropout, loss_and_grads) -> data
(padding, shifted targets) -> optim (AdamW, clipping, the learning-rate schedule) -> classifier
(GPT-1's fine-tuning heads and their combined loss).
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
# Tokenizers: the shared interface (tokenizer.py); bpe_gpt1 / bpe_gpt2 hold the two byte-pair encodings.
from .tokenizer import MergeStep, Tokenizer, UnknownTokenError  # noqa: E402  (bpe_gpt1/bpe_gpt2 hold the two tokenizers)
__all__ += ["UnknownTokenError"]
# Learning a byte-level BPE tokenizer from text (bpe_train.py), for training a new model from scratch.
from .bpe_train import save_bpe, train_bpe  # noqa: E402
__all__ += ["train_bpe", "save_bpe"]
# The training step: the loss (loss.py), every layer's backward (backward.py), the whole forward +
# backward with dropout (train.py), and the training inputs' checks (validation.py).
from .backward import (attention_backward, dropout_backward, embed_backward, gelu_backward,  # noqa: E402
                       gpt1_block_backward, gpt2_block_backward, layer_norm_backward, linear_backward,
                       lm_head_backward, merge_heads_backward, mha_backward, mlp_backward, softmax_backward,
                       split_heads_backward)
from .loss import IGNORE_INDEX, cross_entropy, cross_entropy_backward, log_sum_exp  # noqa: E402
from .train import loss_and_grads, train_backward, train_forward  # noqa: E402
from .validation import check_dropout, check_targets  # noqa: E402
__all__ += ["IGNORE_INDEX", "cross_entropy", "cross_entropy_backward", "log_sum_exp", "check_targets", "check_dropout",
            "linear_backward", "gelu_backward", "softmax_backward", "layer_norm_backward", "split_heads_backward",
            "merge_heads_backward", "dropout_backward", "attention_backward", "mha_backward", "mlp_backward",
            "gpt2_block_backward", "gpt1_block_backward", "embed_backward", "lm_head_backward",
            "train_forward", "train_backward", "loss_and_grads"]
# Around the step: batches (data.py), the optimizer, clipping and schedule (optim.py), and GPT-1's
# classification head with its loss classification + lm_coef x LM (classifier.py).
from .data import pad_or_truncate, shift_targets  # noqa: E402
__all__ += ["pad_or_truncate", "shift_targets"]
from .optim import adamw_init, adamw_step, clip_grad_norm, lr_at  # noqa: E402
__all__ += ["adamw_init", "adamw_step", "clip_grad_norm", "lr_at"]
from .classifier import add_tokens, classifier_logits, classifier_loss_and_grads, init_classifier  # noqa: E402
__all__ += ["init_classifier", "classifier_logits", "classifier_loss_and_grads", "add_tokens"]
# GPT-1's other two fine-tuning tasks: similarity (both orders, states summed) and multiple choice
# (one score per answer) (classifier.py).
from .classifier import (choice_logits, choice_loss_and_grads, init_choice_head, similarity_logits,  # noqa: E402
                         similarity_loss_and_grads)
__all__ += ["similarity_logits", "similarity_loss_and_grads", "init_choice_head", "choice_logits",
            "choice_loss_and_grads"]
# Dropout multipliers of one training forward, drawn in the spec's order, and the seed of a training
# run's micro-batch (train.py): a backend that draws no random numbers of its own takes these as inputs.
from .train import dropout_masks, dropout_seed  # noqa: E402
__all__ += ["dropout_masks", "dropout_seed"]
