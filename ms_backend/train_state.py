"""Saving and resuming a Trainer: the weights through weights.save, plus the training state.

    DIR/config.json, model.safetensors   the float32 master weights (weights.save, "safetensors"):
                                         any gptspec tool, and transformers, load them
    DIR/ms_trainer.json                  the Trainer's settings (the dropout seed among them), its
                                         objective, its step count, the optimizer's update count
                                         and the loss scaler's state
    DIR/ms_optimizer.npz                 AdamW's moments: m/<name> and v/<name> per parameter
    DIR/ms_head.npz                      the classifier head's w and b (fine-tuning only)

Everything is stored bit for bit (float32 arrays; JSON writes a float's repr), so a resumed Trainer
continues exactly as the saved one would have (the dropout masks depend on the seed and the step
count only, ref_numpy.dropout_seed).
"""
from __future__ import annotations

import json
from pathlib import Path

import mindspore as ms
import numpy as np

from ref_numpy import flatten_params

from .device import overwrite
from .objectives import Classifier
from .optim import optimizer_state, restore_optimizer_state

TRAINER_FILE = "ms_trainer.json"
OPTIMIZER_FILE = "ms_optimizer.npz"
HEAD_FILE = "ms_head.npz"
FORMAT = "gptspec-ms-trainer-2"     # 1: dropout from a saved generator state, the head as a flag
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
                scale_window=scale_window, dropout=trainer.dropout, seed=trainer.seed)


def objective_description(objective) -> dict:
    """What a checkpoint records of the objective (the head's values go to HEAD_FILE)."""
    if isinstance(objective, Classifier):
        return {"name": "classifier", "task": objective.task, "lm_coef": objective.lm_coef}
    return {"name": "lm"}


def save_trainer(trainer, folder) -> Path:
    import weights

    folder = weights.save(trainer.params_numpy(), trainer.config, folder, format="safetensors")
    state = optimizer_state(trainer.optimizer)
    arrays = {f"m/{name}": array for name, array in state["m"].items()}
    arrays.update({f"v/{name}": array for name, array in state["v"].items()})
    with open(folder / OPTIMIZER_FILE, "wb") as file:
        np.savez(file, **arrays)
    if trainer.head_numpy() is not None:
        with open(folder / HEAD_FILE, "wb") as file:
            np.savez(file, **trainer.head_numpy())
    meta = {"format": FORMAT, "settings": trainer_settings(trainer),
            "objective": objective_description(trainer.objective), "step": trainer.step_count,
            "optimizer_step": state["step"], "scaler": trainer.scaler.state()}
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
        raise ValueError(f"{folder / TRAINER_FILE} has format {meta.get('format')!r}, expected {FORMAT!r} (a "
                         f"checkpoint of an earlier gptspec: resume it with that version, or start a new run "
                         f"from its weights)")
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
    restore_optimizer_state(trainer.optimizer, moments)
    trainer.scaler.restore(meta["scaler"])
    trainer.step_count = int(meta["step"])


def _shapes(trainer) -> dict:
    return {p.name: tuple(p.shape) for p in trainer.optimizer.parameters}


def _read_head(folder: Path) -> dict:
    if not (folder / HEAD_FILE).is_file():
        raise ValueError(f"{folder} was saved with a classifier head but {HEAD_FILE} is missing: it cannot be resumed")
    with np.load(folder / HEAD_FILE) as stored:
        return {"w": stored["w"], "b": stored["b"]}


def _saved_objective(folder: Path, meta: dict):
    """The objective `folder` was trained on, with its saved head."""
    described = meta["objective"]
    if described["name"] == "classifier":
        return Classifier(_read_head(folder), task=described["task"], lm_coef=described["lm_coef"])
    return None


def load_trainer(cls, folder, **overrides):
    """A new `cls` (Trainer) from `folder` with its saved settings, `overrides` applied."""
    import weights

    folder = Path(folder)
    config, params = weights.load(folder)
    _read_state(folder, {})  # the files' presence and format, before anything else reads them
    meta = json.loads((folder / TRAINER_FILE).read_text(encoding="utf-8"))
    fixed = sorted(set(overrides) & set(STATE_SETTINGS))
    if fixed:
        raise ValueError(f"{', '.join(fixed)} cannot change on resume: the saved loss-scaler state belongs to "
                         f"the saved setting")
    settings = {**meta.get("settings", {}), **overrides}
    settings["betas"] = tuple(settings["betas"])
    trainer = cls(config, params, objective=_saved_objective(folder, meta), **settings)
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
    meta, _ = _read_state(folder, {})  # the files and their format, before what they hold
    saved_scale = tuple(meta["settings"][k] for k in STATE_SETTINGS)
    if saved_scale != tuple(trainer.loss_scale_setting):
        raise ValueError(f"{folder} was saved with loss_scale, initial_scale, scale_window = {saved_scale}, "
                         f"this Trainer has {tuple(trainer.loss_scale_setting)}")
    saved, mine = meta["objective"], objective_description(trainer.objective)
    if saved != mine:
        raise ValueError(f"{folder} was trained on the objective {saved}, this Trainer's is {mine}")
    meta, moments = _read_state(folder, _shapes(trainer))
    flat = flatten_params(params)
    if saved["name"] == "classifier":
        flat.update({f"head.{key}": value for key, value in _read_head(folder).items()})
    for p in trainer.optimizer.parameters:
        overwrite(p, np.asarray(flat[p.name], np.float32), ms.float32)
    _restore(trainer, meta, moments)
