"""Hugging Face checkpoints: config.json + model.safetensors (or shards listed in
model.safetensors.index.json), for gpt2, gpt2-medium/large/xl, distilgpt2 and openai-gpt.

Names: see hf_names.py.  HF's GPT-2 and GPT-1 keep OpenAI's Conv1D layout [in, out], the same
as ours, so no array is transposed (only a torch.nn.Linear port would need it).  Checkpoints
name the arrays with or without the "transformer." prefix (the hub's gpt2 has none), and
older ones also store the causal-mask buffers attn.bias / attn.masked_bias, which are not
parameters: both are accepted explicitly; any other unknown name is refused.

Tensors are read through `safetensors.safe_open(framework="np")`, which memory-maps the file
and copies out one tensor at a time.  pytorch_model.bin is refused: it is a pickle, and
unpickling can run arbitrary code.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

import ref_numpy

from .common import CheckpointError, build_params, config_value, make_config, read_json
from .hf_names import hf_names

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
PREFIX = "transformer."
ARCH_OF_MODEL_TYPE = {"gpt2": "gpt2", "openai-gpt": "gpt1"}
# Causal-mask buffers of older checkpoints: constants, not parameters.
BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")
TIED_HEAD = "lm_head.weight"  # the output layer, tied to the token embedding
# Activation settings that mean the tanh GELU the spec uses.
TANH_GELU = {"gpt2": ("activation_function", ("gelu_new", "gelu_pytorch_tanh")), "gpt1": ("afn", ("gelu",))}
# GPT2Config switches that change the computation away from GPT-2's: the value the spec computes.
# (reorder_and_upcast_attn only changes rounding, not the function, so it is accepted.)
GPT2_ATTENTION = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False}


def read_config(folder: Path) -> ref_numpy.GPTConfig:
    """GPTConfig from config.json.  n_head comes from here only: no tensor shape shows it."""
    path = folder / CONFIG
    values = read_json(path, "Hugging Face model config")
    model_type = values.get("model_type")
    if model_type not in ARCH_OF_MODEL_TYPE:
        raise CheckpointError(f"{path}: model_type {model_type!r} is not supported (known: "
                              f"{', '.join(ARCH_OF_MODEL_TYPE)})")
    arch = ARCH_OF_MODEL_TYPE[model_type]
    key, allowed = TANH_GELU[arch]
    if values.get(key, allowed[0]) not in allowed:
        raise CheckpointError(f"{path}: {key}={values[key]!r}, but GPT-{arch[-1]} uses the tanh GELU ({allowed[0]!r})")
    for switch, spec_value in GPT2_ATTENTION.items():
        if values.get(switch, spec_value) != spec_value:
            raise CheckpointError(f"{path}: {switch}={values[switch]!r} changes the attention; the spec is "
                                  f"GPT-2's ({switch}={spec_value})")
    n_embd = config_value(values, "n_embd", path)
    if values.get("n_inner") not in (None, 4 * n_embd):
        raise CheckpointError(f"{path}: n_inner={values['n_inner']}, the spec's MLP is 4 * n_embd = {4 * n_embd}")
    return make_config(path, arch=arch, n_vocab=config_value(values, "vocab_size", path),
                       n_ctx=config_value(values, "n_positions", path, "n_ctx"), n_embd=n_embd,
                       n_head=config_value(values, "n_head", path), n_layer=config_value(values, "n_layer", path),
                       layer_norm_epsilon=values.get("layer_norm_epsilon", 1e-5))


def weight_files(folder: Path) -> list[Path]:
    """The safetensors file(s) of a folder: model.safetensors, or the shards its index lists."""
    if (folder / SINGLE).is_file():
        return [folder / SINGLE]
    if (folder / INDEX).is_file():
        weight_map = read_json(folder / INDEX, "safetensors shard index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{folder / INDEX} has no 'weight_map' of tensor name -> shard file")
        files = [folder / name for name in sorted(set(weight_map.values()))]
        for path in files:
            if not path.is_file():
                tensors = [t for t, f in weight_map.items() if folder / f == path]
                raise FileNotFoundError(f"missing file {path}, the shard {folder / INDEX} lists for "
                                        f"{len(tensors)} tensor(s) such as {tensors[0]!r}")
        return files
    if (folder / PICKLE).is_file():
        raise CheckpointError(
            f"{folder / PICKLE} is a PyTorch pickle and is not loaded: unpickling a file can execute arbitrary "
            f"code.  Convert it once, in an environment you trust, to safetensors, e.g. with transformers: "
            f"AutoModelForCausalLM.from_pretrained('{folder}').save_pretrained('{folder}-safetensors'); or "
            f"download the model's model.safetensors instead (gptspec fetch NAME --format hf)")
    raise FileNotFoundError(f"missing file {folder / SINGLE} (or {INDEX} with its shards): no Hugging Face "
                            f"weights next to {folder / CONFIG}")


def short_name(name: str) -> str:
    """The name without the "transformer." prefix some checkpoints use."""
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def read_tensors(paths: list[Path]) -> dict[str, tuple[np.ndarray, Path]]:
    """{name in the file: (array, file)} for every tensor of every file but the mask buffers."""
    from safetensors import SafetensorError, safe_open  # optional dependency: only for this format

    tensors = {}
    for path in paths:
        try:
            with safe_open(str(path), framework="np") as handle:
                for name in handle.keys():
                    if BUFFER.match(short_name(name)):
                        continue  # a constant, never read
                    dtype = handle.get_slice(name).get_dtype()
                    if dtype in ("BF16", "F8_E4M3", "F8_E5M2"):
                        raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype}, which NumPy cannot "
                                              f"hold; convert the checkpoint to float32 or float16 first")
                    if name in tensors:
                        raise CheckpointError(f"{path}: tensor {name!r} also appears in {tensors[name][1]}")
                    tensors[name] = (handle.get_tensor(name), path)
        except SafetensorError as error:
            raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    return tensors


def load(folder: Path, *, check_finite: bool = False):
    """(GPTConfig, params) from a Hugging Face folder."""
    config = read_config(folder)
    files = weight_files(folder)
    tensors = read_tensors(files)
    names = hf_names(ref_numpy.expected_shapes(config), config.arch, prefix="")
    ours_by_theirs = {theirs: ours for ours, theirs in names.items()}
    flat, origin, head = {}, {}, None
    for name, (array, path) in tensors.items():
        short = short_name(name)
        if short == TIED_HEAD:
            head = (array, path)
        elif short in ours_by_theirs:
            flat[ours_by_theirs[short]], origin[ours_by_theirs[short]] = array, name
        else:
            raise CheckpointError(f"{path}: unknown tensor {name!r} for a {config.arch} checkpoint "
                                  f"(expected names like 'h.0.attn.c_attn.weight', with or without {PREFIX!r})")
    source = str(files[0] if len(files) == 1 else folder / INDEX)
    params = build_params(config, flat, source, origin=origin, finite=check_finite)
    if head is not None and not np.array_equal(head[0], params["wte"]):
        raise CheckpointError(f"{head[1]}: {TIED_HEAD!r} differs from the token embedding; GPT ties the two "
                              f"and the spec has no separate output layer")
    return config, params


def state_from_params(params: dict, arch: str, prefix: str = PREFIX) -> dict:
    """{HF name: array} of a params dict ("transformer.h.0.attn.c_attn.weight", ...), arrays as they
    are: HF's Conv1D is [in, out] like ours, so nothing is transposed.  The tied lm_head.weight is
    not listed: it is the token embedding."""
    flat = ref_numpy.flatten_params(params)
    return dict(zip(hf_names(flat, arch, prefix).values(), flat.values()))


def params_from_state(config: ref_numpy.GPTConfig, state, prefix: str = PREFIX, convert=np.asarray) -> dict:
    """Our params dict from any mapping of HF names to tensors -- a state dict, a model's named
    parameters, their .grad -- each passed through `convert` (e.g. torch tensor -> numpy).  A
    tensor the spec has and `state` lacks is a KeyError naming both names."""
    flat = {}
    for ours, theirs in hf_names(ref_numpy.expected_shapes(config), config.arch, prefix).items():
        if theirs not in state:
            raise KeyError(f"no {theirs!r} (the spec's {ours!r}) among the {len(state)} Hugging Face tensors")
        flat[ours] = convert(state[theirs])
    return ref_numpy.unflatten_params(flat)


def hf_config(config: ref_numpy.GPTConfig) -> dict:
    """config.json that transformers' GPT2LMHeadModel / OpenAIGPTLMHeadModel load."""
    common = dict(vocab_size=config.n_vocab, n_positions=config.n_ctx, n_embd=config.n_embd,
                  n_layer=config.n_layer, n_head=config.n_head, layer_norm_epsilon=config.layer_norm_epsilon)
    if config.arch == "gpt2":
        return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], activation_function="gelu_new",
                    n_ctx=config.n_ctx, n_inner=None, tie_word_embeddings=True, **common)
    return dict(model_type="openai-gpt", architectures=["OpenAIGPTLMHeadModel"], afn="gelu",
                tie_word_embeddings=True, **common)


def save(params: dict, config: ref_numpy.GPTConfig, folder: Path) -> None:
    """Write config.json + model.safetensors as transformers' save_pretrained does: prefixed
    names ("transformer.h.0..."), the tied lm_head left out, metadata format "pt"."""
    from safetensors.numpy import save_file

    ref_numpy.check_params(config, params)
    state = state_from_params(params, config.arch)
    save_file({name: np.ascontiguousarray(a) for name, a in state.items()}, str(folder / SINGLE),
              metadata={"format": "pt"})
    (folder / CONFIG).write_text(json.dumps(hf_config(config), indent=2) + "\n", encoding="utf-8")
