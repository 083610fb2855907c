"""The whole model as one MindSpore Cell: embeddings -> blocks -> (GPT-2: ln_f) -> tied logits.

Two ways to run it:
    model(ids, attention_mask, past)   the spec's forward on Tensors, dynamic KV cache;
                                       runs in the context's mode (PyNative by default)
    model.static_step(...)             one step on a preallocated cache [B, H, L, D] with
                                       a write position; `compiled_step` wraps it in
                                       mindspore.jit, so it compiles once per input shape
`forward_numpy` takes and returns NumPy like ref_numpy.forward and uses the static step
when the model was built with mode="graph".
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from ref_numpy import GPTConfig, check_params, prepare_inputs

from . import layers
from .amp import precision_for, record_dtype, to
from .device import launch_blocking_on_cpu
from .layers import BLOCK_CELLS, LayerNorm

MODES = ("pynative", "graph")


def default_position_ids(attention_mask, n_past, batch, n_new):
    """Tensor version of ref_numpy.validation.default_position_ids: n_past + arange(T), or
    with a left-padding mask cumsum(mask) - 1 (0 on padding), the last T columns."""
    if attention_mask is None:
        return ops.broadcast_to(ops.arange(n_past, n_past + n_new)[None, :], (batch, n_new))
    positions = ops.cumsum(attention_mask, -1) - 1
    positions = ops.where(attention_mask == 0, 0, positions)
    return positions[:, -n_new:]


def attention_mask_4d(n_query, n_key, attention_mask=None):
    """Causal mask [1, 1, T, S], combined with the padding mask into [B, 1, T, S] if given
    (as ref_numpy.attention_mask_4d; the layers' functions are looked up at call time)."""
    mask = layers.causal_mask(n_query, n_key)[None, None]
    if attention_mask is not None:
        mask = mask & layers.padding_mask(attention_mask)
    return mask


def cache_slots(n_tokens, n_ctx):
    """Static cache length for n_tokens positions: the next power of two (>= 16), at most
    n_ctx.  Attending over fewer empty slots makes each decode step cheaper; rounding up keeps
    the number of distinct shapes, hence of compiled graphs, small."""
    return min(n_ctx, max(16, 1 << (n_tokens - 1).bit_length()))


def pad_slots(x, n_slots):
    """[B, H, S, D] -> [B, H, n_slots, D], zeros after the S filled slots."""
    return ops.pad(x, (0, 0, 0, n_slots - x.shape[2]))


def as_numpy(tensor):
    """float32 NumPy copy of a float Tensor of any dtype (bfloat16 has no NumPy dtype)."""
    return to(tensor, ms.float32).asnumpy()


class GPTModel(nn.Cell):
    """GPT-1/GPT-2 from a ref_numpy config and params dict (any float dtype; held as float32
    Parameters named like ref_numpy.flatten_params, so save_checkpoint writes the names
    weights/ reads).  amp_level O0-O3 and dtype ("float16"/"bfloat16") as in amp.py; mode
    "pynative" or "graph" selects how forward_numpy and generate run."""

    def __init__(self, config: GPTConfig, params: dict, *, amp_level="O0", dtype=None, mode="pynative"):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a ref_numpy.GPTConfig, got {type(config).__name__}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        check_params(config, params)
        precision = precision_for(amp_level, dtype)
        launch_blocking_on_cpu()
        self.config, self.amp_level, self.mode, self.precision = config, amp_level, mode, precision
        self.low_dtype = None if amp_level == "O0" else (dtype or "float16")
        self.elementwise_dtype, self.logits_dtype = precision.elementwise, precision.logits
        self.wte = Parameter(Tensor(np.asarray(params["wte"], np.float32)), name="wte")
        self.wpe = Parameter(Tensor(np.asarray(params["wpe"], np.float32)), name="wpe")
        block = BLOCK_CELLS[config.arch]
        eps = config.layer_norm_epsilon
        self.blocks = nn.CellList([block(p, config.n_head, eps, precision) for p in params["blocks"]])
        self.has_ln_f = config.arch == "gpt2"
        if self.has_ln_f:  # feeds the logits: normalise in precision.norm, hand over in the logits dtype
            self.ln_f = LayerNorm(params["ln_f"], eps, precision, out_dtype=precision.logits)
        # x @ wte.T as one MatMul reading wte transposed: 20x faster than materialising wte.T.
        self.matmul_t = ops.MatMul(transpose_b=True)
        self.compiled_step = ms.jit(self.static_step)

    # -- the computation -------------------------------------------------------------------

    def embed(self, ids, position_ids, drop=None):
        """[B, T] ids -> [B, T, C]: token plus position embedding; `drop`: training's dropout
        multiplier [B, T, C] (None: none)."""
        dtype = self.elementwise_dtype
        x = to(ops.gather(self.wte, ids, 0), dtype) + to(ops.gather(self.wpe, position_ids, 0), dtype)
        x = record_dtype("embed", x)
        return x if drop is None else layers.dropout(x, drop, dtype)

    def final(self, x, last_only=False):
        """The last block's output [B, T, C] -> (logits [B, T, V], the hidden state they are read
        from: ln_f's output for GPT-2, x itself for GPT-1).  last_only: the last position's logits."""
        hidden = x
        if self.has_ln_f:
            hidden = self.ln_f(x)
        return self.lm_head(hidden[:, -1:] if last_only else hidden), hidden

    def lm_head(self, x):
        """Logits [B, T, V] from the tied embedding, in the logits dtype."""
        dtype = self.logits_dtype
        B, T, C = x.shape
        x, wte = to(x, dtype), to(self.wte, dtype)
        logits = record_dtype("logits", x, wte, self.matmul_t(x.reshape(B * T, C), wte))
        return logits.reshape(B, T, -1)

    def run(self, ids, position_ids, mask, past=None, cache_write=None, last_only=False, drops=None):
        """Embeddings, blocks, head.  mask boolean [B|1, 1, T, S]; past None or one (k, v) per
        layer (dynamic, or static with `cache_write`, see layers.extend_cache).  Returns (logits, present, intermediates);
        last_only keeps the logits of the last position only (all generation needs).

        drops: training's dropout multipliers, ref_numpy.dropout_masks's structure as float32
        Tensors: {"embed": [B, T, C], "blocks": ({"attn_weights": [B, H, T, T], "attn": [B, T, C],
        "mlp": [B, T, C]}, ... per layer)}; None (inference) runs no dropout op at all."""
        x = self.embed(ids, position_ids, None if drops is None else drops["embed"])
        present = ()
        intermediates = (x,)
        for i in range(len(self.blocks)):
            block_drops = None if drops is None else drops["blocks"][i]
            x, layer_present, extras = self.blocks[i](x, mask, None if past is None else past[i], cache_write,
                                                      block_drops)
            present = present + (layer_present,)
            intermediates = intermediates + (extras + (x,),)
        logits, hidden = self.final(x, last_only)
        if self.has_ln_f:
            intermediates = intermediates + (hidden,)
        return logits, present, intermediates

    def construct(self, ids, attention_mask=None, past=None, position_ids=None):
        """ref_numpy.forward on Tensors: ids [B, T] int, attention_mask [B, S_past + T] 0/1,
        past one (k, v) [B, H, S_past, D] per layer -> (logits [B, T, V], present)."""
        B, T = ids.shape
        n_past = 0 if past is None else past[0][0].shape[2]
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, n_past, B, T)
        logits, present, _ = self.run(ids, position_ids, attention_mask_4d(T, n_past + T, attention_mask), past)
        return logits, present

    def static_step(self, ids, position_ids, key_mask, write_pos, cache=None, last_only=False):
        """One step on a static cache of L slots (L <= n_ctx, fixed for a whole generation).

        ids, position_ids [B, T]; key_mask [B, L] 0/1 (1 = a real token is, or will now be, in
        that slot; its width sets L); write_pos: int Tensor, the slot of ids[:, 0]; cache one
        (k, v) [B, H, L, D] per layer, or None for the first step (the prompt: attend over its
        T keys only, then pad the cache to L slots -- cheaper than attending over L empty
        slots).  -> (logits, cache)."""
        T = ids.shape[1]
        n_slots = key_mask.shape[1]
        if cache is None:
            logits, present, _ = self.run(ids, position_ids, attention_mask_4d(T, T, key_mask[:, :T]), None, None,
                                          last_only)
            return logits, tuple((pad_slots(k, n_slots), pad_slots(v, n_slots)) for k, v in present)
        mask = layers.causal_mask(T, write_pos + T, n_slots)[None, None] & layers.padding_mask(key_mask)
        slots = ops.arange(n_slots)[:, None] == write_pos + ops.arange(T)[None, :]  # one-hot [L, T]
        cache_write = (slots.astype(ms.float32), write_pos + T)
        logits, present, _ = self.run(ids, position_ids, mask, cache, cache_write, last_only)
        return logits, present

    # -- NumPy in, NumPy out ----------------------------------------------------------------

    def forward_numpy(self, ids, *, attention_mask=None, past=None, position_ids=None, trace=None):
        """ref_numpy.forward's arguments and results in NumPy (float32): (logits [B, T, V],
        present [(k, v) [B, H, S, D]] per layer).  `trace` (a dict) receives the spec's trace
        keys; tracing runs the dynamic path."""
        inputs = prepare_inputs(self.config, ids, attention_mask=attention_mask, past=past,
                                position_ids=position_ids)
        if self.mode == "graph" and trace is None:
            return self._forward_static(inputs, past)
        past_tensors = None if past is None else tuple((self._activation(k), self._activation(v)) for k, v in past)
        padding = None if inputs.attention_mask is None else Tensor(inputs.attention_mask)
        T = inputs.ids.shape[1]
        mask = attention_mask_4d(T, inputs.n_past + T, padding)
        logits, present, intermediates = self.run(Tensor(inputs.ids), Tensor(inputs.position_ids), mask, past_tensors)
        if trace is not None:
            self._fill_trace(trace, intermediates, logits)
        return as_numpy(logits), [(as_numpy(k), as_numpy(v)) for k, v in present]

    def step_numpy(self, ids, position_ids, key_mask, write_pos, cache, last_only=False):
        """compiled_step with NumPy ids/masks and an int write_pos (see static_step).  The cache
        is marked mutable: a tuple of Tensors would otherwise be a graph constant, and every new
        cache value would compile a new graph."""
        cache = None if cache is None else ms.mutable(cache)
        return self.compiled_step(Tensor(ids), Tensor(position_ids), Tensor(key_mask), Tensor(write_pos, ms.int64),
                                  cache, last_only)

    def _forward_static(self, inputs, past):
        B, T = inputs.ids.shape
        n_past = inputs.n_past
        n_slots = cache_slots(n_past + T, self.config.n_ctx)
        cache = None
        if past is not None:  # the spec's cache in the first n_past slots
            shape = (2, B, self.config.n_head, n_slots, self.config.head_dim)
            cache = []
            for k, v in past:
                k_and_v = np.zeros(shape, np.float32)
                k_and_v[0, :, :, :n_past], k_and_v[1, :, :, :n_past] = k, v
                cache.append((self._activation(k_and_v[0]), self._activation(k_and_v[1])))
            cache = tuple(cache)
        key_mask = np.zeros((B, n_slots), np.int64)
        key_mask[:, :n_past + T] = 1 if inputs.attention_mask is None else inputs.attention_mask
        logits, cache = self.step_numpy(inputs.ids, inputs.position_ids, key_mask, n_past, cache)
        return as_numpy(logits), [(as_numpy(k)[:, :, :n_past + T], as_numpy(v)[:, :, :n_past + T])
                                  for k, v in cache]

    def _activation(self, array):
        """A NumPy cache array as a Tensor in the activation dtype."""
        return Tensor(np.asarray(array, np.float32)).astype(self.elementwise_dtype)

    def _fill_trace(self, trace, intermediates, logits):
        trace["embed"] = as_numpy(intermediates[0])
        for i in range(self.config.n_layer):
            a, weights, m, out = intermediates[1 + i]
            trace.update({f"blocks.{i}.attn": as_numpy(a), f"blocks.{i}.attn_weights": as_numpy(weights),
                          f"blocks.{i}.mlp": as_numpy(m), f"blocks.{i}.out": as_numpy(out)})
        if self.has_ln_f:
            trace["ln_f"] = as_numpy(intermediates[-1])
        trace["logits"] = as_numpy(logits)
