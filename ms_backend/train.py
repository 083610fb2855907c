"""Training in MindSpore: the spec's loss, gradients by autodiff, AdamW, mixed precision, loss scaling.

Read beside ref_numpy/train.py, loss.py and optim.py: the loss is the spec's cross_entropy, the
gradients are what ref_numpy.loss_and_grads writes out by hand (here `mindspore.value_and_grad`
derives them), the update is the spec's clip_grad_norm + adamw_step with lr_at's learning rate.

One update, `Trainer.step` (one compiled graph in mode="graph", compiled once per input shape; the
same Python function run op by op in mode="pynative"):

    loss      = objective.loss(model, batch) / totals          float32, whatever the AMP level
    grads     = d (loss x S) / d params                        S = the loss scale (scaler.py)
    grads     = reduce_grads(grads) / S                        unscaled BEFORE anything reads them
    finite    = all_finite(grads)
    norm      = global_norm(grads)                             reported, and used for clipping
    if finite:  clip to max_grad_norm; AdamW with lr_at(step)  float32 master weights
    S         = adjust(S, finite)                              dynamic scaling: halve on overflow

The objective (objectives.py) is the spec's LM loss or GPT-1's fine-tuning loss; `totals` are the
counts it averages over (targets, examples), inputs of the step.  With micro-batches
(`accumulate_step`, the CLI's --grad-accum) each micro-batch's loss is divided by the WHOLE batch's
totals and its scaled gradients are added to a running sum on the device (one compiled graph); the
update (a second graph) reads the sum: the same update as one big batch, with one micro-batch's
activations alive at a time.

A non-finite gradient skips the update (parameters, moments and the optimizer's update count
untouched, bit for bit) and the step reports skipped=True; without loss scaling (loss_scale=None)
it is an error, as ref_numpy.clip_grad_norm reports non-finite gradients.

Data parallel (ms_backend/distributed.py, under msrun): every rank divides by the *global* totals;
`reduce_grads` is where the gradient all-reduce goes (identity in one process; set it before the
first step, it is compiled into the graph).
"""
from __future__ import annotations

from typing import NamedTuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, ops

from ref_numpy import GPTConfig, check_dropout, dropout_masks, dropout_seed, flatten_params, unflatten_params
from ref_numpy.optim import check_adamw_hyperparameters
from ref_numpy.optim import clip_grad_norm as spec_clip_grad_norm
from ref_numpy.optim import StepResult, lr_at
from ref_numpy.train import dropout_scale

from .blockwise import BlockwiseGradients
from .classifier import HEAD_NAMES
from .model import GPTModel, as_numpy
from .objectives import Classifier, LanguageModel, as_tensors, count_tensors, sum_counts
from .optim import adamw_update, build_adamw, clip_coefficient, global_norm, optimizer_state, set_lr
from .scaler import LossScale, all_finite


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


class Gradients(NamedTuple):
    loss: float  # the objective's loss at the current parameters
    grads: dict  # its float32 gradients, in the params dict's structure
    head_grads: dict | None  # the classifier head's {"w", "b"} (None for the language model)


def fresh_seed() -> int:
    """A random seed for a Trainer given none (its dropout masks then differ run to run)."""
    return int(np.random.SeedSequence().entropy % 2 ** 63)


class Trainer:
    """Trains a GPTModel from a ref_numpy config and params dict on an objective (see the module
    docstring).

    objective: objectives.LanguageModel() (the default) or objectives.Classifier(head, task, lm_coef)
    (GPT-1's fine-tuning, its head trained beside the model).  amp_level "O0".."O3" and dtype
    ("float16"; "bfloat16" where the device has it) as in inference (ms_backend.amp); mode "graph" or
    "pynative"; lr, warmup_steps, total_steps, min_lr, schedule: ref_numpy.lr_at (total_steps None:
    no decay after the warmup); betas, eps, weight_decay: ref_numpy.adamw_step (decay on >= 2-D
    tensors only); max_grad_norm: ref_numpy.clip_grad_norm (None: no clipping); loss_scale "dynamic"
    / a number >= 1 / None with initial_scale and scale_window (scaler.py).

    dropout p in [0, 1) as in ref_numpy.train: the step draws no random numbers itself; the masks
    of micro-batch k of update s are NumPy draws (ref_numpy.dropout_masks, then the objective's
    extra masks, in the spec's order) from numpy.random.default_rng(ref_numpy.dropout_seed(seed, s,
    k)) -- those of the NumPy backend's micro-batch k -- fed to the compiled step as float32 inputs.
    They depend on (seed, s, k) only, so a resumed Trainer drops what an uninterrupted one would.
    seed None: a fresh random seed, kept (save() stores it).

    recompute=True: block-wise recomputation (blockwise.py): each micro-batch's gradients are
    computed a block at a time, keeping only the blocks' inputs, each block's forward run again in
    its backward; they are summed on the device as --grad-accum's are, then one update.  The same
    gradients up to float32 rounding; the activations of one block alive at a time instead of all
    of them, for a second forward pass and an update run op by op (124M, 4 x 128, CPU: 1.2x
    PyTorch's peak memory instead of 2.3x, 2x the one-graph step's time; benchmarks/NOTES.md).  A
    memory option, not state: save() does not record it."""

    def __init__(self, config: GPTConfig, params: dict, *, objective=None, amp_level="O0", dtype=None, mode="graph",
                 lr=1e-3, warmup_steps=0, total_steps=None, min_lr=0.0, schedule="cosine", betas=(0.9, 0.999),
                 eps=1e-8, weight_decay=0.0, max_grad_norm=None, loss_scale="dynamic", initial_scale=2.0 ** 16,
                 scale_window=1000, dropout=0.0, seed=None, recompute=False):
        if mode not in ("graph", "pynative"):
            raise ValueError(f"mode must be one of ('graph', 'pynative'), got {mode!r}")
        self.hyper = check_hyperparameters(lr=lr, warmup_steps=warmup_steps, total_steps=total_steps, min_lr=min_lr,
                                           schedule=schedule, betas=betas, eps=eps, weight_decay=weight_decay,
                                           max_grad_norm=max_grad_norm)
        self.dropout = check_dropout(dropout)
        if not isinstance(recompute, bool):
            raise ValueError(f"recompute must be True or False, got {recompute!r}")
        if not isinstance(objective, (type(None), LanguageModel, Classifier)):
            raise ValueError(f"objective must be objectives.LanguageModel() or objectives.Classifier(head, task, "
                             f"lm_coef), got {objective!r}")
        self.model = GPTModel(config, params, amp_level=amp_level, dtype=dtype)  # checks config, params, AMP
        self.objective = LanguageModel() if objective is None else objective.bind(config)
        self.recompute = recompute
        weights = self.model.trainable_params() + [p for cell in self.objective.cells for p in cell.trainable_params()]
        self.config, self.amp_level, self.dtype, self.mode = config, amp_level, dtype, mode
        self.seed = fresh_seed() if seed is None else seed
        dropout_seed(self.seed, 0, 0)  # checks the seed
        self.loss_scale_setting = (loss_scale, initial_scale, scale_window)
        self.scaler = LossScale(loss_scale, initial_scale, scale_window)
        self.optimizer = build_adamw(weights, lr=self.hyper["lr"], betas=self.hyper["betas"],
                                     eps=self.hyper["eps"], weight_decay=self.hyper["weight_decay"])
        self.param_order = list(flatten_params(params))  # the Cells' order differs (GPT-1: attn before ln_1)
        self.step_count = 0  # updates attempted so far (skipped ones included): the lr_at step
        self.reduce_grads = lambda grads: grads  # data parallel: the all-reduce of the gradients
        self._summed = None  # --grad-accum, recompute: the gradients, summed (see _sums)
        self._blockwise = None  # recompute: BlockwiseGradients, whose template takes any block's weights
        if recompute:
            self._blockwise = BlockwiseGradients(self.model, self.objective, self.scaler, self._sums(), mode,
                                                 params["blocks"][0])
        self._value_and_grad = ms.value_and_grad(self._scaled_loss, None, self.optimizer.parameters, has_aux=True)
        run = ms.jit if mode == "graph" else (lambda f: f)
        self._train_step = run(self._train_step_fn)
        self._accumulate = run(self._accumulate_fn)
        # recompute: the update op by op -- a compiled update keeps a workspace of its own (~0.9 GB at
        # 124M on CPU) beside the sums; op by op its temporaries live one parameter at a time.
        self._apply = self._apply_fn if recompute else run(self._apply_fn)
        self._grads = run(self._grads_fn)
        self._read_summed = run(self._read_summed_fn)
        self._logits = run(self._logits_fn)

    # -- the computation (compiled in graph mode) ----------------------------------------------

    def _scaled_loss(self, drops, batch, totals):
        loss = self.objective.loss(self.model, drops, batch, totals)
        return self.scaler.scale(loss), loss

    def _grads_fn(self, drops, batch, totals):
        """(this micro-batch's share of the loss, the unscaled gradients, all-reduced over the ranks)."""
        (_, loss), grads = self._value_and_grad(drops, batch, totals)
        return loss, self.scaler.unscale(self.reduce_grads(grads))

    def _update(self, lr, grads):
        """grads (unscaled, reduced) -> the update: finite check, norm, clip, AdamW, scaler."""
        finite = all_finite(grads)
        norm = global_norm(grads)
        if finite:
            set_lr(self.optimizer, lr)
            adamw_update(self.optimizer, grads, clip_coefficient(self.hyper["max_grad_norm"], norm))
        self.scaler.adjust(finite)
        return norm, finite

    def _train_step_fn(self, lr, drops, batch, totals):
        """One micro-batch is the whole batch: gradients and update in one graph, no sum kept."""
        (_, loss), grads = self._value_and_grad(drops, batch, totals)
        norm, finite = self._update(lr, self.scaler.unscale(self.reduce_grads(grads)))
        return loss, norm, finite

    def _accumulate_fn(self, drops, batch, totals):
        """--grad-accum: add one micro-batch's (scaled) gradients to the running sum, on the device."""
        (_, loss), grads = self._value_and_grad(drops, batch, totals)
        previous = loss
        for summed, g in zip(self._summed, grads):
            previous = ops.assign_add(summed, ops.depend(g, previous))
        return ops.depend(loss, previous)

    def _apply_fn(self, lr):
        """--grad-accum: the update from the summed gradients, then the sum set back to zero."""
        grads = self.scaler.unscale(self.reduce_grads(tuple(self._summed)))
        norm, finite = self._update(lr, grads)
        done = norm
        for summed in self._summed:
            done = ops.assign(summed, ops.depend(ops.zeros_like(summed), done))
        return ops.depend(norm, done), finite

    def _read_summed_fn(self):
        return self.scaler.unscale(self.reduce_grads(tuple(self._summed)))

    def _logits_fn(self, batch):
        return self.objective.logits(self.model, batch)

    # -- NumPy in, NumPy out -------------------------------------------------------------------

    def arrays(self, *batch, **named) -> dict:
        """One (micro-)batch -- the objective's arguments (objectives.py) -- as checked NumPy arrays."""
        return self.objective.arrays(self.config, *batch, **named)

    def _dropout_masks(self, arrays: dict, rng, placement=None):
        """The dropout multipliers of one micro-batch, drawn from `rng`: ref_numpy.dropout_masks
        (float32), then the objective's extra masks (the classifier's h [R, C]), in the spec's
        order, as a named structure of Tensors (mutable: one graph for every draw).  None when
        dropout == 0 (no draw, no dropout op in the graph).

        placement (first example, examples of the whole micro-batch): this micro-batch is a part of
        a larger one (data parallel): draw the whole micro-batch's masks and keep this part's rows,
        so the ranks together drop what one process would."""
        if self.dropout == 0:
            return None
        n_rows, n_tokens = arrays["ids"].shape
        rows = None
        if placement is not None:
            first, global_examples = placement
            rows = self.objective.row_index(arrays, first, global_examples)
            n_rows = n_rows * global_examples // self.objective.n_examples(arrays)
        masks = dropout_masks(self.config, n_rows, n_tokens, self.dropout, rng, np.float32)
        for name in self.objective.extra_masks:  # drawn after the model's, as the spec does
            masks[name] = dropout_scale((n_rows, self.config.n_embd), self.dropout, rng, np.float32)

        def tensors(node):
            if isinstance(node, dict):
                return {key: tensors(value) for key, value in node.items()}
            if isinstance(node, list):
                return tuple(tensors(value) for value in node)
            return Tensor(node if rows is None else node[rows])

        return ms.mutable(tensors(masks))

    def lr_at(self, step: int) -> float:
        """The learning rate of update `step` (0-based): ref_numpy.lr_at with this Trainer's schedule."""
        h = self.hyper
        total = h["total_steps"]
        if total is None:  # no decay: the warmup, then max_lr for ever (lr_at at the warmup's end)
            step, total = min(step, h["warmup_steps"]), h["warmup_steps"] + 1
        return float(lr_at(step, max_lr=h["lr"], warmup_steps=h["warmup_steps"], total_steps=total,
                           min_lr=h["min_lr"], schedule=h["schedule"]))

    def step(self, *batch, **named) -> StepResult:
        """One update on one batch: the objective's arguments (objectives.py), e.g. inputs, targets
        int [B, T] (IGNORE_INDEX where nothing is predicted), attention_mask 0/1 [B, T] or None."""
        return self.update([self.arrays(*batch, **named)])

    def accumulate_step(self, micro_batches) -> StepResult:
        """One update on a batch given as micro-batches (each a tuple of the objective's arguments):
        their gradients are summed on the device, each micro-batch's loss normalised by the whole
        batch's counts -- the same update as one batch of all their rows, with the activations of
        one micro-batch at a time."""
        return self.update([self.arrays(*micro) for micro in micro_batches])

    def update(self, micro_arrays: list, totals: dict | None = None, placements=None) -> StepResult:
        """One update from checked micro-batches (self.arrays).  totals: the counts the loss is a mean
        over (default: these micro-batches'; data parallel passes every rank's); placements: per
        micro-batch (first example, global examples) for its dropout rows (data parallel)."""
        totals = self._totals(micro_arrays, totals)
        placements = placements or [None] * len(micro_arrays)
        lr = self.lr_at(self.step_count)
        scale = self.scaler.value
        step_totals = count_tensors(totals)

        def masks(k):  # micro-batch k's dropout masks, drawn when it runs
            rng = np.random.default_rng(dropout_seed(self.seed, self.step_count, k))
            return self._dropout_masks(micro_arrays[k], rng, placements[k])

        if len(micro_arrays) == 1 and not self.recompute:
            loss, norm, finite = self._train_step(Tensor(lr, ms.float32), masks(0), as_tensors(micro_arrays[0]),
                                                  step_totals)
            loss = float(loss.asnumpy())
        else:
            accumulate = self._accumulate_function()
            loss = sum(float(accumulate(masks(k), as_tensors(arrays), step_totals).asnumpy())
                       for k, arrays in enumerate(micro_arrays))
            norm, finite = self._apply(Tensor(lr, ms.float32))
        self.step_count += 1
        skipped = not bool(finite.asnumpy())
        if skipped and self.scaler.kind == "none":
            raise FloatingPointError(f"step {self.step_count - 1}: the gradients are not finite (global norm "
                                     f"{float(norm.asnumpy())}) and there is no loss scaling to recover; "
                                     f"the update was skipped.  Lower lr, clip (max_grad_norm) or check the data")
        return StepResult(loss, float(norm.asnumpy()), lr, scale, skipped)

    def _sums(self) -> dict:
        """{parameter name: its float32 gradient sum}, made at the first use (K = 1 without recompute
        never needs them: 0.5 GB at 124M)."""
        if self._summed is None:
            self._summed = ParameterTuple(
                Parameter(ops.zeros(p.shape, ms.float32), name=f"summed_grad.{p.name}", requires_grad=False)
                for p in self.optimizer.parameters)
        return {p.name: s for p, s in zip(self.optimizer.parameters, self._summed)}

    def _accumulate_function(self):
        """What adds a micro-batch's scaled gradients to the sums: one graph, or with recompute block
        by block (BlockwiseGradients)."""
        if self.recompute:
            return self._blockwise.accumulate
        self._sums()
        return self._accumulate

    def _take_summed(self) -> list:
        """The summed gradients, unscaled and reduced, as NumPy copies; the sums back to zero."""
        grads = [np.array(g.asnumpy()) for g in self._read_summed()]
        for summed in self._summed:
            ops.assign(summed, ops.zeros_like(summed))
        return grads

    def _totals(self, micro_arrays: list, totals: dict | None) -> dict:
        if totals is None:
            totals = sum_counts(self.objective, micro_arrays)
        for name, count in totals.items():
            if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
                raise ValueError(f"the step's count of {name} must be an integer >= 0, got {count!r}")
        self.objective.check_totals(totals)
        return totals

    def grads_numpy(self, *batch, seed=None, totals=None, placement=None, **named) -> Gradients:
        """(loss, grads, head_grads): the unscaled float32 gradients of the objective's loss at the
        current parameters, grads in the params dict's structure (as ref_numpy.loss_and_grads),
        head_grads {"w", "b"} with a classifier objective (None without); nothing is updated.

        With dropout > 0, seed is required: the masks are those of numpy.random.default_rng(seed),
        as ref_numpy.loss_and_grads(..., dropout=p, seed=seed) draws them.  totals, placement: as
        update() (data parallel)."""
        if self.dropout > 0 and seed is None:
            raise ValueError(f"seed is required when the Trainer has dropout > 0 (p={self.dropout}): grads_numpy "
                             f"uses the masks of numpy.random.default_rng(seed), as ref_numpy.loss_and_grads does")
        arrays = self.arrays(*batch, **named)
        totals = count_tensors(self._totals([arrays], totals))
        drops = self._dropout_masks(arrays, np.random.default_rng(seed), placement)
        if self.recompute:
            loss = self._accumulate_function()(drops, as_tensors(arrays), totals)
            grads = self._take_summed()
        else:
            loss, grads = self._grads(drops, as_tensors(arrays), totals)
            grads = [g.asnumpy() for g in grads]
        flat = {p.name: g for p, g in zip(self.optimizer.parameters, grads)}
        head = None if not self.objective.cells else {"w": flat[HEAD_NAMES[0]], "b": flat[HEAD_NAMES[1]]}
        return Gradients(float(loss.asnumpy()), self._in_params_order(flat), head)

    def classifier_logits_numpy(self, ids, clf_positions, attention_mask=None) -> np.ndarray:
        """The task's logits [E, n] (choice: [E, N] answer scores) with the current weights, no
        dropout (held-out evaluation); arguments as Trainer.step's without the labels."""
        if not isinstance(self.objective, Classifier):
            raise ValueError("this Trainer trains a language model: it has no classifier logits "
                             "(Trainer(objective=Classifier(head, ...)))")
        labels = np.zeros(len(np.asarray(ids)), np.int64)  # any valid label: the logits do not read them
        arrays = self.arrays(ids, labels, attention_mask, clf_positions)
        return self._logits(as_tensors(arrays)).asnumpy()

    def head_numpy(self) -> dict | None:
        """The classifier head's current {"w", "b"} (None for the language model)."""
        return self.objective.head.numpy() if isinstance(self.objective, Classifier) else None

    def params_numpy(self) -> dict:
        """The current (float32 master) parameters as the spec's params dict."""
        # copies: asnumpy() of a Parameter may share its memory, which the next update overwrites
        return self._in_params_order({p.name: np.array(as_numpy(p))
                                      for p in self.model.trainable_params()})

    def optimizer_state_numpy(self) -> dict:
        """AdamW's state as ref_numpy.adamw_init/adamw_step hold it: {"step": updates applied so far
        (skipped steps excluded), "m": first moments, "v": second moments} (params' structure)."""
        state = optimizer_state(self.optimizer)
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
