"""Loading and converting GPT checkpoints into ref_numpy's params dict.

    config, params = weights.load("path/to/folder")   # any format below, detected
    config, params = weights.load("gpt2")             # a fetched model, from the cache
    weights.save(params, config, "out/", format="safetensors")   # or "mindspore"

Formats (a folder is recognised by its marker file):
    OpenAI GPT-2 release   hparams.json + TensorFlow checkpoint   (openai_gpt2.py, read without TF)
    OpenAI GPT-1 release   params_shapes.json + params_0..9.npy   (openai_gpt1.py)
    Hugging Face           config.json + model.safetensors[.index.json]  (hf.py)
    MindSpore              gptspec.json + model.ckpt              (mindspore_ckpt.py)
Arrays come back in the dtype they are stored in (float32 for every published model).
"""
from __future__ import annotations

from pathlib import Path

from . import cache
from .common import CheckpointError

# format -> (marker files, any of which identifies it; what a folder of it holds), in the order
# detection tries them (GPT-1 before GPT-2: a GPT-1 folder may carry an hparams.json with its
# n_head).  A folder with a marker but not the rest gets the loader's "missing file" error.
FORMATS = {
    "mindspore": (("gptspec.json",), "gptspec.json + model.ckpt (MindSpore)"),
    "openai-gpt1": (("params_shapes.json", "params_0.npy"), "params_shapes.json + params_0..9.npy (OpenAI GPT-1)"),
    "openai-gpt2": (("hparams.json", "model.ckpt.index", "checkpoint"),
                    "hparams.json + model.ckpt.index + model.ckpt.data-* (OpenAI GPT-2, TensorFlow)"),
    "hf": (("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"),
           "config.json + model.safetensors or model.safetensors.index.json (Hugging Face)"),
}
SAVE_FORMATS = ("safetensors", "mindspore")

__all__ = ["load", "save", "detect", "CheckpointError", "FORMATS", "SAVE_FORMATS"]


def detect(folder) -> str:
    """The format name of a checkpoint folder, or an error listing what was looked for."""
    folder = Path(folder)
    if not folder.is_dir():
        kind = "a file" if folder.exists() else "missing"
        raise FileNotFoundError(f"{folder} is {kind}: give the folder that holds the checkpoint")
    for name, (markers, _) in FORMATS.items():
        if any((folder / marker).is_file() for marker in markers):
            return name
    present = sorted(p.name for p in folder.iterdir())
    listing = ", ".join(present[:12]) + (f", ... ({len(present)} entries)" if len(present) > 12 else "")
    looked_for = "; ".join(description for _, description in FORMATS.values())
    raise CheckpointError(f"{folder} is not a checkpoint in any known format. Looked for: {looked_for}. "
                          f"The folder holds: {listing or 'nothing'}")


def load(path_or_name, *, check_finite: bool = False, verify_crc: bool = True):
    """(GPTConfig, params) from a checkpoint folder or the name of a fetched model.

    check_finite: refuse NaN/Inf in any tensor (reads every value).
    verify_crc: check the CRC-32C of every tensor of a TensorFlow checkpoint (the index's own
    block CRCs are always checked).

    The config is the checkpoint's own (hparams.json, config.json, gptspec.json; GPT-1: the
    shapes), and every tensor is checked against it (ref_numpy.check_params: CheckpointError
    naming the first tensor that does not fit).  n_head is the one field no tensor shape shows
    (heads split C inside attention), so it is only ever read from that config, never inferred.
    """
    folder = cache.resolve(path_or_name)
    fmt = detect(folder)
    if fmt == "openai-gpt2":
        from . import openai_gpt2
        return openai_gpt2.load(folder, check_finite=check_finite, verify_crc=verify_crc)
    if fmt == "openai-gpt1":
        from . import openai_gpt1
        return openai_gpt1.load(folder, check_finite=check_finite)
    if fmt == "hf":
        from . import hf
        return hf.load(folder, check_finite=check_finite)
    from . import mindspore_ckpt
    return mindspore_ckpt.load(folder, check_finite=check_finite)


def save(params: dict, config, path, format: str = "safetensors") -> Path:
    """Write params + config as a checkpoint folder `path` (created if needed) that `load` reads:
    "safetensors" (a Hugging Face folder transformers can load) or "mindspore"."""
    if format not in SAVE_FORMATS:
        raise ValueError(f"format must be one of {SAVE_FORMATS}, got {format!r}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if format == "safetensors":
        from . import hf
        hf.save(params, config, folder)
    else:
        from . import mindspore_ckpt
        mindspore_ckpt.save(params, config, folder)
    return folder
