"""The parameters: a plain nested dict of NumPy arrays, named like OpenAI's checkpoints.

    params = {
        "wte": [n_vocab, C],            token embedding, also the (tied) output projection
        "wpe": [n_ctx, C],              position embedding
        "blocks": [                     one dict per layer
            {"ln_1": {"g": [C], "b": [C]},
             "attn": {"c_attn": {"w": [C, 3C], "b": [3C]},   q, k, v in one projection
                      "c_proj": {"w": [C, C],  "b": [C]}},
             "ln_2": {"g": [C], "b": [C]},
             "mlp":  {"c_fc":   {"w": [C, 4C], "b": [4C]},
                      "c_proj": {"w": [4C, C], "b": [C]}}},
            ...],
        "ln_f": {"g": [C], "b": [C]},   GPT-2 only
    }

Weights are stored [in, out] and applied as `x @ w`, as in OpenAI's code (their
"Conv1D" with a 1x1 kernel is exactly this matmul).
"""
from __future__ import annotations

import numpy as np

from .config import GPTConfig


def expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Flat name -> shape for every array a model of `config` has."""
    C, V = config.n_embd, config.n_vocab
    shapes = {"wte": (V, C), "wpe": (config.n_ctx, C)}
    for i in range(config.n_layer):
        p = f"blocks.{i}."
        shapes.update({
            p + "ln_1.g": (C,), p + "ln_1.b": (C,),
            p + "attn.c_attn.w": (C, 3 * C), p + "attn.c_attn.b": (3 * C,),
            p + "attn.c_proj.w": (C, C), p + "attn.c_proj.b": (C,),
            p + "ln_2.g": (C,), p + "ln_2.b": (C,),
            p + "mlp.c_fc.w": (C, 4 * C), p + "mlp.c_fc.b": (4 * C,),
            p + "mlp.c_proj.w": (4 * C, C), p + "mlp.c_proj.b": (C,),
        })
    if config.arch == "gpt2":
        shapes.update({"ln_f.g": (C,), "ln_f.b": (C,)})
    return shapes


def flatten_params(params: dict) -> dict[str, np.ndarray]:
    """Nested params -> {"blocks.0.attn.c_attn.w": array, ...} (the names checkpoints use)."""
    flat = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, f"{prefix}{key}.")
        elif isinstance(node, (list, tuple)):
            for i, child in enumerate(node):
                walk(child, f"{prefix}{i}.")
        else:
            flat[prefix[:-1]] = node

    walk(params, "")
    return flat


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
    """Inverse of `flatten_params`: dotted names back to the nested dict (blocks as a list)."""
    params: dict = {}
    for name, array in flat.items():
        node = params
        *path, leaf = name.split(".")
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = array
    if "blocks" in params:
        blocks = params["blocks"]
        indices = sorted(int(i) for i in blocks)
        if indices != list(range(len(indices))):
            raise ValueError(f"block indices must be 0..n-1 without gaps, got {indices}")
        params["blocks"] = [blocks[str(i)] for i in indices]
    return params


def check_params(config: GPTConfig, params: dict) -> None:
    """Raise ValueError naming the first missing, extra or mis-shaped array, or a mixed dtype.

    Every entry point that runs the spec with a config and params calls this (forward, generate
    once per call, loss_and_grads, weights.load against the checkpoint's own config,
    ms_backend.GPTModel), so params of another model cannot run silently: n_layer=3 over 1-layer
    params, n_embd=64 over 32-wide ones, a GPT-1 config over GPT-2 params (ln_f) or the reverse.
    Arrays are checked in expected_shapes' order (wte, wpe, blocks.0..., ln_f), so the message
    names the first that does not fit, with its shape and the expected one.

    What it cannot check: n_head.  Heads only split C = n_head x head_dim inside attention; no
    array's shape depends on how C is split, so params of a 12-head model run under n_head=6 (and
    compute something else).  n_head must come from the same source as the params: the weight
    loaders read it from the checkpoint's own config (hparams.json, config.json, gptspec.json).
    """
    if not isinstance(params, dict):
        raise ValueError(f"params must be a dict, got {type(params).__name__}")
    flat = flatten_params(params)
    expected = expected_shapes(config)
    n_blocks = len(params.get("blocks", ())) if isinstance(params.get("blocks", ()), (list, tuple)) else None
    for name, shape in expected.items():
        if name not in flat:
            hint = ""
            if name.startswith("blocks.") and n_blocks is not None and n_blocks < config.n_layer:
                hint = f": params have {n_blocks} block(s), the config n_layer={config.n_layer}"
            elif name.startswith("ln_f."):
                hint = ": GPT-2 has a final LayerNorm, GPT-1 has none (GPT-1 params under a GPT-2 config?)"
            raise ValueError(f"params is missing {name!r} (expected shape {shape}) for {config}{hint}")
        array = flat[name]
        if not isinstance(array, np.ndarray):
            raise ValueError(f"params[{name!r}] must be a numpy array, got {type(array).__name__}")
        if array.shape != shape:
            raise ValueError(f"params[{name!r}] has shape {array.shape}, expected {shape} for {config}")
    extra = [name for name in flat if name not in expected]  # in the params' own order
    if extra:
        hint = ""
        if any(n.startswith("blocks.") for n in extra):
            hint = f": params have {n_blocks} block(s), the config n_layer={config.n_layer}"
        elif config.arch == "gpt1" and any(n.startswith("ln_f.") for n in extra):
            hint = ": GPT-1 has no final LayerNorm (GPT-2 params under a GPT-1 config?)"
        raise ValueError(f"params has unexpected array {extra[0]!r} (shape {tuple(np.shape(flat[extra[0]]))})"
                         f"{f' and {len(extra) - 1} more' if len(extra) > 1 else ''} for {config}{hint}")
    dtype = flat["wte"].dtype
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"params['wte'] has dtype {dtype}; parameters must be floating point")
    for name, array in flat.items():
        if array.dtype != dtype:
            raise ValueError(f"params[{name!r}] has dtype {array.dtype}, but wte has {dtype}: use one dtype")


def cast_params(params: dict, dtype, *, copy: bool = True) -> dict:
    """The same nested structure with every array cast to `dtype`.  copy=False returns `params`
    itself when every array already has that dtype (a 124M copy is ~0.5 GB and ~0.5 s): only
    for readers that never write into the arrays."""
    flat = flatten_params(params)
    if not copy and all(v.dtype == np.dtype(dtype) for v in flat.values()):
        return params
    return unflatten_params({k: v.astype(dtype) for k, v in flat.items()})


def init_params(config: GPTConfig, seed: int = 0, *, dtype=np.float32, random_biases: bool = False) -> dict:
    """A deterministic random model with GPT-2's initialisation.

    Weights ~ N(0, 0.02); position embeddings ~ N(0, 0.01) as in OpenAI's GPT-2 code;
    the two projections that write into the residual stream (attn.c_proj, mlp.c_proj)
    are scaled by 1/sqrt(2 * n_layer) so the residual's variance does not grow with depth.
    Biases start at 0 and LayerNorms at g=1, b=0 -- unless `random_biases`, which draws them
    too (g ~ 1 + N(0, 0.1), the rest ~ N(0, 0.02)) so that tests exercise every parameter.

    Values are drawn in float32 and then cast, so float32 and float64 models from the same
    seed hold the same numbers.
    """
    rng = np.random.default_rng(seed)
    residual_std = 0.02 / np.sqrt(2 * config.n_layer)

    def normal(shape, std):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def bias(n):
        return normal((n,), 0.02) if random_biases else np.zeros(n, np.float32)

    def norm(n):
        if random_biases:
            return {"g": 1 + normal((n,), 0.1), "b": normal((n,), 0.02)}
        return {"g": np.ones(n, np.float32), "b": np.zeros(n, np.float32)}

    C = config.n_embd
    params = {"wte": normal((config.n_vocab, C), 0.02), "wpe": normal((config.n_ctx, C), 0.01), "blocks": []}
    for _ in range(config.n_layer):
        params["blocks"].append({
            "ln_1": norm(C),
            "attn": {"c_attn": {"w": normal((C, 3 * C), 0.02), "b": bias(3 * C)},
                     "c_proj": {"w": normal((C, C), residual_std), "b": bias(C)}},
            "ln_2": norm(C),
            "mlp": {"c_fc": {"w": normal((C, 4 * C), 0.02), "b": bias(4 * C)},
                    "c_proj": {"w": normal((4 * C, C), residual_std), "b": bias(C)}},
        })
    if config.arch == "gpt2":
        params["ln_f"] = norm(C)
    return params if np.dtype(dtype) == np.float32 else cast_params(params, dtype)
