"""The `hf` backend: Hugging Face transformers on PyTorch (CPU), an implementation no one here wrote.

    backend = factory(config, params, dtype="float32")      # or "float16", "bfloat16"
    gptspec parity --backend hf --option dtype=bfloat16 ...

transformers' GPT2LMHeadModel (arch "gpt2") or OpenAIGPTLMHeadModel ("gpt1"), eager attention,
every dropout p = 0, its weights copied from the spec's params dict by weights.hf's name mapping
(HF's Conv1D stores [in, out] like the spec, so nothing is transposed; lm_head.weight *is* the
token embedding, one tied parameter).  What it provides of the protocol (gptspec/backend.py):

    forward     logits as float32 NumPy (float16/bfloat16 models too); with a left-padding mask the
                position ids are passed explicitly, cumsum(mask) - 1 (0 on padding), as the spec --
                transformers does not derive them from the mask
    trace       every spec name, read by forward hooks on the public submodules (see TRACE below)
    cache       gpt2 only: HF's DynamicCache.  OpenAIGPTModel has no KV cache at all, so the gpt1
                backend's forward takes no `past` (the protocol then recomputes the whole sequence
                per token itself -- the backend never pretends to cache)
    gradients   torch autograd of a cross-entropy computed here in float32 from the logits (not
                transformers' loss: it shifts the labels itself, and the protocol's targets are
                already shifted); any dtype, returned as float32 NumPy
    optimizer   float32 only: torch.nn.utils.clip_grad_norm_ + torch.optim.AdamW, decay on >= 2-D
                tensors (ref_numpy.optim.decays); the tied embedding is one parameter, decayed once
    classifier  GPT-1's fine-tuning objective (ref_numpy.classifier_loss_and_grads) on HF's hidden
                states, the head in torch

Precision: dtype float16/bfloat16 converts the whole model (weights, activations, LayerNorm,
softmax) to that dtype -- ms_backend/amp.py's O3, the closest of its policies, so amp_level is
"O3" (float32: "O0").  No training at low precision (no float32 master weights, no loss scaling:
the protocol's `overflow` is not provided), and no dtype_log (transformers records no dtypes).
"""
from __future__ import annotations

import inspect
import math

import numpy as np

import ref_numpy
from ref_numpy import IGNORE_INDEX
from ref_numpy.classifier import check_head, check_labels, check_lm_coef, check_positions, fine_tuning_lm_targets
from ref_numpy.optim import check_adamw_hyperparameters, decays
from ref_numpy.validation import (as_attention_mask, as_token_ids, check_length, check_targets,
                                  default_position_ids)
from weights.hf import hf_config, params_from_state, state_from_params

DTYPES = ("float32", "float16", "bfloat16")
AMP_LEVEL = {"float32": "O0", "float16": "O3", "bfloat16": "O3"}
INSTALL_HINT = ("pip install torch==2.13.0 first (pinned: a looser torch pulls a multi-GB CUDA build), then "
                "pip install -e '.[oracle]'")


def import_torch():
    """(torch, transformers), or ImportError with the install hint."""
    try:
        import torch
        import transformers
    except ImportError as error:
        raise ImportError(f"the hf backend needs torch and transformers ({error}): {INSTALL_HINT}") from None
    return torch, transformers


def factory(config, params, *, dtype="float32", threads=None):
    """An HFBackend holding `params` (the spec's params dict) for `config`, computing in `dtype`."""
    if dtype not in DTYPES:
        raise ValueError(f"the hf backend's dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer (torch.set_num_threads) or None, got {threads!r}")
    torch, _ = import_torch()
    ref_numpy.check_params(config, params)
    if threads is not None:
        torch.set_num_threads(threads)
    backend_class = HFCachedBackend if config.arch == "gpt2" else HFBackend
    return backend_class(config, params, dtype)


def build_model(config, dtype="float32"):
    """transformers' model for a GPTConfig, from weights/hf.py's config.json mapping: eager attention
    (exposes the attention weights), every dropout p = 0, eval mode, weights still HF's random ones."""
    torch, transformers = import_torch()
    values = hf_config(config)
    model_type = values.pop("model_type")
    hf = transformers.AutoConfig.for_model(model_type, **values, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                           bos_token_id=None, eos_token_id=None, attn_implementation="eager",
                                           use_cache=False)  # a cache only when forward is given `past`
    model_class = transformers.GPT2LMHeadModel if config.arch == "gpt2" else transformers.OpenAIGPTLMHeadModel
    model = model_class(hf).to(getattr(torch, dtype)).eval()
    if model.lm_head.weight is not model.get_input_embeddings().weight:
        raise RuntimeError(f"transformers {transformers.__version__} did not tie lm_head.weight to the token "
                           f"embedding; the spec's output layer is the embedding itself")
    return model


def to_numpy(tensor) -> np.ndarray:
    """A float32 NumPy copy of any float tensor (NumPy has no bfloat16).  A copy: .numpy() of a
    float32 tensor shares its memory, and the parameters and their .grad change in place at the next
    step -- the params and grads handed out must not."""
    return np.array(tensor.detach().float().cpu().numpy())  # np.array copies


class HFBackend:
    """The protocol over a transformers model: forward (+ trace), gradients, optimizer (float32),
    classifier.  GPT-1's; GPT-2's adds the cache (HFCachedBackend)."""

    name = "hf-transformers"
    device = "cpu"

    def __init__(self, config, params, dtype="float32"):
        torch, transformers = import_torch()
        self.torch, self.config, self.dtype, self.amp_level = torch, config, dtype, AMP_LEVEL[dtype]
        self.version = f"transformers {transformers.__version__}, torch {torch.__version__}"
        self.model = build_model(config, "float32")
        parameters = dict(self.model.named_parameters())
        with torch.no_grad():
            for hf_name, array in state_from_params(params, config.arch).items():
                parameters[hf_name].copy_(torch.from_numpy(np.asarray(array, dtype=np.float32)))
        self.model.to(getattr(torch, dtype))
        self.optimizer, self.hyper = None, None
        if dtype != "float32":
            self.train_step = None  # no update at low precision: the protocol reports "optimizer" not provided
        # transformers 5.x names the GPT-2 cache argument `cache` (past_key_values before).
        self.cache_keyword = "cache" if "cache" in inspect.signature(self.model.forward).parameters \
            else "past_key_values"

    # -- inputs ------------------------------------------------------------------------------------

    def model_inputs(self, ids, attention_mask, n_past=0) -> dict:
        """Validated torch inputs; the position ids the spec uses (ref_numpy.validation)."""
        torch = self.torch
        ids = as_token_ids(ids, self.config)
        batch, n_new = ids.shape
        check_length(n_past, n_new, self.config)
        mask = as_attention_mask(attention_mask, batch, n_past + n_new)
        positions = default_position_ids(mask, n_past, batch, n_new)
        return {"input_ids": torch.from_numpy(ids), "position_ids": torch.from_numpy(positions),
                "attention_mask": None if mask is None else torch.from_numpy(mask)}

    # -- forward -----------------------------------------------------------------------------------

    def forward(self, ids, attention_mask=None, *, trace=None):
        """Logits [B, T, V] float32; `trace` (a dict) receives every tensor the spec traces."""
        return self.run(self.model_inputs(ids, attention_mask), trace)

    def run(self, inputs: dict, trace, cache_arguments=None) -> np.ndarray:
        """The logits (float32 NumPy) of one no-grad forward, traced when asked."""
        kwargs = dict(inputs, **(cache_arguments or {}))
        if trace is not None and self.config.arch == "gpt1":
            kwargs["output_attentions"] = True  # GPT-1's Attention returns its weights only then
        handles = self.trace_hooks(trace) if trace is not None else []
        try:
            with self.torch.no_grad():
                out = self.model(**kwargs)
        finally:
            for handle in handles:
                handle.remove()
        logits = to_numpy(out.logits)
        if trace is not None:
            trace["logits"] = logits
        return logits

    # TRACE: which submodule output is which spec tensor (ref_numpy/layers.py gpt1_block/gpt2_block).
    #   embed                 transformer.drop: wte[ids] + wpe[positions], before the first block
    #   blocks.i.attn         h[i].attn output [0]: after c_proj, before the residual add
    #   blocks.i.attn_weights h[i].attn output [1]: the softmax weights (eager attention)
    #   blocks.i.mlp          h[i].mlp: c_proj of the GELU, before the residual add
    #   blocks.i.out          h[i] (GPT-1: output [0]): the block's output
    #   ln_f                  transformer.ln_f (GPT-2)
    def trace_hooks(self, trace: dict) -> list:
        transformer = self.model.transformer

        def record(name, index=None):
            def hook(module, args, output):
                trace[name] = to_numpy(output if index is None else output[index])
            return hook

        block_output = None if self.config.arch == "gpt2" else 0  # GPT-1's Block returns [h, weights]
        hooks = [(transformer.drop, record("embed"))]
        for i, block in enumerate(transformer.h):
            hooks += [(block.attn, record(f"blocks.{i}.attn", 0)), (block.attn, record(f"blocks.{i}.attn_weights", 1)),
                      (block.mlp, record(f"blocks.{i}.mlp")), (block, record(f"blocks.{i}.out", block_output))]
        if self.config.arch == "gpt2":
            hooks.append((transformer.ln_f, record("ln_f")))
        return [module.register_forward_hook(hook) for module, hook in hooks]

    # -- gradients ---------------------------------------------------------------------------------

    def lm_loss(self, inputs, targets, attention_mask):
        """The mean cross-entropy over targets != -100 as a torch scalar with its graph (float32)."""
        torch = self.torch
        kwargs = self.model_inputs(inputs, attention_mask)
        targets = check_targets(targets, tuple(kwargs["input_ids"].shape), self.config.n_vocab)
        logits = self.model(**kwargs).logits
        return self.cross_entropy(logits, torch.from_numpy(targets))

    def cross_entropy(self, logits, targets):
        return self.torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                      targets.reshape(-1), ignore_index=IGNORE_INDEX)

    def gradients(self) -> dict:
        """Every parameter's .grad in the params dict's structure, float32 NumPy (wte's is the
        embedding's plus the tied head's: one parameter)."""
        parameters = dict(self.model.named_parameters())
        return params_from_state(self.config, parameters, convert=lambda p: to_numpy(p.grad))

    def params_numpy(self) -> dict:
        return params_from_state(self.config, dict(self.model.named_parameters()), convert=to_numpy)

    def loss_and_grads(self, inputs, targets, attention_mask=None):
        """(loss, grads): the protocol's targets are already shifted (ref_numpy.shift_targets)."""
        self.model.zero_grad(set_to_none=False)
        loss = self.lm_loss(inputs, targets, attention_mask)
        loss.backward()
        return float(loss.detach()), self.gradients()

    # -- optimizer ---------------------------------------------------------------------------------

    def train_step(self, inputs, targets, attention_mask=None, *, lr, betas, eps, weight_decay, max_grad_norm):
        """One clipped AdamW update; the optimizer (and its moments) persist across calls.  `lr` may
        change from call to call (a schedule: it is this step's rate, as a torch LR scheduler sets
        it); the other hyper-parameters are fixed at the first call."""
        torch = self.torch
        check_adamw_hyperparameters(lr, betas, eps, weight_decay)
        if max_grad_norm is not None and (isinstance(max_grad_norm, bool) or not isinstance(
                max_grad_norm, (int, float, np.integer, np.floating)) or not max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be a number > 0 or None (no clipping), got {max_grad_norm!r}")
        hyper = {"betas": (float(betas[0]), float(betas[1])), "eps": float(eps), "weight_decay": float(weight_decay),
                 "max_grad_norm": None if max_grad_norm is None else float(max_grad_norm)}
        if self.optimizer is None:
            self.optimizer = self.make_optimizer(lr, hyper["betas"], hyper["eps"], hyper["weight_decay"])
            self.hyper = hyper
        elif hyper != self.hyper:
            changed = [f"{key} {old} -> {hyper[key]}" for key, old in self.hyper.items() if hyper[key] != old]
            raise ValueError(f"train_step's hyper-parameters changed after the first step ({', '.join(changed)}): "
                             f"the optimizer keeps them; build a new backend to train with others")
        for group in self.optimizer.param_groups:
            group["lr"] = float(lr)
        self.optimizer.zero_grad(set_to_none=False)
        loss = self.lm_loss(inputs, targets, attention_mask)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                              math.inf if max_grad_norm is None else max_grad_norm)
        self.optimizer.step()
        return {"loss": float(loss.detach()), "grad_norm": float(norm), "params": self.params_numpy()}

    def make_optimizer(self, lr, betas, eps, weight_decay):
        """torch's AdamW, weight decay on >= 2-D tensors only (the spec's rule).  named_parameters
        lists the tied embedding once, so it is decayed once."""
        parameters = [p for _, p in self.model.named_parameters()]
        groups = [{"params": [p for p in parameters if decays(p)], "weight_decay": weight_decay},
                  {"params": [p for p in parameters if not decays(p)], "weight_decay": 0.0}]
        return self.torch.optim.AdamW(groups, lr=float(lr), betas=betas, eps=eps)

    # -- GPT-1's fine-tuning objective ---------------------------------------------------------------

    def classifier_loss_and_grads(self, head, ids, labels, clf_positions, attention_mask=None, *, lm_coef=0.5):
        """L2 + lm_coef x L1 as ref_numpy.classifier_loss_and_grads (no dropout): the head on the final
        hidden state at each row's classify token, plus the LM loss of the same rows."""
        torch = self.torch
        n_classes = check_head(self.config, head, np.dtype(np.float32))  # the protocol's arrays are float32
        kwargs = self.model_inputs(ids, attention_mask)
        ids = kwargs["input_ids"].numpy()
        mask = None if kwargs["attention_mask"] is None else kwargs["attention_mask"].numpy()
        positions = check_positions(clf_positions, mask, *ids.shape)
        labels = check_labels(labels, len(positions), n_classes)
        lm_coef = check_lm_coef(lm_coef)
        lm_targets = fine_tuning_lm_targets(ids, mask, lm_coef)
        dtype = self.model.dtype
        w = torch.tensor(np.asarray(head["w"], np.float32), dtype=dtype, requires_grad=True)
        b = torch.tensor(np.asarray(head["b"], np.float32), dtype=dtype, requires_grad=True)
        self.model.zero_grad(set_to_none=False)
        hidden = self.model.transformer(**kwargs).last_hidden_state  # [B, T, C], after ln_f for GPT-2
        h = hidden[torch.arange(len(positions)), torch.from_numpy(positions)]  # [B, C]
        loss = self.cross_entropy(h @ w + b, torch.from_numpy(labels))
        if lm_targets is not None:
            lm_logits = self.model.lm_head(hidden[:, :-1])
            loss = loss + lm_coef * self.cross_entropy(lm_logits, torch.from_numpy(lm_targets))
        loss.backward()
        return float(loss.detach()), self.gradients(), {"w": to_numpy(w.grad), "b": to_numpy(b.grad)}


class HFCachedBackend(HFBackend):
    """GPT-2's: forward also takes `past`, transformers' DynamicCache."""

    def forward(self, ids, attention_mask=None, *, trace=None, past=...):
        """Logits; with `past` given (None: a new cache) (logits, present).  attention_mask covers the
        cached and the new tokens, [B, S_past + T]; positions continue over the whole mask.

        DynamicCache grows in place, so a `past` is continued in a new cache holding the same key
        and value tensors: `past` itself is never changed, and can be continued again (as the
        spec's tuple cache can)."""
        if past is ...:
            return super().forward(ids, attention_mask, trace=trace)
        from transformers import DynamicCache

        if past is None:
            present = DynamicCache(config=self.model.config)
        elif isinstance(past, DynamicCache):
            present = DynamicCache(iter(past), config=self.model.config)
        else:
            raise TypeError(f"past must be None or the DynamicCache an earlier forward(..., past=...) returned, got "
                            f"{type(past).__module__}.{type(past).__name__}")
        n_past = present.get_seq_length()
        inputs = self.model_inputs(ids, attention_mask, n_past)
        if n_past:
            cached_rows, batch = next(iter(present))[0].shape[0], inputs["input_ids"].shape[0]
            if cached_rows != batch:
                raise ValueError(f"past holds {cached_rows} rows, ids has {batch}: continue a cache with its own batch")
        logits = self.run(inputs, trace, {self.cache_keyword: present, "use_cache": True})
        return logits, present  # transformers grew `present` in place
