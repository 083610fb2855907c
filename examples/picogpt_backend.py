"""A third-party GPT checked by gptspec: a small NumPy GPT-1/GPT-2 written without gptspec's
code (in the style of picoGPT), plugged in through gptspec/backend.py's protocol.

    gptspec parity --backend examples.picogpt_backend:factory               passes
    gptspec parity --backend examples.picogpt_backend:factory --option bug=peek_ahead
                                                                            fails (exit 1)
    python -m pytest parity_tests --gptspec-backend examples.picogpt_backend:factory
    python -m pytest parity_tests --gptspec-backend examples.picogpt_backend:factory \\
        --gptspec-option bug=peek_ahead                                      fails

(run from the repository root, or put this folder on PYTHONPATH).  It provides forward and its
trace; no KV cache and no gradients, so the suite skips those properties saying so, and gptspec
parity reports them "not provided".

bug= plants a porting bug: "peek_ahead" (the causal mask lets each position see the next token),
"erf_gelu" (GELU's exact erf form instead of GPT's tanh approximation), "ln_eps" (LayerNorm's
epsilon 1e-6 instead of 1e-5).
"""
from __future__ import annotations

import math

import numpy as np

BUGS = (None, "peek_ahead", "erf_gelu", "ln_eps")


def factory(config, params, *, bug=None):
    if bug not in BUGS:
        raise ValueError(f"bug must be one of {BUGS}, got {bug!r}")
    return PicoGPT(config, params, bug)


class PicoGPT:
    name = "picogpt example (examples/picogpt_backend.py)"
    version = "0.1"
    device = "cpu"

    def __init__(self, config, params, bug=None):
        self.arch, self.n_head, self.bug = config.arch, config.n_head, bug
        self.eps = 1e-6 if bug == "ln_eps" else config.layer_norm_epsilon
        self.p = params

    def gelu(self, x):
        if self.bug == "erf_gelu":
            return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    def norm(self, x, ln):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return ln["g"] * (x - mean) / np.sqrt(var + self.eps) + ln["b"]

    def attend(self, x, attn, keep, trace, i):
        B, T, C = x.shape
        q, k, v = np.split(x @ attn["c_attn"]["w"] + attn["c_attn"]["b"], 3, axis=-1)
        heads = [t.reshape(B, T, self.n_head, -1).transpose(0, 2, 1, 3) for t in (q, k, v)]
        scores = heads[0] @ heads[1].transpose(0, 1, 3, 2) / math.sqrt(C // self.n_head)
        scores = np.where(keep, scores, np.finfo(scores.dtype).min)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        trace[f"blocks.{i}.attn_weights"] = weights
        y = (weights @ heads[2]).transpose(0, 2, 1, 3).reshape(B, T, C)
        return y @ attn["c_proj"]["w"] + attn["c_proj"]["b"]

    def mlp(self, x, mlp):
        return self.gelu(x @ mlp["c_fc"]["w"] + mlp["c_fc"]["b"]) @ mlp["c_proj"]["w"] + mlp["c_proj"]["b"]

    def forward(self, ids, attention_mask=None, *, trace=None):
        trace = {} if trace is None else trace
        B, T = ids.shape
        mask = np.ones((B, T), dtype=np.int64) if attention_mask is None else attention_mask
        positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
        causal = np.tril(np.ones((T, T), dtype=bool), k=1 if self.bug == "peek_ahead" else 0)
        keep = causal[None, None] & (mask[:, None, None, :] == 1)
        x = self.p["wte"][ids] + self.p["wpe"][positions]
        trace["embed"] = x
        for i, block in enumerate(self.p["blocks"]):
            if self.arch == "gpt2":  # LayerNorm before each sub-layer
                a = self.attend(self.norm(x, block["ln_1"]), block["attn"], keep, trace, i)
                m = self.mlp(self.norm(x + a, block["ln_2"]), block["mlp"])
                x = x + a + m
            else:  # GPT-1: LayerNorm after each residual add
                a = self.attend(x, block["attn"], keep, trace, i)
                n = self.norm(x + a, block["ln_1"])
                m = self.mlp(n, block["mlp"])
                x = self.norm(n + m, block["ln_2"])
            trace.update({f"blocks.{i}.attn": a, f"blocks.{i}.mlp": m, f"blocks.{i}.out": x})
        if self.arch == "gpt2":
            x = trace["ln_f"] = self.norm(x, self.p["ln_f"])
        trace["logits"] = logits = x @ self.p["wte"].T
        return logits
