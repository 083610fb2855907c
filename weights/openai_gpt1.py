"""OpenAI's GPT-1 release (github.com/openai/finetune-transformer-lm, model/):

    params_shapes.json    the shapes of the 146 arrays, in order
    params_0.npy ... params_9.npy
                          one flat float32 array, cut into 10 pieces for GitHub's size limit

Loading follows the release's own train.py exactly:

    shapes = json.load(open('model/params_shapes.json'))
    offsets = np.cumsum([np.prod(shape) for shape in shapes])
    init_params = [np.load('model/params_{}.npy'.format(n)) for n in range(10)]
    init_params = np.split(np.concatenate(init_params, 0), offsets)[:-1]
    init_params = [param.reshape(shape) for param, shape in zip(init_params, shapes)]

The arrays carry no names: their meaning is their position, RELEASE_ORDER below, which is the
order train.py's model() creates its TensorFlow variables in (embedding, then per block:
attn, ln_1, mlp, ln_2).  The shapes alone cannot tell the three [768] arrays after
attn.c_proj.w apart, so this order is the specification -- written down once, here.
train.py merges positions and tokens into one embedding matrix; we keep them apart as
wpe and wte.  Projection weights are [1, in, out] (conv1d), the leading 1 is dropped.

The release has no hyper-parameter file and n_head cannot be read off the shapes: it is
12 (the paper's value) unless an optional hparams.json beside the arrays says otherwise
(our test fixtures use one for their tiny configs).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .common import CheckpointError, build_params, make_config, read_json, require_file

SHAPES_FILE = "params_shapes.json"
N_SHARDS = 10  # train.py: range(10)
RELEASE_N_HEAD = 12
LAYER_ORDER = ("attn.c_attn.w", "attn.c_attn.b", "attn.c_proj.w", "attn.c_proj.b", "ln_1.g", "ln_1.b",
               "mlp.c_fc.w", "mlp.c_fc.b", "mlp.c_proj.w", "mlp.c_proj.b", "ln_2.g", "ln_2.b")


def release_order(n_layer: int) -> list[str]:
    """Our flat names in the order of the release's arrays: wpe, wte, then 12 per block."""
    return ["wpe", "wte"] + [f"blocks.{i}.{name}" for i in range(n_layer) for name in LAYER_ORDER]


def shard_path(folder: Path, n: int) -> Path:
    return folder / f"params_{n}.npy"


def read_shapes(folder: Path) -> list[tuple[int, ...]]:
    path = require_file(folder / SHAPES_FILE, "OpenAI GPT-1 array shapes")
    try:
        shapes = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(shapes, list) or not all(
            isinstance(s, list) and all(isinstance(d, int) and d > 0 for d in s) for s in shapes):
        raise CheckpointError(f"{path} must be a list of shapes (lists of positive integers)")
    if len(shapes) < 2 or (len(shapes) - 2) % len(LAYER_ORDER):
        raise CheckpointError(f"{path} lists {len(shapes)} arrays; GPT-1 has 2 + {len(LAYER_ORDER)} per layer")
    return [tuple(s) for s in shapes]


def read_config(folder: Path, shapes: list[tuple[int, ...]]):
    """GPTConfig from the shapes: positions [n_ctx, C], tokens [n_vocab, C].  n_head is the one
    field no shape shows: hparams.json's if the folder has one, else the release's documented 12."""
    n_ctx, n_embd = shapes[0][0], shapes[0][-1]
    n_head, source = RELEASE_N_HEAD, folder / SHAPES_FILE
    if (folder / "hparams.json").is_file():
        source = folder / "hparams.json"
        n_head = read_json(source, "GPT-1 hyper-parameters (n_head)").get("n_head")
    return make_config(source, arch="gpt1", n_vocab=shapes[1][0], n_ctx=n_ctx, n_embd=n_embd, n_head=n_head,
                       n_layer=(len(shapes) - 2) // len(LAYER_ORDER))


def check_shards(folder: Path) -> list[Path]:
    """The 10 shard files, or an error saying which are missing or unexpected."""
    found = sorted(int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(r"params_(\d+)\.npy", p.name)))
    if found != list(range(N_SHARDS)):
        raise CheckpointError(f"{folder}: the GPT-1 release has {N_SHARDS} shards params_0.npy ... "
                              f"params_{N_SHARDS - 1}.npy, found {len(found)}: "
                              f"{', '.join(f'params_{n}.npy' for n in found) or 'none'}")
    return [shard_path(folder, n) for n in range(N_SHARDS)]


def read_flat(paths: list[Path]) -> np.ndarray:
    """The shards concatenated into one flat array (np.load without pickles)."""
    pieces = []
    for path in paths:
        try:
            piece = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as error:
            raise CheckpointError(f"{path}: not a readable .npy array ({error})") from None
        if piece.ndim != 1:
            raise CheckpointError(f"{path}: shard must be a flat 1-D array, got shape {piece.shape}")
        if pieces and piece.dtype != pieces[0].dtype:  # concatenate would silently convert
            raise CheckpointError(f"{path}: dtype {piece.dtype}, but {paths[0].name} has {pieces[0].dtype}")
        pieces.append(piece)
    return np.concatenate(pieces, 0)


def load(folder: Path, *, check_finite: bool = False):
    """(GPTConfig, params) from an OpenAI GPT-1 release folder."""
    shapes = read_shapes(folder)
    config = read_config(folder, shapes)
    flat = read_flat(check_shards(folder))
    sizes = [int(np.prod(shape)) for shape in shapes]
    if flat.size != sum(sizes):
        raise CheckpointError(f"{folder}: the {N_SHARDS} shards hold {flat.size} values, {SHAPES_FILE} needs "
                              f"{sum(sizes)} ({flat.size - sum(sizes):+d}): a shard is truncated, extra or "
                              f"from another release")
    arrays = np.split(flat, np.cumsum(sizes))[:-1]
    named = {}
    for name, array, shape in zip(release_order(config.n_layer), arrays, shapes):
        array = array.reshape(shape)
        named[name] = array[0] if name.endswith(".w") and array.ndim == 3 and shape[0] == 1 else array
    origin = {name: f"array #{i} of {SHAPES_FILE}" for i, name in enumerate(release_order(config.n_layer))}
    return config, build_params(config, named, str(folder), origin=origin, finite=check_finite)
