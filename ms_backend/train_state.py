"""Saving and resuming a Trainer: the weights through weights.save, plus the training state.

    DIR/config.json, model.safetensors   the float32 master weights (weights.save, "safetensors"):
                                         any gptspec tool, and transformers, load them
    DIR/ms_trainer.json                  the Trainer's settings, its step count, the optimizer's
                                         update count, the loss scaler's state and the dropout
                                         masks' generator state (numpy bit_generator.state)
    DIR/ms_optimizer.npz                 AdamW's moments: m/<name> and v/<name> per parameter
    DIR/ms_head.npz                      the classifier head's w and b (fine-tuning only)

Everything is stored bit for bit (float32 arrays; JSON writes a float's repr), so a resumed Trainer
continues exactly as the saved one would have.
"""
from __future__ import annotations

import json
from pathlib import Path

import mindspore as ms
import numpy as np

from ref_numpy import flatten_params

from .device import overwrite
from .optim import optimizer_state, restore_optimizer_state

TRAINER_FILE = "ms_trainer.json"
OPTIMIZER_FILE = "ms_optimizer.npz"
HEAD_FILE = "ms_head.npz"
FORMAT = "gptspec-ms-trainer-1"
# Settings that define the saved state's meaning: a resumed Trainer keeps them.
STATE_SETTINGS = ("loss_scale", "initial_scale", "scale_window")


def trainer_settings(trainer) -> dict:
    """The keyword arguments that rebuild `trainer` (besides config and params)."""
    loss_scale, initial_scale, scale_window = trainer.loss_scale_setting
    h = trainer.hyper
    return dict(amp_level=trainer.amp_level, dtype=trainer.dtype, mode=trainer.mode, lr=h["lr"],
                warmup_steps=h["warmup_steps"], total_steps=h["total_steps"], min_lr=h["min_lr"],
                schedule=h["schedule"], betas=list(h["betas"]), eps=h["eps"], weight_decay=h["weight_decay"],
                max_grad_norm=h["max_grad_norm"], loss_scale=loss_scale, initial_scale=initial_scale,
                scale_window=scale_window, dropout=trainer.dropout, seed=trainer.seed, lm_coef=trainer.lm_coef)


def save_trainer(trainer, folder) -> Path:
    import weights

    folder = weights.save(trainer.params_numpy(), trainer.config, folder, format="safetensors")
    state = optimizer_state(trainer.optimizer, trainer.names)
    arrays = {f"m/{name}": array for name, array in state["m"].items()}
    arrays.update({f"v/{name}": array for name, array in state["v"].items()})
    with open(folder / OPTIMIZER_FILE, "wb") as file:
        np.savez(file, **arrays)
    if trainer.head is not None:
        with open(folder / HEAD_FILE, "wb") as file:
            np.savez(file, **trainer.head_numpy())
    meta = {"format": FORMAT, "settings": trainer_settings(trainer), "has_head": trainer.head is not None,
            "step": trainer.step_count,
            "optimizer_step": state["step"], "scaler": trainer.scaler.state(),
            "dropout_rng": trainer.rng.bit_generator.state}
    (folder / TRAINER_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return folder


def _read_state(folder: Path, names) -> tuple[dict, dict]:
    """(ms_trainer.json's contents, {"m": {...}, "v": {...}, "step": int}), checked: both files
    present, the format known, a moment for every parameter with its shape."""
    for name in (TRAINER_FILE, OPTIMIZER_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"{folder} has no optimizer state ({name} is missing): it cannot be resumed "
                             f"(weights alone load with weights.load)")
    meta = json.loads((folder / TRAINER_FILE).read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / TRAINER_FILE} has format {meta.get('format')!r}, expected {FORMAT!r}")
    with np.load(folder / OPTIMIZER_FILE) as stored:
        arrays = dict(stored)
    moments = {"m": {}, "v": {}, "step": int(meta["optimizer_step"])}
    for name, shape in names.items():
        for kind in ("m", "v"):
            key = f"{kind}/{name}"
            if key not in arrays:
                raise ValueError(f"{folder / OPTIMIZER_FILE} has no {key!r}: it does not belong to these weights")
            if arrays[key].shape != shape:
                raise ValueError(f"{folder / OPTIMIZER_FILE}: {key!r} has shape {arrays[key].shape}, the parameter "
                                 f"has {shape}")
            moments[kind][name] = arrays[key]
    return meta, moments


def _restore(trainer, meta: dict, moments: dict) -> None:
    restore_optimizer_state(trainer.optimizer, trainer.names, moments)
    trainer.scaler.restore(meta["scaler"])
    trainer.step_count = int(meta["step"])
    if "dropout_rng" in meta:  # the next step draws the masks the saved Trainer would have drawn
        trainer.rng.bit_generator.state = meta["dropout_rng"]


def _shapes(trainer) -> dict:
    return {trainer.names[p.name]: tuple(p.shape) for p in trainer.optimizer.parameters}


def _read_head(folder: Path, meta: dict):
    if not meta.get("has_head"):
        return None
    if not (folder / HEAD_FILE).is_file():
        raise ValueError(f"{folder} was saved with a classifier head but {HEAD_FILE} is missing: it cannot be resumed")
    with np.load(folder / HEAD_FILE) as stored:
        return {"w": stored["w"], "b": stored["b"]}


def load_trainer(cls, folder, **overrides):
    """A new `cls` (Trainer) from `folder` with its saved settings, `overrides` applied."""
    import weights

    folder = Path(folder)
    config, params = weights.load(folder)
    if not (folder / TRAINER_FILE).is_file():
        _read_state(folder, {})  # raises: the missing-state error
    meta = json.loads((folder / TRAINER_FILE).read_text(encoding="utf-8"))
    fixed = sorted(set(overrides) & set(STATE_SETTINGS))
    if fixed:
        raise ValueError(f"{', '.join(fixed)} cannot change on resume: the saved loss-scaler state belongs to "
                         f"the saved setting")
    settings = {**meta.get("settings", {}), **overrides}
    settings["betas"] = tuple(settings["betas"])
    trainer = cls(config, params, head=_read_head(folder, meta), **settings)
    meta, moments = _read_state(folder, _shapes(trainer))
    _restore(trainer, meta, moments)
    return trainer


def restore_into(trainer, folder) -> None:
    """Load `folder`'s weights and state into an existing Trainer built for the same config."""
    import weights

    folder = Path(folder)
    config, params = weights.load(folder)
    if config != trainer.config:
        raise ValueError(f"{folder} holds a model of another config ({config}) than this Trainer's "
                         f"({trainer.config}): it cannot be resumed here")
    meta, moments = _read_state(folder, _shapes(trainer))
    saved_scale = tuple(meta["settings"][k] for k in STATE_SETTINGS)
    if saved_scale != tuple(trainer.loss_scale_setting):
        raise ValueError(f"{folder} was saved with loss_scale, initial_scale, scale_window = {saved_scale}, "
                         f"this Trainer has {tuple(trainer.loss_scale_setting)}")
    if meta.get("has_head", False) != (trainer.head is not None):
        raise ValueError(f"{folder} was saved {'with' if meta.get('has_head') else 'without'} a classifier head, "
                         f"this Trainer has {'one' if trainer.head is not None else 'none'}")
    flat = flatten_params(params)
    head = _read_head(folder, meta)
    if head is not None:
        flat.update({f"head.{key}": value for key, value in head.items()})
    for p in trainer.optimizer.parameters:
        overwrite(p, np.asarray(flat[trainer.names[p.name]], np.float32), ms.float32)
    _restore(trainer, meta, moments)
