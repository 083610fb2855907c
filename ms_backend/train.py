"""Training in MindSpore: the spec's loss, gradients by autodiff, AdamW, mixed precision, loss scaling.

Read beside ref_numpy/train.py, loss.py and optim.py: the loss is the spec's cross_entropy, the
gradients are what ref_numpy.loss_and_grads writes out by hand (here `mindspore.value_and_grad`
derives them), the update is the spec's clip_grad_norm + adamw_step with lr_at's learning rate.

One training step, `Trainer.step` (one compiled graph in mode="graph", compiled once per input
shape; the same Python function run op by op in mode="pynative"):

    loss      = cross_entropy(logits, targets) / n_targets     float32, whatever the AMP level
    grads     = d (loss x S) / d params                        S = the loss scale (scaler.py)
    grads     = reduce_grads(grads) / S                        unscaled BEFORE anything reads them
    finite    = all_finite(grads)
    norm      = global_norm(grads)                             reported, and used for clipping
    if finite:  clip to max_grad_norm; AdamW with lr_at(step)  float32 master weights
    S         = adjust(S, finite)                              dynamic scaling: halve on overflow

A non-finite gradient skips the update (parameters, moments and the optimizer's update count
untouched, bit for bit) and the step reports skipped=True; without loss scaling (loss_scale=None)
it is an error, as ref_numpy.clip_grad_norm reports non-finite gradients.

Data parallel (ms_backend/distributed.py, under msrun): `n_targets` is the loss's normaliser and an
input of the step, so every rank divides by the *global* number of targets; `reduce_grads` is where
the gradient all-reduce goes (identity in one process; set it before the first step, it is compiled
into the graph).
"""
from __future__ import annotations

from typing import NamedTuple

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from ref_numpy import GPTConfig, check_dropout, check_targets, dropout_masks, flatten_params, prepare_inputs, \
    unflatten_params
from ref_numpy.classifier import check_positions
from ref_numpy.optim import check_adamw_hyperparameters
from ref_numpy.optim import clip_grad_norm as spec_clip_grad_norm
from ref_numpy.optim import lr_at
from ref_numpy.train import dropout_scale

from .amp import to
from .classifier import HEAD_NAMES, ClassifierHead, at_positions, check_lm_coef, classifier_batch, final_hidden
from .layers import dropout as apply_dropout
from .model import GPTModel, as_numpy, attention_mask_4d, flat_dropout_masks
from .optim import adamw_update, build_adamw, clip_coefficient, global_norm, optimizer_state, set_lr
from .scaler import LossScale, all_finite

IGNORE_INDEX = -100


def cross_entropy(logits, targets, *, ignore_index=IGNORE_INDEX, n_targets=None):
    """ref_numpy.cross_entropy on Tensors: the sum over the non-ignored targets of
    -log softmax(logits)[target], divided by `n_targets` (default: their number, i.e. the mean).

    logits [..., V] (any float dtype; computed in float32, as the spec upcasts), targets int
    [...] with ignore_index where there is nothing to predict.  The log-sum-exp is shifted by the
    row max, which is a constant for the gradient (d/d top of top + log sum exp(x - top) = 0)."""
    x = to(logits, ms.float32)
    x = x.reshape(-1, x.shape[-1])  # [N, V]
    t = targets.reshape(-1)
    keep = t != ignore_index
    safe = ops.where(keep, t, ops.zeros_like(t))  # any valid index; the row is masked below
    top = ops.stop_gradient(x.max(axis=-1, keepdims=True))
    lse = top[:, 0] + ops.log(ops.exp(x - top).sum(axis=-1))
    picked = ops.gather_elements(x, 1, safe[:, None])[:, 0]
    per_target = ops.where(keep, lse - picked, ops.zeros_like(lse))
    count = keep.astype(ms.float32).sum() if n_targets is None else n_targets
    return per_target.sum() / count


def check_hyperparameters(*, lr, warmup_steps, total_steps, min_lr, schedule, betas, eps, weight_decay,
                          max_grad_norm) -> dict:
    """The spec's own checks (same messages): adamw_step's on lr, betas, eps, weight_decay; lr_at's on
    the schedule (total_steps None: no decay, checked as a schedule that ends after the warmup);
    clip_grad_norm's on max_grad_norm (run on an empty set of gradients).  -> the settings."""
    check_adamw_hyperparameters(lr, betas, eps, weight_decay)
    schedule_total = warmup_steps + 1 if total_steps is None and isinstance(warmup_steps, int) else total_steps
    lr_at(0, max_lr=lr, warmup_steps=warmup_steps, total_steps=schedule_total, min_lr=min_lr, schedule=schedule)
    if max_grad_norm is not None:
        spec_clip_grad_norm({}, max_grad_norm)
    return dict(lr=float(lr), warmup_steps=warmup_steps, total_steps=total_steps, min_lr=float(min_lr),
                schedule=schedule, betas=(float(betas[0]), float(betas[1])), eps=float(eps),
                weight_decay=float(weight_decay), max_grad_norm=None if max_grad_norm is None else float(max_grad_norm))


class StepResult(NamedTuple):
    loss: float  # this step's loss, before its update
    grad_norm: float  # global norm of the unscaled gradients, before clipping (inf/nan on overflow)
    lr: float  # the learning rate of this step: ref_numpy.lr_at(step)
    loss_scale: float | None  # the scale this step's loss was multiplied by (None: no scaling)
    skipped: bool  # non-finite gradients: no update


class Trainer:
    """Trains a GPTModel from a ref_numpy config and params dict (see the module docstring).

    amp_level "O0".."O3" and dtype ("float16"; "bfloat16" where the device has it) as in
    inference (ms_backend.amp); mode "graph" or "pynative"; lr, warmup_steps, total_steps,
    min_lr, schedule: ref_numpy.lr_at (total_steps None: no decay after the warmup); betas, eps,
    weight_decay: ref_numpy.adamw_step (decay on >= 2-D tensors only); max_grad_norm:
    ref_numpy.clip_grad_norm (None: no clipping); loss_scale "dynamic" / a number >= 1 / None
    with initial_scale and scale_window (scaler.py).  head: a classifier head
    (ref_numpy.init_classifier) trained with the spec's combined loss classification + lm_coef x
    LM (classifier.py).

    dropout p in [0, 1) as in ref_numpy.train: the step draws no random numbers itself; the masks
    are NumPy draws (ref_numpy.dropout_masks, then with a head the classify tokens' mask, as
    ref_numpy.classifier_loss_and_grads) from this Trainer's numpy.random.default_rng(seed) --
    step k uses the generator's k-th draw -- fed to the compiled step as float32 inputs.  save()
    stores the generator's state, so a resumed run drops the same elements.

    recompute=True: MindSpore's `Cell.recompute()` on every block -- the backward is to run the
    block's forward again instead of keeping its activations.  The gradients are bit for bit the
    same.  Measured on CPU (MindSpore 2.10, benchmarks/NOTES.md) it saves nothing: the 124M step at
    4 x 128 peaked higher (10.3 GB against 8.9) and took ~2x longer, so it is off by default; it is
    here for devices whose memory it does reduce.  A memory option, not state: save() does not
    record it."""

    def __init__(self, config: GPTConfig, params: dict, *, amp_level="O0", dtype=None, mode="graph", lr=1e-3,
                 warmup_steps=0, total_steps=None, min_lr=0.0, schedule="cosine", betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0, max_grad_norm=None, loss_scale="dynamic", initial_scale=2.0 ** 16,
                 scale_window=1000, dropout=0.0, seed=None, head=None, lm_coef=0.5, recompute=False):
        if mode not in ("graph", "pynative"):
            raise ValueError(f"mode must be one of ('graph', 'pynative'), got {mode!r}")
        self.hyper = check_hyperparameters(lr=lr, warmup_steps=warmup_steps, total_steps=total_steps, min_lr=min_lr,
                                           schedule=schedule, betas=betas, eps=eps, weight_decay=weight_decay,
                                           max_grad_norm=max_grad_norm)
        self.dropout = check_dropout(dropout)
        if not isinstance(recompute, bool):
            raise ValueError(f"recompute must be True or False, got {recompute!r}")
        self.model = GPTModel(config, params, amp_level=amp_level, dtype=dtype)  # checks config, params, AMP
        self.recompute = recompute
        if recompute:  # keep each block's input only; its inner activations are recomputed in the backward
            for block in self.model.blocks:
                block.recompute()
        self.head = None if head is None else ClassifierHead(config, head)
        self.lm_coef = check_lm_coef(lm_coef)
        weights = self.model.trainable_params() + ([] if self.head is None else self.head.trainable_params())
        self.config, self.amp_level, self.dtype, self.mode = config, amp_level, dtype, mode
        self.seed = seed
        self.rng = np.random.default_rng(seed)  # the dropout masks' generator (saved by save())
        self.loss_scale_setting = (loss_scale, initial_scale, scale_window)
        self.scaler = LossScale(loss_scale, initial_scale, scale_window)
        self.optimizer = build_adamw(weights, lr=self.hyper["lr"], betas=self.hyper["betas"],
                                     eps=self.hyper["eps"], weight_decay=self.hyper["weight_decay"])
        self.names = {p.name: p.name for p in weights}  # Parameter name == params name ("head.w", "head.b")
        self.param_order = list(flatten_params(params))  # the Cells' order differs (GPT-1: attn before ln_1)
        self.step_count = 0  # updates attempted so far (skipped ones included): the lr_at step
        self.reduce_grads = lambda grads: grads  # data parallel: the all-reduce of the gradients
        self._value_and_grad = ms.value_and_grad(self._scaled_loss, None, self.optimizer.parameters, has_aux=True)
        run = ms.jit if mode == "graph" else (lambda f: f)
        self._train_step = run(self._train_step_fn)
        self._grads = run(self._grads_fn)
        self._classify = run(self._classify_fn)

    # -- the computation (compiled in graph mode) ----------------------------------------------

    def _loss(self, drops, ids, position_ids, mask, targets, n_targets, labels=None, positions=None, n_rows=None):
        """The LM loss of one batch: forward (the inference model's own run) + cross_entropy.  With
        a head: the classification loss (mean over n_rows) + lm_coef x this LM loss (targets are
        then the LM targets of the same rows, see classifier.classifier_batch).  drops: None (no
        dropout) or the dropout multipliers (see _dropout_masks)."""
        T = ids.shape[1]
        logits, _, intermediates = self.model.run(ids, position_ids, attention_mask_4d(T, T, mask), drops=drops)
        if self.head is None:
            return cross_entropy(logits, targets, n_targets=n_targets)
        h = at_positions(final_hidden(self.model, intermediates), positions)  # [R, C]
        if drops is not None:  # the head computes in float32, its dropout too
            h = apply_dropout(h, drops[-1], ms.float32)
        clf_logits = self.head(h)
        loss = cross_entropy(clf_logits, labels, n_targets=n_rows)
        if self.lm_coef > 0:
            loss = loss + self.lm_coef * cross_entropy(logits, targets, n_targets=n_targets)
        return loss

    def _scaled_loss(self, *batch):
        loss = self._loss(*batch)
        return self.scaler.scale(loss), loss

    def _grads_fn(self, drops, ids, position_ids, mask, targets, n_targets, labels=None, positions=None,
                  n_rows=None):
        (_, loss), grads = self._value_and_grad(drops, ids, position_ids, mask, targets, n_targets, labels,
                                                positions, n_rows)
        return loss, self.scaler.unscale(self.reduce_grads(grads))

    def _train_step_fn(self, lr, drops, ids, position_ids, mask, targets, n_targets, labels=None, positions=None,
                       n_rows=None):
        loss, grads = self._grads_fn(drops, ids, position_ids, mask, targets, n_targets, labels, positions, n_rows)
        finite = all_finite(grads)
        norm = global_norm(grads)
        if finite:
            set_lr(self.optimizer, lr)
            adamw_update(self.optimizer, grads, clip_coefficient(self.hyper["max_grad_norm"], norm))
        self.scaler.adjust(finite)
        return loss, norm, finite

    def _classify_fn(self, ids, position_ids, mask, positions):
        T = ids.shape[1]
        _, _, intermediates = self.model.run(ids, position_ids, attention_mask_4d(T, T, mask))
        return self.head(at_positions(final_hidden(self.model, intermediates), positions))

    # -- NumPy in, NumPy out -------------------------------------------------------------------

    def _batch(self, inputs, targets, attention_mask, n_targets, clf_positions=None):
        """The spec's checks, then the step's Tensors: ids, position ids, mask (all ones when None:
        the same positions and attention as no mask, and one compiled graph per shape), targets,
        the normaliser (default: the number of non-ignored targets); with a head also labels
        (`targets` then), classify positions and the number of rows."""
        if self.head is not None:
            if clf_positions is None:
                raise ValueError("clf_positions is required with a classifier head: one classify token per row")
            ids, positions, mask, lm_targets, count, labels, clf = classifier_batch(
                self.config, self.head, inputs, targets, clf_positions, attention_mask, self.lm_coef, IGNORE_INDEX)
            return (Tensor(ids), Tensor(positions), Tensor(mask), Tensor(lm_targets),
                    Tensor(float(max(count, 1) if n_targets is None else n_targets), ms.float32), Tensor(labels),
                    Tensor(clf), Tensor(float(len(labels)), ms.float32))
        if clf_positions is not None:
            raise ValueError("clf_positions is only meaningful with a classifier head (Trainer(head=...))")
        prepared = prepare_inputs(self.config, inputs, attention_mask=attention_mask)
        ids = prepared.ids
        targets = check_targets(targets, ids.shape, self.config.n_vocab, IGNORE_INDEX)
        mask = np.ones_like(ids) if prepared.attention_mask is None else prepared.attention_mask
        count = int(np.count_nonzero(targets != IGNORE_INDEX)) if n_targets is None else n_targets
        if not (isinstance(count, (int, np.integer)) and count >= 1):
            raise ValueError(f"n_targets must be a positive integer (the number of targets the loss is "
                             f"averaged over), got {n_targets!r}")
        return (Tensor(ids), Tensor(prepared.position_ids), Tensor(mask), Tensor(targets),
                Tensor(float(count), ms.float32))

    def _dropout_masks(self, batch, rng):
        """The dropout multipliers of one step on `batch` (_batch's Tensors), drawn from `rng`:
        ref_numpy.dropout_masks (float32), then with a head the classify tokens' [R, C], in the
        spec's order; a mutable tuple of Tensors for the step (one graph for every draw).  None
        when dropout == 0 (no draw, no dropout op in the graph)."""
        if self.dropout == 0:
            return None
        n_rows, n_tokens = batch[0].shape
        masks = flat_dropout_masks(dropout_masks(self.config, n_rows, n_tokens, self.dropout, rng, np.float32))
        if self.head is not None:
            masks += (dropout_scale((n_rows, self.config.n_embd), self.dropout, rng, np.float32),)
        return ms.mutable(tuple(Tensor(m) for m in masks))

    def lr_at(self, step: int) -> float:
        """The learning rate of update `step` (0-based): ref_numpy.lr_at with this Trainer's schedule."""
        h = self.hyper
        total = h["total_steps"]
        if total is None:  # no decay: the warmup, then max_lr for ever (lr_at at the warmup's end)
            step, total = min(step, h["warmup_steps"]), h["warmup_steps"] + 1
        return float(lr_at(step, max_lr=h["lr"], warmup_steps=h["warmup_steps"], total_steps=total,
                           min_lr=h["min_lr"], schedule=h["schedule"]))

    def step(self, inputs, targets, attention_mask=None, *, clf_positions=None, n_targets=None) -> StepResult:
        """One update on a batch: inputs, targets int [B, T] (ignore_index -100 where nothing is
        predicted), attention_mask 0/1 [B, T] or None.  n_targets: the loss's normaliser (default
        the batch's number of targets; data parallel passes the global count).
        With a head: inputs are whole rows ids [B, T], targets the labels [B], clf_positions [B]
        each row's classify token (ref_numpy.classifier_loss_and_grads's arguments)."""
        batch = self._batch(inputs, targets, attention_mask, n_targets, clf_positions)
        drops = self._dropout_masks(batch, self.rng)  # after the checks: bad input draws nothing
        lr = self.lr_at(self.step_count)
        scale = self.scaler.value
        loss, norm, finite = self._train_step(Tensor(lr, ms.float32), drops, *batch)
        self.step_count += 1
        skipped = not bool(finite.asnumpy())
        if skipped and self.scaler.kind == "none":
            raise FloatingPointError(f"step {self.step_count - 1}: the gradients are not finite (global norm "
                                     f"{float(norm.asnumpy())}) and there is no loss scaling to recover; "
                                     f"the update was skipped.  Lower lr, clip (max_grad_norm) or check the data")
        return StepResult(float(loss.asnumpy()), float(norm.asnumpy()), lr, scale, skipped)

    def grads_numpy(self, inputs, targets, attention_mask=None, *, clf_positions=None, n_targets=None, seed=None):
        """(loss, grads): the unscaled float32 gradients of the loss at the current parameters, in
        the params dict's structure (as ref_numpy.loss_and_grads); nothing is updated.  With a head:
        (loss, grads, head_grads), as ref_numpy.classifier_loss_and_grads.

        With dropout > 0, seed is required: the masks are those of numpy.random.default_rng(seed),
        as ref_numpy.loss_and_grads(..., dropout=p, seed=seed) draws them (the Trainer's own
        generator, which step() uses, is not touched)."""
        if self.dropout > 0 and seed is None:
            raise ValueError(f"seed is required when the Trainer has dropout > 0 (p={self.dropout}): grads_numpy "
                             f"uses the masks of numpy.random.default_rng(seed), as ref_numpy.loss_and_grads does")
        batch = self._batch(inputs, targets, attention_mask, n_targets, clf_positions)
        drops = self._dropout_masks(batch, np.random.default_rng(seed))
        loss, grads = self._grads(drops, *batch)
        flat = {self.names[p.name]: g.asnumpy() for p, g in zip(self.optimizer.parameters, grads)}
        if self.head is None:
            return float(loss.asnumpy()), self._in_params_order(flat)
        return float(loss.asnumpy()), self._in_params_order(flat), {"w": flat[HEAD_NAMES[0]], "b": flat[HEAD_NAMES[1]]}

    def classifier_logits_numpy(self, ids, clf_positions, attention_mask=None) -> np.ndarray:
        """[B, n_classes] float32: the head's logits at each row's classify token with the current
        weights, no dropout (ref_numpy.classifier_logits's arguments; held-out evaluation)."""
        if self.head is None:
            raise ValueError("this Trainer has no classifier head (Trainer(head=...)): it has no classifier logits")
        inputs = prepare_inputs(self.config, ids, attention_mask=attention_mask)
        positions = check_positions(clf_positions, inputs.attention_mask, *inputs.ids.shape)
        mask = np.ones_like(inputs.ids) if inputs.attention_mask is None else inputs.attention_mask
        logits = self._classify(Tensor(inputs.ids), Tensor(inputs.position_ids), Tensor(mask), Tensor(positions))
        return logits.asnumpy()

    def head_numpy(self) -> dict | None:
        """The classifier head's current {"w", "b"} (None without a head)."""
        return None if self.head is None else self.head.numpy()

    def params_numpy(self) -> dict:
        """The current (float32 master) parameters as the spec's params dict."""
        # copies: asnumpy() of a Parameter may share its memory, which the next update overwrites
        return self._in_params_order({self.names[p.name]: np.array(as_numpy(p))
                                      for p in self.model.trainable_params()})

    def optimizer_state_numpy(self) -> dict:
        """AdamW's state as ref_numpy.adamw_init/adamw_step hold it: {"step": updates applied so far
        (skipped steps excluded), "m": first moments, "v": second moments} (params' structure)."""
        state = optimizer_state(self.optimizer, self.names)
        return {"step": state["step"], "m": self._in_params_order(state["m"]), "v": self._in_params_order(state["v"])}

    def _in_params_order(self, flat: dict) -> dict:
        return unflatten_params({name: flat[name] for name in self.param_order})

    @property
    def loss_scale(self) -> float | None:
        """The scale the next step will use (None without loss scaling)."""
        return self.scaler.value

    # -- checkpoints: train_state.py -----------------------------------------------------------

    def save(self, folder):
        """Write weights (weights.save, safetensors) and the optimizer, scaler and step state."""
        from .train_state import save_trainer
        return save_trainer(self, folder)

    @classmethod
    def load(cls, folder, **overrides) -> "Trainer":
        """A Trainer resuming from `folder` (written by save) with the saved settings; `overrides`
        replace settings that do not change the state (e.g. mode, total_steps)."""
        from .train_state import load_trainer
        return load_trainer(cls, folder, **overrides)

    def resume(self, folder) -> None:
        """Load `folder`'s weights and optimizer state into this Trainer (its config must match)."""
        from .train_state import restore_into
        restore_into(self, folder)
