"""OpenAI's GPT-2 release: hparams.json + a TensorFlow checkpoint, read without TensorFlow.

    124M/  checkpoint  hparams.json  model.ckpt.index  model.ckpt.data-00000-of-00001
           model.ckpt.meta  encoder.json  vocab.bpe

Variable names map one to one onto ours: "model/h3/attn/c_attn/w" is "blocks.3.attn.c_attn.w".
The four projection weights are stored [1, in, out] -- OpenAI's "conv1d" with a 1-wide
kernel -- so the leading 1 is dropped; [in, out] is already our layout, no transpose.
(model.ckpt.meta, the TensorFlow graph, is not needed.)
"""
from __future__ import annotations

import re
from pathlib import Path

import ref_numpy

from .common import CheckpointError, build_params, config_value, make_config, read_json
from .tf_bundle import TensorBundle

HPARAMS = "hparams.json"
CHECKPOINT_STATE = "checkpoint"  # text file naming the latest checkpoint prefix
DEFAULT_PREFIX = "model.ckpt"
HPARAM_KEYS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")  # the same names as GPTConfig's


def openai_name(name: str) -> str:
    """Our flat name -> OpenAI's variable name: "blocks.3.ln_1.g" -> "model/h3/ln_1/g"."""
    name = re.sub(r"^blocks\.(\d+)\.", r"h\1/", name)
    return "model/" + name.replace(".", "/")


def read_config(folder: Path) -> ref_numpy.GPTConfig:
    """GPTConfig from hparams.json.  n_head comes from here only: no tensor shape shows it."""
    path = folder / HPARAMS
    hparams = read_json(path, "OpenAI GPT-2 hyper-parameters")
    fields = {key: config_value(hparams, key, path) for key in HPARAM_KEYS}
    return make_config(path, arch="gpt2", **fields)


def checkpoint_prefix(folder: Path) -> Path:
    """The prefix named by the `checkpoint` file (model_checkpoint_path: "..."), else model.ckpt."""
    state = folder / CHECKPOINT_STATE
    if state.is_file():
        match = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', state.read_text(encoding="utf-8"), re.M)
        if not match:
            raise CheckpointError(f"{state} has no model_checkpoint_path line")
        return folder / Path(match.group(1)).name  # the release's paths are relative to the folder
    return folder / DEFAULT_PREFIX


def load(folder: Path, *, check_finite: bool = False, verify_crc: bool = True):
    """(GPTConfig, params) from an OpenAI GPT-2 checkpoint folder."""
    config = read_config(folder)
    bundle = TensorBundle(checkpoint_prefix(folder))
    ours_by_theirs = {openai_name(name): name for name in ref_numpy.expected_shapes(config)}
    unknown = sorted(set(bundle.entries) - set(ours_by_theirs))
    if unknown:
        raise CheckpointError(f"{bundle.index_path}: unknown variable(s) {', '.join(map(repr, unknown[:5]))} "
                              f"for a GPT-2 with hparams {config} (expected only {len(ours_by_theirs)} "
                              f"variables named like 'model/h0/attn/c_attn/w')")
    flat = {}
    for theirs, ours in ours_by_theirs.items():
        if theirs not in bundle.entries:
            continue  # build_params names what is missing
        array = bundle.read(theirs)
        if ours.endswith(".w") and array.ndim == 3 and array.shape[0] == 1:  # conv1d [1, in, out] -> [in, out]
            array = array[0]
        flat[ours] = array
    params = build_params(config, flat, str(bundle.index_path), origin={v: k for k, v in ours_by_theirs.items()},
                          finite=check_finite)
    if verify_crc:
        for theirs in ours_by_theirs:
            bundle.verify(theirs)
    return config, params
