"""`gptspec finetune` and `gptspec classify` against bad input and faults (test_cli_faults.py does
`train`): options checked before --overwrite touches the old run, damaged classifier files named,
the wrong command's run folder named, CSV quirks read or explained. NumPy backend, tiny models."""
from __future__ import annotations

import json
import shutil

import pytest

from gptspec.cli import main
from gptspec.training import checkpoint as checkpoint_module

from .faults import (fails, finetune_args, flip_byte, snapshot, tiny_vocab, train_args, write_classify_csv,
                     write_text_file)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ft-faults")
    return {"vocab": tiny_vocab(folder / "vocab"), "csv": write_classify_csv(folder / "train.csv"),
            "text": write_text_file(folder)}


def finetune(files, out, *extra):
    return main(["finetune", "--task", "classify", "--data", str(files["csv"]), *finetune_args(files["vocab"]),
                 "--out", str(out), *map(str, extra)])


@pytest.fixture
def old_run(tmp_path, files):
    run = tmp_path / "clf"
    assert finetune(files, run, "--steps", "2", "--save-every", "1") == 0
    return run, snapshot(run)


@pytest.mark.parametrize("extra, message", [
    (["--amp", "O2"], "--amp O2 needs --backend mindspore"),
    (["--min-lr", "1", "--lr", "1e-3"], "--min-lr 1.0 must not exceed --lr 0.001"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
])
def test_a_refused_option_with_overwrite_keeps_the_old_run(old_run, files, capsys, extra, message):
    run, before = old_run
    fails(capsys, "finetune", ["--task", "classify", "--data", files["csv"], *finetune_args(files["vocab"]),
                               "--out", run, "--overwrite", *extra], message)
    assert snapshot(run) == before


def test_damaged_classifier_files_are_named(old_run, capsys):
    run, _ = old_run
    flip_byte(run / "model.safetensors")
    fails(capsys, "classify", ["--weights", run, "a text"], f"{run / 'model.safetensors'} does not match")
    step = run / "checkpoints" / "step-2"
    (step / "classifier_head.npz").write_bytes(b"not a zip file")
    fails(capsys, "classify", ["--weights", step, "a text"], f"{step / 'classifier_head.npz'} does not match")
    plain = run.parent / "copied"          # a folder without train_state.json: no manifest to check
    shutil.copytree(step, plain)
    (plain / "train_state.json").unlink()
    fails(capsys, "classify", ["--weights", plain, "a text"], f"{plain / 'classifier_head.npz'} is damaged")
    shutil.copy(run / "checkpoints" / "step-1" / "classifier_head.npz", plain / "classifier_head.npz")
    (plain / "labels.json").write_text("{")
    fails(capsys, "classify", ["--weights", plain, "a text"], f"{plain / 'labels.json'} is damaged")


def test_classify_on_a_missing_folder_or_a_binary_file(old_run, tmp_path, capsys):
    run, _ = old_run
    fails(capsys, "classify", ["--weights", tmp_path / "nope", "a text"], f"--weights {tmp_path / 'nope'} does not exist")
    binary = tmp_path / "texts.bin"
    binary.write_bytes(bytes(range(128, 256)))
    fails(capsys, "classify", ["--weights", run, "--file", binary], f"--file: {binary} is not UTF-8 text")


def test_resume_with_the_other_command_names_it(old_run, tmp_path, files, capsys):
    run, before = old_run
    fails(capsys, "train", ["--resume", run], f"--resume {run} is a `gptspec finetune` run",
          f"gptspec finetune --resume {run}")
    lm = tmp_path / "lm"
    assert main(["train", "--data", str(files["text"]), *train_args(files["vocab"]), "--steps", "1",
                 "--out", str(lm)]) == 0
    fails(capsys, "finetune", ["--resume", lm], f"--resume {lm} is a `gptspec train` run",
          f"gptspec train --resume {lm}")
    assert snapshot(run) == before


def test_entail_on_classify_data_names_the_entail_columns(files, tmp_path, capsys):
    fails(capsys, "finetune", ["--task", "entail", "--data", files["csv"], *finetune_args(files["vocab"]),
                               "--out", tmp_path / "run"],
          "has no column 'premise'", "--premise-column / --hypothesis-column / --label-column")
    assert not (tmp_path / "run").exists()


def test_a_csv_saved_with_a_byte_order_mark_is_read(tmp_path, files, capsys):
    data = write_classify_csv(tmp_path / "excel.csv", bom=True)
    assert data.read_bytes().startswith(b"\xef\xbb\xbf")
    assert main(["finetune", "--task", "classify", "--data", str(data), *finetune_args(files["vocab"]),
                 "--steps", "1", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "labels.json").read_text())["labels"] == ["no", "yes"]


def test_a_second_finetune_on_the_same_folder_is_refused(old_run, files, capsys):
    run, before = old_run
    from gptspec.training.runlock import RunLock

    with RunLock(run):          # held by "another process" (another open file: flock refuses it too)
        fails(capsys, "finetune", ["--resume", run], f"--resume {run} is in use by another gptspec process")
    assert snapshot(run) == before and checkpoint_module.checkpoint_problem(run) is None
