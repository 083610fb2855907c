"""One training step's math: a forward pass that keeps a tape, the backward pass, the loss.

    hidden, tape = train_forward(config, params, inputs, attention_mask=mask, dropout=0.1, rng=rng)
    logits = lm_head(params, hidden)                       # [B, T, V]
    loss = cross_entropy(logits, targets)
    d_hidden, d_wte_head = lm_head_backward(cross_entropy_backward(logits, targets), hidden, wte)
    grads = train_backward(config, params, tape, d_hidden)
    grads["wte"] += d_wte_head                              # the tied head's share

`loss_and_grads` does exactly this.  The training forward calls the same layer functions as
the inference `forward` (model.py); it only also writes, per layer, the inputs each backward
function needs into a plain dict (the tape), and applies dropout.

Dropout, as in GPT-1/GPT-2 training (p = 0.1 there): on the embedding sum, on the attention
weights after the softmax, and on each residual branch (the attention and MLP outputs, before
they are added to the residual stream).  Kept values are scaled by 1/(1-p) ("inverted"
dropout), so nothing changes at inference.  The masks are drawn from `rng` in this fixed order:
the embedding, then for each layer in turn: attention weights, attention branch, MLP branch --
each as `rng.random(shape) >= p` in float64, so float32 and float64 runs with the same seed
drop the same elements.  `dropout_masks` draws them all at once (what the MindSpore Trainer feeds
its compiled step).
"""
from __future__ import annotations

import numpy as np

from .backward import embed_backward, gpt1_block_backward, gpt2_block_backward, layer_norm_backward, lm_head_backward
from .config import GPTConfig
from .layers import attention, gelu, layer_norm, linear, merge_heads, split_heads
from .loss import IGNORE_INDEX, cross_entropy, cross_entropy_backward
from .model import attention_mask_4d, embed, lm_head, prepare_inputs
from .params import check_params
from .validation import check_dropout, check_targets

BLOCK_BACKWARD = {"gpt1": gpt1_block_backward, "gpt2": gpt2_block_backward}


def dropout_scale(shape, p, rng, dtype):
    """The multiplier of inverted dropout, [shape]: 0 where dropped (probability p), 1/(1-p)
    where kept; None when p == 0 (nothing to do, no random numbers drawn)."""
    if p == 0:
        return None
    return ((rng.random(shape) >= p) / (1 - p)).astype(dtype)


def apply_dropout(x, scale):
    return x if scale is None else x * scale


def dropout_masks(config: GPTConfig, batch: int, n_tokens: int, p, rng, dtype=np.float64) -> dict:
    """Every dropout multiplier of one training forward, drawn from `rng` in the module
    docstring's order (the embedding, then per layer: attention weights, attention branch, MLP
    branch), each as dropout_scale draws it:

        {"embed": [B, T, C], "blocks": [{"attn_weights": [B, H, T, T], "attn": [B, T, C],
                                         "mlp": [B, T, C]}, ... one per layer]}

    With p == 0 every entry is None and nothing is drawn.  train_forward uses exactly these; an
    implementation that draws no random numbers of its own (the MindSpore Trainer) takes them as
    inputs and drops the same elements."""
    p = check_dropout(p)
    for name, value in (("batch", batch), ("n_tokens", n_tokens)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if p > 0 and not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator when dropout > 0, got {rng!r}")
    B, T, C, H = int(batch), int(n_tokens), config.n_embd, config.n_head
    embed_drop = dropout_scale((B, T, C), p, rng, dtype)
    blocks = [block_dropout_masks((B, T, C), H, p, rng, dtype) for _ in range(config.n_layer)]
    return {"embed": embed_drop, "blocks": blocks}


def dropout_seed(seed: int, step: int, micro_batch: int) -> int:
    """The seed of the dropout masks of one micro-batch of a training run: a function of the run's
    seed, the update (step, 0-based) and the micro-batch's index in it only -- no generator state to
    carry, so a resumed run draws exactly the masks an uninterrupted one would, and every backend
    that seeds numpy.random.default_rng with it (then draws dropout_masks) drops the same elements."""
    for name, value in (("seed", seed), ("step", step), ("micro_batch", micro_batch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(np.random.SeedSequence([int(seed), int(step), int(micro_batch)]).generate_state(1)[0])


def block_dropout_masks(x_shape, n_head, p, rng, dtype) -> dict:
    """One layer's multipliers, in order: attention weights [B, H, T, T], attention branch and
    MLP branch [B, T, C] (x_shape)."""
    B, T, _ = x_shape
    attn_weights = dropout_scale((B, n_head, T, T), p, rng, dtype)
    attn = dropout_scale(x_shape, p, rng, dtype)
    return {"attn_weights": attn_weights, "attn": attn, "mlp": dropout_scale(x_shape, p, rng, dtype)}


def mha_forward(x, attn_params, n_head, mask, p=0.0, rng=None, *, drop=None):
    """mha (layers.py) without a KV cache, plus dropout on the attention weights: the multiplier
    `drop` [B, H, T, T] if given, else drawn from rng with probability p.
    x [B, T, C] -> (out [B, T, C], tape)."""
    qkv = linear(x, **attn_params["c_attn"])  # [B, T, 3C]
    q, k, v = (split_heads(part, n_head) for part in np.split(qkv, 3, axis=-1))  # [B, H, T, D] each
    y, weights = attention(q, k, v, mask)
    if drop is None:
        drop = dropout_scale(weights.shape, p, rng, weights.dtype)
    if drop is not None:  # the same weighted sum, with some weights dropped
        y = (weights * drop) @ v
    y = merge_heads(y)  # [B, T, C]
    tape = dict(x=x, q=q, k=k, v=v, mask=mask, weights=weights, drop=drop, y=y)
    return linear(y, **attn_params["c_proj"]), tape


def mlp_forward(x, mlp_params):
    """mlp (layers.py), keeping the pre-activation h and the activation a.  x [B, T, C]."""
    h = linear(x, **mlp_params["c_fc"])  # [B, T, 4C]
    a = gelu(h)
    return linear(a, **mlp_params["c_proj"]), dict(x=x, h=h, a=a)


def gpt2_block_forward(x, p, n_head, mask, eps, dropout=0.0, rng=None, *, drops=None):
    """gpt2_block (layers.py) with dropout and a tape: pre-LN.  drops: this layer's multipliers
    (block_dropout_masks); None draws them from rng with probability `dropout`."""
    if drops is None:
        drops = block_dropout_masks(x.shape, n_head, dropout, rng, x.dtype)
    a, attn_tape = mha_forward(layer_norm(x, **p["ln_1"], eps=eps), p["attn"], n_head, mask,
                               drop=drops["attn_weights"])
    attn_drop = drops["attn"]
    x1 = x + apply_dropout(a, attn_drop)
    m, mlp_tape = mlp_forward(layer_norm(x1, **p["ln_2"], eps=eps), p["mlp"])
    mlp_drop = drops["mlp"]
    out = x1 + apply_dropout(m, mlp_drop)
    return out, dict(x=x, x1=x1, attn=attn_tape, attn_drop=attn_drop, mlp=mlp_tape, mlp_drop=mlp_drop)


def gpt1_block_forward(x, p, n_head, mask, eps, dropout=0.0, rng=None, *, drops=None):
    """gpt1_block (layers.py) with dropout and a tape: post-LN.  drops as in gpt2_block_forward."""
    if drops is None:
        drops = block_dropout_masks(x.shape, n_head, dropout, rng, x.dtype)
    a, attn_tape = mha_forward(x, p["attn"], n_head, mask, drop=drops["attn_weights"])
    attn_drop = drops["attn"]
    s1 = x + apply_dropout(a, attn_drop)
    n = layer_norm(s1, **p["ln_1"], eps=eps)
    m, mlp_tape = mlp_forward(n, p["mlp"])
    mlp_drop = drops["mlp"]
    s2 = n + apply_dropout(m, mlp_drop)
    out = layer_norm(s2, **p["ln_2"], eps=eps)
    return out, dict(s1=s1, s2=s2, attn=attn_tape, attn_drop=attn_drop, mlp=mlp_tape, mlp_drop=mlp_drop)


BLOCK_FORWARD = {"gpt1": gpt1_block_forward, "gpt2": gpt2_block_forward}


def train_forward(config: GPTConfig, params: dict, ids, *, attention_mask=None, dropout=0.0, rng=None):
    """The forward pass of training.  ids int [B, T]; attention_mask 0/1 [B, T] (left or right
    padding) or None; dropout p in [0, 1) with masks from `rng` (a numpy Generator; required
    when p > 0) in the order given in the module docstring.

    Returns (hidden [B, T, C], tape): the final hidden state -- after ln_f for GPT-2, the last
    block's output for GPT-1 -- i.e. what lm_head (or a classifier) reads, and the tape that
    train_backward needs."""
    dropout = check_dropout(dropout)
    if dropout > 0 and not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator when dropout > 0, got {rng!r}")
    inputs = prepare_inputs(config, ids, attention_mask=attention_mask)
    n_tokens = inputs.ids.shape[1]
    mask = attention_mask_4d(n_tokens, n_tokens, inputs.attention_mask)  # [B|1, 1, T, T]
    x = embed(params, inputs.ids, inputs.position_ids)  # [B, T, C]
    drops = dropout_masks(config, x.shape[0], n_tokens, dropout, rng, x.dtype)
    embed_drop = drops["embed"]
    x = apply_dropout(x, embed_drop)
    eps, block_forward = config.layer_norm_epsilon, BLOCK_FORWARD[config.arch]
    block_tapes = []
    for block_params, block_drops in zip(params["blocks"], drops["blocks"]):
        x, block_tape = block_forward(x, block_params, config.n_head, mask, eps, drops=block_drops)
        block_tapes.append(block_tape)
    tape = dict(ids=inputs.ids, position_ids=inputs.position_ids, embed_drop=embed_drop, blocks=block_tapes,
                ln_f_input=None)
    if config.arch == "gpt2":
        tape["ln_f_input"] = x
        x = layer_norm(x, **params["ln_f"], eps=eps)
    return x, tape


def train_backward(config: GPTConfig, params: dict, tape: dict, d_hidden) -> dict:
    """Backward of train_forward.  d_hidden [B, T, C] = d loss / d hidden.
    Returns grads with the structure and shapes of params; grads["wte"] holds only the
    embedding part (add lm_head_backward's part for the tied head, as loss_and_grads does)."""
    eps = config.layer_norm_epsilon
    grads: dict = {}
    d_x = d_hidden
    if config.arch == "gpt2":
        d_x, d_g, d_b = layer_norm_backward(d_hidden, tape["ln_f_input"], params["ln_f"]["g"], eps)
        grads["ln_f"] = {"g": d_g, "b": d_b}
    block_backward = BLOCK_BACKWARD[config.arch]
    block_grads = []
    for block_params, block_tape in reversed(list(zip(params["blocks"], tape["blocks"]))):
        d_x, g = block_backward(d_x, block_tape, block_params, config.n_head, eps)
        block_grads.append(g)
    d_x = d_x if tape["embed_drop"] is None else d_x * tape["embed_drop"]
    grads["wte"], grads["wpe"] = embed_backward(d_x, tape["ids"], tape["position_ids"], config.n_vocab, config.n_ctx)
    grads["blocks"] = block_grads[::-1]
    return {key: grads[key] for key in params}  # the same key order as params


def loss_and_grads(config: GPTConfig, params: dict, inputs, targets, *, attention_mask=None,
                   ignore_index=IGNORE_INDEX, dropout=0.0, seed=None):
    """The language-modelling loss and its gradient with respect to every parameter.

    inputs int [B, T]; targets int [B, T] (the next token of each input, ignore_index where
    there is none: see shift_targets); attention_mask 0/1 [B, T] or None; dropout p with masks
    from numpy.random.default_rng(seed).
    Returns (loss: float, grads) -- grads has exactly the structure and shapes of params;
    grads["wte"] = embedding part + head part (the output projection is wte itself)."""
    check_params(config, params)
    ids = prepare_inputs(config, inputs, attention_mask=attention_mask).ids
    targets = check_targets(targets, ids.shape, config.n_vocab, ignore_index)
    dropout = check_dropout(dropout)
    hidden, tape = train_forward(config, params, ids, attention_mask=attention_mask, dropout=dropout,
                                 rng=np.random.default_rng(seed))
    logits = lm_head(params, hidden)  # [B, T, V]
    loss = cross_entropy(logits, targets, ignore_index=ignore_index)
    d_logits = cross_entropy_backward(logits, targets, ignore_index=ignore_index)
    d_hidden, d_wte_head = lm_head_backward(d_logits, hidden, params["wte"])
    grads = train_backward(config, params, tape, d_hidden)
    grads["wte"] += d_wte_head
    return loss, grads
