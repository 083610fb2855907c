"""GPT-1's fine-tuning head in MindSpore, as ref_numpy/classifier.py (read that first).

    hidden = the model's final hidden state [R, T, C]     (after ln_f for GPT-2)
    h      = hidden[r, clf_positions[r]]       [R, C]
    logits = h @ head["w"] + head["b"]         [R, n_classes]     float32, like the LM logits at O0-O2

The loss around it (each task's, plus lm_coef x the LM loss of the same rows) is
objectives.Classifier's, which also does the spec's checks.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from .amp import to

HEAD_NAMES = ("head.w", "head.b")  # the head's Parameter names (the model's are the params dict's)


class ClassifierHead(nn.Cell):
    """w [C, n_classes], b [n_classes] as float32 Parameters (checked by the objective that owns
    the head, objectives.Classifier); computes in float32."""

    def __init__(self, head: dict):
        super().__init__()
        self.w = Parameter(Tensor(np.asarray(head["w"], np.float32)), name=HEAD_NAMES[0])
        self.b = Parameter(Tensor(np.asarray(head["b"], np.float32)), name=HEAD_NAMES[1])

    def construct(self, h):
        return ops.matmul(to(h, ms.float32), self.w) + self.b

    def numpy(self) -> dict:
        return {"w": np.array(self.w.asnumpy()), "b": np.array(self.b.asnumpy())}


def final_hidden(model, intermediates):
    """The hidden state lm_head reads, from GPTModel.run's intermediates: ln_f's output (GPT-2),
    the last block's output (GPT-1)."""
    return intermediates[-1] if model.has_ln_f else intermediates[-1][-1]


def at_positions(hidden, positions):
    """hidden [B, T, C], positions int [B] -> [B, C]: each row's classify token."""
    B, _, C = hidden.shape
    index = ops.broadcast_to(positions.reshape(B, 1, 1), (B, 1, C))
    return ops.gather_elements(hidden, 1, index)[:, 0]
