"""`gptspec finetune` for every task on both backends, with --dropout 0.1 and --grad-accum 2:

  * the MindSpore backend's first logged loss and held-out loss are the NumPy backend's (the same
    masks, the same micro-batch weighting) within twice forward_bound, as test_cli_finetune_ms.py
    bounds them for classify;
  * Ctrl-C during step 2 and --resume end bit for bit where the uninterrupted run ends (model, head,
    log), on each backend -- the dropout masks depend on the seed, step and micro-batch only.

(classify's own runs are test_cli_finetune_ms.py's and test_cli_train_finetune.py's; the
Trainer-level comparison of every task x backend x --grad-accum x --dropout is
test_task_backend_matrix.py.)
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("mindspore", reason="the mindspore extra is not installed")

import ref_numpy  # noqa: E402
from gptspec.cli import main  # noqa: E402
from gptspec.tolerances import forward_bound  # noqa: E402
from gptspec.training.classify_backend import load_classifier  # noqa: E402
from gptspec.training.loop import read_log  # noqa: E402

from .interrupts import interrupt_during_step, logs_without_timings  # noqa: E402
from .test_cli_finetune_tasks import SIMILAR_COLUMNS, choice_files, similar_files  # noqa: E402,F401  (fixtures)
from .test_cli_train_finetune import TINY, prose_and_code  # noqa: E402

pytestmark = pytest.mark.mindspore

def without(args, *options):
    """args with each of `options` and its value left out."""
    kept, skip = [], False
    for arg in args:
        if skip or arg in options:
            skip = not skip
            continue
        kept.append(arg)
    return kept


SPEC = without(TINY, "--backend", "--batch-size", "--seq-len", "--warmup")
RUN = ["--batch-size", "8", "--grad-accum", "2", "--dropout", "0.1", "--steps", "4", "--warmup", "1",
       "--eval-every", "4", "--save-every", "1", "--seq-len", "48"]


@pytest.fixture(scope="module")
def entail_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("entail")
    rows = [{"premise": "Is this code or prose?", "hypothesis": text, "label": kind}
            for text, kind in prose_and_code()[:80]]
    for name, part in (("train", rows[:64]), ("valid", rows[64:])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def task_args(entail_files, similar_files, choice_files):
    return {
        "entail": ["--task", "entail", "--data", str(entail_files / "train.jsonl"), "--valid",
                   str(entail_files / "valid.jsonl")],
        "similar": ["--task", "similar", "--data", str(similar_files / "train.csv"), "--valid",
                    str(similar_files / "valid.jsonl"), *SIMILAR_COLUMNS],
        "choice": ["--task", "choice", "--data", str(choice_files / "train.jsonl"), "--valid",
                   str(choice_files / "valid.csv"), "--context-column", "question"],
    }


def run_args(task_args, task, backend):
    return ["finetune", *task_args[task], *SPEC, *RUN, "--backend", backend]


def same_log(parts: list[dict], whole: list[dict]) -> bool:
    """The rows equal, except that a logged training loss may differ in its last float32 bit.  Why:
    with --grad-accum the MindSpore step reports the sum of the micro-batches' float32 losses, and
    MindSpore's CPU reduction of a loss was observed to round one ulp differently (1.2e-7 at 3.45)
    depending on what the process ran before (NumPy runs first in this test) -- the same run
    repeated in a fresh process gives identical logs, and the parameters, which these tests hold
    bit for bit, are not affected."""
    if len(parts) != len(whole):
        return False
    for a, b in zip(parts, whole):
        rest_a, rest_b = ({k: v for k, v in row.items() if k != "loss"} for row in (a, b))
        if rest_a != rest_b or ("loss" in a) != ("loss" in b):
            return False
        if "loss" in a and abs(a["loss"] - b["loss"]) > 2 * np.spacing(np.float32(abs(b["loss"]))):
            return False
    return True


@pytest.mark.parametrize("task", ["entail", "similar", "choice"])
def test_both_backends_start_alike_and_resume_bit_for_bit(task, task_args, tmp_path, monkeypatch, capsys):
    from gptspec.training.backends import NumpyBackend
    from gptspec.training.ms_backend_adapter import MindSporeBackend

    logs = {}
    for backend, backend_class in (("numpy", NumpyBackend), ("mindspore", MindSporeBackend)):
        whole, parts = tmp_path / f"{backend}-whole", tmp_path / f"{backend}-parts"
        assert main([*run_args(task_args, task, backend), "--out", str(whole)]) == 0
        interrupt_during_step(monkeypatch, backend_class, 1)
        assert main([*run_args(task_args, task, backend), "--out", str(parts)]) == 130
        assert "saved step 2" in capsys.readouterr().err
        monkeypatch.undo()
        assert main(["finetune", "--resume", str(parts), "--no-progress"]) == 0
        _, whole_params, whole_head, _ = load_classifier(whole)
        _, parts_params, parts_head, _ = load_classifier(parts)
        assert all(np.array_equal(whole_head[k], parts_head[k]) for k in whole_head), backend
        flat_whole, flat_parts = ref_numpy.flatten_params(whole_params), ref_numpy.flatten_params(parts_params)
        assert all(np.array_equal(flat_whole[k], flat_parts[k]) for k in flat_whole), backend
        assert same_log(logs_without_timings(parts), logs_without_timings(whole)), backend
        logs[backend] = read_log(whole / "log.jsonl")
    bound = forward_bound(load_classifier(tmp_path / "numpy-whole")[0], "float32")
    for key in ("loss", "valid_loss"):      # step 1's training loss, step 0's held-out loss
        first = [next(r[key] for r in logs[b] if key in r) for b in ("numpy", "mindspore")]
        assert abs(first[0] - first[1]) <= 2 * bound.allowed(first[0]), f"{task} {key}: {first} ({bound.reason})"
