"""Every task x backend x --grad-accum {1, 3} x --dropout {0, 0.1}: the NumPy and MindSpore training
backends (gptspec/training, the layer under `gptspec train` and `gptspec finetune`) compute the same
thing.  Both start from the same tiny model (and head), take the same 6-row batch 3 times, split
into 1 or 3 micro-batches (the rows' target counts differ, so a micro-batch weighted wrongly shows).

  * the first step's loss: each backend's float32 loss is within forward_bound-derived bounds of
    the float64 one (lm_loss_bound for the LM, forward_bound for the classifiers, as the CLI tests),
    so the two within twice that;
  * the parameters after 3 steps, per tensor: within data_parallel_param_bound -- two float32 runs
    whose gradients differ by at most twice backward_bound (data_parallel_grad_bounds), through 3
    AdamW steps with eps = 1 (with eps = 1e-8 AdamW is sign-like and no gradient bound carries over).

With --grad-accum 3 the MindSpore backend sums micro-batch gradients on the device, and with dropout
both draw micro-batch k's masks from ref_numpy.dropout_seed(seed, step, k).  That the comparison
can fail: the MindSpore run with 3 micro-batches against the NumPy run with 1, under dropout (other
masks), is far outside the bound.

`python -m parity_tests.test_task_backend_matrix` prints the table (difference / bound).
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mindspore", reason="the MindSpore backend needs the `mindspore` extra")

import ref_numpy as R  # noqa: E402
from gptspec.tolerances import (data_parallel_grad_bounds, data_parallel_param_bound, forward_bound,  # noqa: E402
                                lm_loss_bound)
from gptspec.training.backends import Hyper, NumpyBackend  # noqa: E402
from gptspec.training.ms_backend_adapter import MindSporeBackend  # noqa: E402
from gptspec.training.objectives import Classification, LanguageModelling  # noqa: E402

pytestmark = pytest.mark.mindspore

TASKS = ("lm", "classify", "entail", "similar", "choice")
ROWS, LENGTH, STEPS = 6, 10, 3
LR, EPS = 1e-2, 1.0
CONFIGS = {"lm": R.GPTConfig(arch="gpt2", n_vocab=40, n_ctx=16, n_embd=16, n_head=2, n_layer=2),
           "classifier": R.GPTConfig(arch="gpt1", n_vocab=40, n_ctx=16, n_embd=16, n_head=2, n_layer=2)}


def padded(rng, n_rows, config):
    """n_rows right-padded rows of different lengths (3 .. LENGTH real tokens), their classify
    positions (each row's last real token)."""
    lengths = [3 + (5 * i + 2) % (LENGTH - 2) for i in range(n_rows)]
    ids, mask = R.pad_or_truncate([rng.integers(0, config.n_vocab, n) for n in lengths], LENGTH, 0)
    return ids, mask, np.array(lengths) - 1


def task_setup(task: str):
    """(config, params, head, objective, batch rows as the loop's micro-batch tuples)."""
    rng = np.random.default_rng(7)
    if task == "lm":
        config = CONFIGS["lm"]
        ids, mask, _ = padded(rng, ROWS, config)
        inputs, targets, mask = R.shift_targets(ids, mask)
        return config, R.init_params(config, 0), None, LanguageModelling(), (inputs, targets, mask)
    config = CONFIGS["classifier"]
    per_example = {"classify": 1, "entail": 1, "similar": 2, "choice": 3}[task]
    ids, mask, positions = padded(rng, ROWS * per_example, config)
    if per_example > 1:     # example e's sequences: rows e, e + ROWS, ... (similar's a+b and b+a)
        ids, mask, positions = (np.stack(np.split(a, per_example), axis=1) for a in (ids, mask, positions))
    n_classes = 3
    labels = rng.integers(0, n_classes, ROWS)
    head = R.init_choice_head(config, 1) if task == "choice" else R.init_classifier(config, n_classes, 1)
    objective = Classification(task, 0.5, labels=[str(k) for k in range(n_classes)], special={})
    return config, R.init_params(config, 0), head, objective, (ids, labels, positions, mask)


def micro_batches(batch, k: int) -> list:
    size = ROWS // k
    return [tuple(a[i * size:(i + 1) * size] for a in batch) for i in range(k)]


def train(backend, batch, k: int):
    """(first loss, params, head) after STEPS steps on `batch` in `k` micro-batches."""
    losses = [backend.train_step(step, micro_batches(batch, k)).loss for step in range(STEPS)]
    return losses[0], R.flatten_params(backend.params_numpy()), backend.head_numpy()


def compare_backends(task: str, grad_accum: int, dropout: float, ms_grad_accum: int | None = None) -> dict:
    """Both backends' runs; -> {"loss": (difference, allowed), "params": (worst difference / allowed,
    its tensor)}.  ms_grad_accum: the MindSpore run's micro-batch count, when it is to differ."""
    config, params, head, objective, batch = task_setup(task)
    hyper = Hyper(lr=LR, total_steps=STEPS, eps=EPS, weight_decay=0.1, max_grad_norm=1.0, dropout=dropout, seed=5)
    numpy_backend = NumpyBackend(config, params, hyper, objective, head)
    ms = MindSporeBackend(config, params, hyper, objective, head, mode="graph")
    loss_np, params_np, head_np = train(numpy_backend, batch, grad_accum)
    loss_ms, params_ms, head_ms = train(ms, batch, ms_grad_accum or grad_accum)

    exact = NumpyBackend(config, params, hyper, objective, head, dtype=np.float64)
    loss64, grads64, head_grads64 = exact.batch_loss_and_grads(0, micro_batches(batch, grad_accum))
    exact32 = NumpyBackend(config, params, hyper, objective, head)
    _, grads32, head_grads32 = exact32.batch_loss_and_grads(0, micro_batches(batch, grad_accum))
    if task == "lm":
        logits = R.forward(config, R.cast_params(params, np.float64), batch[0], attention_mask=batch[2])[0]
        n_targets = int(np.count_nonzero(batch[1] != R.IGNORE_INDEX))
        loss_allowed = 2 * lm_loss_bound(config, "float32", float(np.abs(logits).max()), n_targets).allowed(loss64)
    else:
        loss_allowed = 2 * forward_bound(config, "float32").allowed(loss64)

    n_tokens = int(np.asarray(batch[0]).size)
    references = {name: (params_np[name], grads32_flat, grads64_flat)
                  for name, grads32_flat, grads64_flat in zip_grads(grads32, grads64)}
    if head is not None:
        for key in ("w", "b"):
            params_np[f"head.{key}"], params_ms[f"head.{key}"] = head_np[key], head_ms[key]
            references[f"head.{key}"] = (head_np[key], head_grads32[key], head_grads64[key])
    worst = (0.0, None)
    for name, (reference, g32, g64) in references.items():
        grad_error = data_parallel_grad_bounds(config, n_tokens, g32, g64)[0].allowed(g64)
        allowed = data_parallel_param_bound(reference, grad_error, STEPS, LR, EPS).allowed(reference)
        ratio = float(np.max(np.abs(params_ms[name] - params_np[name]))) / allowed
        worst = max(worst, (ratio, name), key=lambda pair: pair[0])
    return {"loss": (abs(loss_np - loss_ms), loss_allowed), "params": worst}


def zip_grads(grads32, grads64):
    flat32, flat64 = R.flatten_params(grads32), R.flatten_params(grads64)
    return [(name, flat32[name], flat64[name]) for name in flat64]


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("grad_accum", [1, 3])
@pytest.mark.parametrize("task", TASKS)
def test_both_backends_train_the_same(task, grad_accum, dropout):
    result = compare_backends(task, grad_accum, dropout)
    difference, allowed = result["loss"]
    assert difference <= allowed, f"first loss: the backends differ by {difference:.3g}, allowed {allowed:.3g}"
    ratio, name = result["params"]
    assert ratio <= 1, f"after {STEPS} steps {name} differs by {ratio:.3g} x its bound"


def test_the_comparison_tells_other_masks_apart():
    """MindSpore in 3 micro-batches against NumPy in 1, under dropout: other masks (micro-batch k
    draws its own), so the parameters leave the bound -- the matrix would catch a backend that
    drew its masks per batch instead of per micro-batch."""
    ratio, name = compare_backends("lm", 1, 0.1, ms_grad_accum=3)["params"]
    assert ratio > 5, f"{name}: only {ratio:.3g} x the bound"


if __name__ == "__main__":
    print("| task | --grad-accum | --dropout | first loss: difference / bound | params after 3 steps: worst "
          "difference / bound (tensor) |")
    print("|---|---|---|---|---|")
    for task in TASKS:
        for grad_accum in (1, 3):
            for dropout in (0.0, 0.1):
                result = compare_backends(task, grad_accum, dropout)
                difference, allowed = result["loss"]
                ratio, name = result["params"]
                print(f"| {task} | {grad_accum} | {dropout} | {difference:.2g} / {allowed:.2g} = "
                      f"{difference / allowed:.2g} | {ratio:.2g} ({name}) |", flush=True)
