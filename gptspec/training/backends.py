"""What the training loop needs from a backend, and the NumPy spec's implementation of it.

The loop (loop.py) is written once; a backend supplies the step for an objective (objectives.py:
the language model, or GPT-1's classifier for one of its tasks):

    backend.train_step(step, micro_batches) -> StepResult   one optimizer update (step = updates so far)
    backend.evaluate(valid, batch_rows) -> {"valid_loss": ..., ...}   the objective's held-out metrics
    backend.write_files(folder) / backend.read_files(folder)  weights (weights.save), the objective's
                                                            files (a head, labels), optimizer state
    backend.params_numpy() / head_numpy()                   the current weights (and head, or None)

Several micro-batches (--grad-accum) make one step: each micro-batch's loss is divided by the whole
batch's counts (objectives.sum_counts), so the step computes exactly the whole batch's mean loss.
Dropout masks of micro-batch k of step s: numpy.random.default_rng(ref_numpy.dropout_seed(seed, s,
k)), on both backends.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import ref_numpy

from ref_numpy.optim import StepResult

from .objectives import sum_counts

OPTIMIZER_FILE = "optimizer.npz"        # arrays of the optimizer state
OPTIMIZER_LAYOUT = "optimizer.json"     # its structure and scalars


@dataclass
class Hyper:
    """Optimizer and schedule settings shared by both backends (ref_numpy.lr_at, adamw_step)."""
    lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0
    schedule: str = "cosine"
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    dropout: float = 0.0
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def lr_at(self, step: int) -> float:
        return float(ref_numpy.lr_at(step, max_lr=self.lr, warmup_steps=self.warmup_steps,
                                     total_steps=self.total_steps, min_lr=self.min_lr, schedule=self.schedule))


def add(total, grads):
    """total + grads (nested dicts of arrays; total None: grads)."""
    if total is None:
        return grads
    summed = ref_numpy.flatten_params(total)
    for name, g in ref_numpy.flatten_params(grads).items():
        summed[name] += g
    return ref_numpy.unflatten_params(summed)


def check_optimizer_files(folder: Path) -> None:
    for name in (OPTIMIZER_FILE, OPTIMIZER_LAYOUT):
        if not (folder / name).is_file():
            raise ValueError(f"{folder} has no optimizer state ({name} is missing): it cannot be resumed")


class NumpyBackend:
    """Training by the spec itself: the objective's ref_numpy loss and gradients, clip_grad_norm,
    adamw_step, lr_at.  The classifier's head trains beside the model: one clip over both, and
    AdamW on both (element-wise, so two states with the same step count are one optimizer)."""
    name = "numpy"

    def __init__(self, config: ref_numpy.GPTConfig, params: dict, hyper: Hyper, objective, head=None,
                 dtype=np.float32):
        self.config, self.hyper, self.objective = config, hyper, objective
        self.params = ref_numpy.cast_params(params, np.dtype(dtype))
        self.head = None if head is None else {name: np.asarray(v, np.dtype(dtype)) for name, v in head.items()}
        self.optimizer = {"model": ref_numpy.adamw_init(self.params)}
        if self.head is not None:
            self.optimizer["head"] = ref_numpy.adamw_init(self.head)

    def batch_loss_and_grads(self, step: int, micro_batches) -> tuple[float, dict, dict | None]:
        """(loss, grads, head grads) of the whole batch: the micro-batches' shares summed."""
        counts = [self.objective.counts(micro) for micro in micro_batches]
        totals = sum_counts(counts)
        self.objective.check_totals(step, totals)
        loss, grads, head_grads = 0.0, None, None
        for k, micro in enumerate(micro_batches):
            share = self.objective.spec_loss_and_grads(
                self.config, self.params, self.head, micro, counts[k], totals, dropout=self.hyper.dropout,
                seed=ref_numpy.dropout_seed(self.hyper.seed, step, k))
            if share is not None:
                loss += share[0]
                grads = add(grads, share[1])
                head_grads = None if share[2] is None else add(head_grads, share[2])
        return loss, grads, head_grads

    def train_step(self, step: int, micro_batches) -> StepResult:
        loss, grads, head_grads = self.batch_loss_and_grads(step, micro_batches)
        h = self.hyper
        limit = h.max_grad_norm if h.max_grad_norm is not None else math.inf
        # One global norm over everything trained; a NaN or inf gradient is an error naming its tensor.
        if head_grads is None:
            grads, norm = ref_numpy.clip_grad_norm(grads, limit)
        else:
            both, norm = ref_numpy.clip_grad_norm({"model": grads, "head": head_grads}, limit)
            grads, head_grads = both["model"], both["head"]
        lr = h.lr_at(step)
        # in place: this backend owns its weights and moments (one copy of each, not two at the update)
        adamw = dict(lr=lr, betas=h.betas, eps=h.eps, weight_decay=h.weight_decay, inplace=True)
        self.params, self.optimizer["model"] = ref_numpy.adamw_step(self.params, grads, self.optimizer["model"], **adamw)
        if head_grads is not None:
            self.head, self.optimizer["head"] = ref_numpy.adamw_step(self.head, head_grads, self.optimizer["head"],
                                                                     **adamw)
        return StepResult(loss=loss, grad_norm=float(norm), lr=lr)

    def evaluate(self, valid, batch_rows: int) -> dict:
        return self.objective.evaluate(self, valid, batch_rows)

    def logits(self, inputs, attention_mask):
        """[B, T, V] LM logits with the current weights."""
        return ref_numpy.forward(self.config, self.params, inputs, attention_mask=attention_mask)[0]

    def task_logits(self, ids, positions, attention_mask):
        """The classifier's logits with the current weights (classify_backend.task_logits)."""
        from .classify_backend import task_logits

        return task_logits(self.objective.task, self.config, self.params, self.head, ids, positions, attention_mask)

    def params_numpy(self) -> dict:
        return self.params

    def head_numpy(self) -> dict | None:
        return self.head

    def write_files(self, folder: Path) -> None:
        import weights

        weights.save(self.params, self.config, folder, format="safetensors")
        self.objective.write_files(folder, self.head)
        # The language model's file holds the model's state alone (as before there was a head).
        state = self.optimizer if self.head is not None else self.optimizer["model"]
        save_tree(state, folder / OPTIMIZER_FILE, folder / OPTIMIZER_LAYOUT)

    def read_files(self, folder: Path) -> None:
        import weights

        if self.head is not None:
            _, params, head, _ = self.objective.check_resumable(folder, self.config)
        else:
            (config, params), head = weights.load(folder), None
            if config != self.config:
                raise ValueError(f"{folder} holds a model of another config ({config}) than this run's "
                                 f"({self.config})")
        check_optimizer_files(folder)
        state = load_tree(folder / OPTIMIZER_FILE, folder / OPTIMIZER_LAYOUT)
        # own, writable copies in this run's dtype (the update writes into them)
        dtype = ref_numpy.flatten_params(self.params)["wte"].dtype
        params = ref_numpy.cast_params(params, dtype)
        head = None if head is None else ref_numpy.cast_params(head, dtype)
        for part in (state,) if head is None else (state["model"], state["head"]):
            part["m"], part["v"] = ref_numpy.cast_params(part["m"], dtype), ref_numpy.cast_params(part["v"], dtype)
        self.params, self.head = params, head
        self.optimizer = state if head is not None else {"model": state}


# -- a nested structure of arrays and numbers <-> .npz + .json, bit for bit ------------------------
def save_tree(tree, arrays_path: Path, layout_path: Path) -> None:
    """Arrays go to an .npz under their path ('m/blocks/0/ln_1/g'); the nesting and the plain
    numbers (JSON keeps a float's every bit: it writes repr) go to the .json."""
    arrays: dict[str, np.ndarray] = {}

    def layout(node, path):
        if isinstance(node, dict):
            return {"dict": {str(k): layout(v, f"{path}/{k}".lstrip("/")) for k, v in node.items()}}
        if isinstance(node, (list, tuple)):
            kind = "list" if isinstance(node, list) else "tuple"
            return {kind: [layout(v, f"{path}/{i}".lstrip("/")) for i, v in enumerate(node)]}
        if isinstance(node, np.ndarray):
            arrays[path] = node
            return {"array": path}
        if isinstance(node, np.generic):
            return {"numpy": node.dtype.str, "value": node.item()}
        if node is None or isinstance(node, (bool, int, float, str)):
            return {"value": node}
        raise TypeError(f"cannot save a {type(node).__name__} in optimizer state at {path}")

    description = layout(tree, "")
    with open(arrays_path, "wb") as f:
        np.savez(f, **arrays)
    layout_path.write_text(json.dumps(description) + "\n", encoding="utf-8")


def load_tree(arrays_path: Path, layout_path: Path):
    description = json.loads(layout_path.read_text(encoding="utf-8"))
    with np.load(arrays_path, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}

    def build(node):
        if "dict" in node:
            return {k: build(v) for k, v in node["dict"].items()}
        if "list" in node:
            return [build(v) for v in node["list"]]
        if "tuple" in node:
            return tuple(build(v) for v in node["tuple"])
        if "array" in node:
            return arrays[node["array"]]
        if "numpy" in node:
            return np.dtype(node["numpy"]).type(node["value"])
        return node["value"]

    return build(description)
