"""`gptspec finetune --backend mindspore` against `--backend numpy` on the prose-or-code task.

Both backends start from the same parameters and head (the same seed), so their first logged loss
and their held-out loss before training are the same float64 quantity computed in float32 by two
implementations: each is within forward_bound of it, so they differ by at most twice that (as the
Trainer-level test_ms_train_classifier.py bounds the classifier loss).  Later steps are not
compared across backends: test_cli_train_ms.py says why two correct float32 trajectories separate.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mindspore", reason="the mindspore extra is not installed")
ms_backend = pytest.importorskip("ms_backend")

import ref_numpy  # noqa: E402
from gptspec.cli import main  # noqa: E402
from gptspec.tolerances import forward_bound  # noqa: E402
from gptspec.training.classify_backend import load_classifier  # noqa: E402
from gptspec.training.loop import read_log  # noqa: E402

from .interrupts import interrupt_during_step, logs_without_timings  # noqa: E402
from .test_cli_train_finetune import TINY, fails, task_files  # noqa: E402,F401  (task_files: a fixture)

pytestmark = pytest.mark.mindspore

SPEC = [a for a in TINY if a not in ("--backend", "numpy")]
STEPS = ["--steps", "6", "--eval-every", "3", "--save-every", "2"]


def args_for(task_files, backend, *extra):
    return ["finetune", "--task", "classify", "--data", str(task_files / "train.csv"), "--valid",
            str(task_files / "valid.jsonl"), "--text-column", "paragraph", "--label-column", "source", *SPEC,
            *STEPS, "--backend", backend, *extra]


@pytest.fixture(scope="module")
def runs(task_files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("finetune_backends")
    for backend in ("numpy", "mindspore"):
        assert main([*args_for(task_files, backend), "--out", str(folder / backend)]) == 0
    return folder


def test_both_backends_start_alike(runs):
    config = load_classifier(runs / "numpy")[0]
    bound = forward_bound(config, "float32")
    logs = {b: read_log(runs / b / "log.jsonl") for b in ("numpy", "mindspore")}
    for key in ("loss", "valid_loss"):      # step 1's training loss, step 0's held-out loss
        first = [next(r[key] for r in logs[b] if key in r) for b in logs]
        assert abs(first[0] - first[1]) <= 2 * bound.allowed(first[0]), f"{key}: {first} ({bound.reason})"
    assert [r["lr"] for r in logs["numpy"] if "lr" in r] == [r["lr"] for r in logs["mindspore"] if "lr" in r]


def test_both_backends_drop_the_same_elements(runs, task_files, tmp_path):
    """--dropout 0.1 (the model's and the classify token's masks): the same first loss on both
    backends, within the bound above, where the loss without dropout lies well outside it."""
    config = load_classifier(runs / "numpy")[0]
    bound = forward_bound(config, "float32")
    first = []
    for backend in ("numpy", "mindspore"):
        out = tmp_path / backend
        assert main([*args_for(task_files, backend, "--dropout", "0.1"), "--steps", "1", "--warmup", "0",
                     "--out", str(out)]) == 0
        first.append(next(r["loss"] for r in read_log(out / "log.jsonl") if "loss" in r))
    assert abs(first[0] - first[1]) <= 2 * bound.allowed(first[0]), (first, bound.reason)
    without = next(r["loss"] for r in read_log(runs / "numpy" / "log.jsonl") if "loss" in r)
    # the comparison can fail: a backend that ignored dropout would be this far off
    assert abs(first[0] - without) > 4 * bound.allowed(first[0]), (first, without)


def test_the_mindspore_checkpoint_is_a_classifier(runs, capsys):
    config, params, head, saved = load_classifier(runs / "mindspore")
    assert saved["labels"] == ["code", "prose"] and head["w"].shape == (config.n_embd, 2)
    assert not np.array_equal(params["wte"], load_classifier(runs / "numpy")[1]["wte"])  # trained on its own
    capsys.readouterr()
    assert main(["classify", "--weights", str(runs / "mindspore"), "x = [1, 2, 3] print(len(x))"]) == 0
    assert capsys.readouterr().out.split("\t")[0] in ("code", "prose")


def test_ctrl_c_and_resume_are_bit_exact_on_mindspore(runs, task_files, tmp_path, monkeypatch, capsys):
    """SIGINT during step 3: the run saves and stops; --resume reaches the uninterrupted run's
    model, head and log bit for bit."""
    from gptspec.training.ms_backend_adapter import MindSporeBackend

    interrupt_during_step(monkeypatch, MindSporeBackend, 2)
    assert main([*args_for(task_files, "mindspore"), "--out", str(tmp_path / "parts")]) == 130
    assert "saved step 3" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["finetune", "--resume", str(tmp_path / "parts"), "--no-progress"]) == 0
    _, whole_params, whole_head, _ = load_classifier(runs / "mindspore")
    _, parts_params, parts_head, _ = load_classifier(tmp_path / "parts")
    assert all(np.array_equal(whole_head[k], parts_head[k]) for k in whole_head)
    whole, parts = ref_numpy.flatten_params(whole_params), ref_numpy.flatten_params(parts_params)
    assert all(np.array_equal(whole[k], parts[k]) for k in whole)
    assert logs_without_timings(tmp_path / "parts") == logs_without_timings(runs / "mindspore")


def test_fp16_mixed_precision_with_dropout_trains(task_files, tmp_path):
    """O2 with dynamic loss scaling and dropout: every logged loss finite, the scale logged, the
    model saved finite."""
    assert main([*args_for(task_files, "mindspore", "--amp", "O2", "--dropout", "0.1"),
                 "--out", str(tmp_path / "o2")]) == 0
    rows = [r for r in read_log(tmp_path / "o2" / "log.jsonl") if "loss" in r]
    assert len(rows) == 6 and all(np.isfinite(r["loss"]) and r["loss_scale"] >= 1 for r in rows)
    params = load_classifier(tmp_path / "o2")[1]
    assert all(np.isfinite(v).all() for v in ref_numpy.flatten_params(params).values())


def test_backend_options_are_checked_before_anything_is_written(task_files, tmp_path, capsys):
    out = tmp_path / "run"
    base = args_for(task_files, "numpy", "--out", str(out))
    fails(capsys, [*base, "--amp", "O2"], "--amp O2 needs --backend mindspore")
    assert not out.exists()
