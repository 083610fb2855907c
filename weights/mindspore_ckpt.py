"""MindSpore checkpoints: model.ckpt + gptspec.json.

The .ckpt holds one tensor per parameter under our flat names ("wte", "blocks.0.attn.c_attn.w",
...), which is exactly how ms_backend.GPTModel names its Parameters: the checkpoint of a
GPTModel (mindspore.save_checkpoint(model, ...)) and the one `save` writes are the same file.
A .ckpt has no hyper-parameters, so gptspec.json stores the GPTConfig beside it:

    {"format": "mindspore", "checkpoint": "model.ckpt", "config": {GPTConfig.to_dict()}}

MindSpore is imported only here, and only when this format is used: it is slow to import and
an optional dependency.
"""
from __future__ import annotations

import json
from pathlib import Path

import ref_numpy

from .common import CheckpointError, build_params, read_json, require_file

MARKER = "gptspec.json"
CHECKPOINT = "model.ckpt"
FORMAT_TAG = "mindspore"


def _mindspore():
    try:
        import mindspore
    except ImportError:
        raise ImportError("reading or writing a MindSpore checkpoint needs the mindspore extra: "
                          "pip install 'gptspec[mindspore]'") from None
    return mindspore


def read_marker(folder: Path) -> tuple[ref_numpy.GPTConfig, Path]:
    """The config and the checkpoint path named by gptspec.json (n_head comes from here only:
    no tensor shape shows it)."""
    path = folder / MARKER
    values = read_json(path, "gptspec MindSpore checkpoint description")
    if values.get("format") != FORMAT_TAG:
        raise CheckpointError(f"{path}: format is {values.get('format')!r}, expected {FORMAT_TAG!r}")
    if not isinstance(values.get("config"), dict):
        raise CheckpointError(f"{path} has no 'config' object (GPTConfig fields)")
    try:
        config = ref_numpy.GPTConfig.from_dict(values["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: {error}") from None
    return config, folder / Path(str(values.get("checkpoint", CHECKPOINT))).name


def load(folder: Path, *, check_finite: bool = False):
    """(GPTConfig, params) from a folder written by `save` (or by hand around a GPTModel's .ckpt)."""
    config, path = read_marker(folder)
    require_file(path, f"MindSpore checkpoint named by {folder / MARKER}")
    try:
        parameters = _mindspore().load_checkpoint(str(path))
    except (ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: MindSpore cannot read it ({error})") from None
    flat = {name: parameter.asnumpy() for name, parameter in parameters.items()}
    return config, build_params(config, flat, str(path), finite=check_finite)


def save(params: dict, config: ref_numpy.GPTConfig, folder: Path) -> None:
    """Write model.ckpt (one tensor per flat name) and gptspec.json."""
    mindspore = _mindspore()
    ref_numpy.check_params(config, params)
    tensors = [{"name": name, "data": mindspore.Tensor(array)}
               for name, array in ref_numpy.flatten_params(params).items()]
    mindspore.save_checkpoint(tensors, str(folder / CHECKPOINT))
    write_marker(config, folder)


def write_marker(config: ref_numpy.GPTConfig, folder: Path, checkpoint: str = CHECKPOINT) -> None:
    """gptspec.json for a .ckpt in `folder`; with it the checkpoint of an ms_backend.GPTModel loads:

        mindspore.save_checkpoint(model, "out/model.ckpt"); write_marker(model.config, Path("out"))
    """
    marker = {"format": FORMAT_TAG, "checkpoint": checkpoint, "config": config.to_dict()}
    (Path(folder) / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
