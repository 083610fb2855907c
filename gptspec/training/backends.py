"""What the training loop needs from a backend, and the NumPy spec's implementation of it.

The loop (loop.py) is written once; a backend supplies the step, as `ref_numpy.numpy_step` does
for generation:

    backend.train_step(step, micro_batches) -> StepResult   one optimizer update (step = updates so far)
    backend.evaluate(valid, batch_rows) -> {"valid_loss": ..., "valid_perplexity": ...}
    backend.write_files(folder) / backend.read_files(folder)  weights (weights.save) + optimizer state
    backend.params_numpy() -> params dict                   the current weights

A micro-batch is (inputs [b, L], targets [b, L], attention_mask [b, L] or None). Several of them
(--grad-accum) make one step: each micro-batch's mean loss is weighted by its share of the step's
target tokens, so the step computes exactly the mean over the whole batch's targets.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import ref_numpy

from .data import IGNORE_INDEX, n_targets

OPTIMIZER_FILE = "optimizer.npz"        # arrays of the optimizer state
OPTIMIZER_LAYOUT = "optimizer.json"     # its structure and scalars
LOG_FLOAT_MAX = math.log(np.finfo(np.float64).max)     # exp of more overflows: perplexity inf


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    lr: float
    loss_scale: float | None = None     # AMP only
    skipped: bool = False               # AMP: non-finite gradients, update skipped


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


def token_loss_sum(logits_of, inputs, targets, attention_mask=None) -> tuple[float, int]:
    """(the cross-entropy summed over the batch's targets, their count): `logits_of(inputs,
    attention_mask)` is the backend's forward; the loss is the spec's.  No target: (0.0, 0)."""
    count = n_targets(targets)
    if count == 0:
        return 0.0, 0
    logits = logits_of(inputs, attention_mask)
    return float(ref_numpy.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)) * count, count


def add_scaled(total: dict | None, grads: dict, share: float) -> dict:
    """total + share x grads (nested params dicts; total None: share x grads), in the gradients'
    dtype: the micro-batches' gradients weighted by their shares of the batch."""
    flat = ref_numpy.flatten_params(grads)
    if total is None:
        return ref_numpy.unflatten_params({name: g * g.dtype.type(share) for name, g in flat.items()})
    summed = ref_numpy.flatten_params(total)
    for name, g in flat.items():
        summed[name] += g * g.dtype.type(share)
    return ref_numpy.unflatten_params(summed)


def clip(grads: dict, hyper: Hyper) -> tuple[dict, float]:
    """(grads, global norm): ref_numpy.clip_grad_norm at --max-grad-norm, or only the norm without
    clipping; a NaN or inf gradient is an error naming its tensor."""
    return ref_numpy.clip_grad_norm(grads, hyper.max_grad_norm if hyper.max_grad_norm is not None else math.inf)


def adamw(params: dict, grads: dict, state: dict, hyper: Hyper, lr: float) -> tuple[dict, dict]:
    """ref_numpy.adamw_step with the run's betas, eps and weight decay."""
    return ref_numpy.adamw_step(params, grads, state, lr=lr, betas=hyper.betas, eps=hyper.eps,
                                weight_decay=hyper.weight_decay)


def check_optimizer_files(folder: Path) -> None:
    for name in (OPTIMIZER_FILE, OPTIMIZER_LAYOUT):
        if not (folder / name).is_file():
            raise ValueError(f"{folder} has no optimizer state ({name} is missing): it cannot be resumed")


def lm_metrics(eval_loss, windows, batch_rows: int) -> dict:
    """Held-out loss (the mean over every target of `windows`, in batches of `batch_rows`) and
    perplexity exp(loss)."""
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_rows):
        loss_sum, n = eval_loss(*windows.rows(slice(start, start + batch_rows)))
        total, count = total + loss_sum, count + n
    loss = total / count if count else float("nan")
    return {"valid_loss": loss, "valid_perplexity": math.exp(loss) if loss < LOG_FLOAT_MAX else math.inf}


def dropout_seed(seed: int, step: int, micro: int) -> int:
    """The dropout masks' seed for one micro-batch: a function of the run's seed and the position
    only, so a resumed run draws the masks an uninterrupted one would (no RNG state to carry)."""
    return int(np.random.SeedSequence([seed, step, micro]).generate_state(1)[0])


class NumpyBackend:
    """Training by the spec itself: ref_numpy.loss_and_grads, clip_grad_norm, adamw_step, lr_at."""
    name = "numpy"

    def __init__(self, config: ref_numpy.GPTConfig, params: dict, hyper: Hyper, dtype=np.float32):
        self.config, self.hyper = config, hyper
        self.params = ref_numpy.cast_params(params, np.dtype(dtype))
        self.optimizer = ref_numpy.adamw_init(self.params)

    def batch_loss_and_grads(self, step: int, micro_batches) -> tuple[float, dict]:
        """(loss, grads) of the whole batch: the micro-batches' losses and gradients weighted by
        their shares of the batch's target tokens, i.e. the mean over every target of the batch."""
        total = sum(n_targets(targets) for _, targets, _ in micro_batches)
        if total == 0:
            raise ValueError(f"step {step + 1}: every target of the batch is ignored (padding or prompt)")
        loss, summed = 0.0, None
        for k, (inputs, targets, mask) in enumerate(micro_batches):
            share = n_targets(targets) / total
            if share == 0:
                continue
            micro_loss, grads = ref_numpy.loss_and_grads(
                self.config, self.params, inputs, targets, attention_mask=mask, ignore_index=IGNORE_INDEX,
                dropout=self.hyper.dropout, seed=dropout_seed(self.hyper.seed, step, k))
            loss += share * float(micro_loss)
            summed = add_scaled(summed, grads, share)
        return loss, summed

    def train_step(self, step: int, micro_batches) -> StepResult:
        loss, grads = self.batch_loss_and_grads(step, micro_batches)
        grads, norm = clip(grads, self.hyper)
        lr = self.hyper.lr_at(step)
        self.params, self.optimizer = adamw(self.params, grads, self.optimizer, self.hyper, lr)
        return StepResult(loss=loss, grad_norm=float(norm), lr=lr)

    def evaluate(self, windows, batch_rows: int) -> dict:
        return lm_metrics(self.eval_loss, windows, batch_rows)

    def eval_loss(self, inputs, targets, attention_mask=None) -> tuple[float, int]:
        return token_loss_sum(self._logits, inputs, targets, attention_mask)

    def _logits(self, inputs, attention_mask):
        return ref_numpy.forward(self.config, self.params, inputs, attention_mask=attention_mask)[0]

    def params_numpy(self) -> dict:
        return self.params

    def write_files(self, folder: Path) -> None:
        import weights

        weights.save(self.params, self.config, folder, format="safetensors")
        save_tree(self.optimizer, folder / OPTIMIZER_FILE, folder / OPTIMIZER_LAYOUT)

    def read_files(self, folder: Path) -> None:
        import weights

        config, params = weights.load(folder)
        if config != self.config:
            raise ValueError(f"{folder} holds a model of another config ({config}) than this run's ({self.config})")
        check_optimizer_files(folder)
        self.params = params
        self.optimizer = load_tree(folder / OPTIMIZER_FILE, folder / OPTIMIZER_LAYOUT)


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
