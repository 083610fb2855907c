"""`gptspec train` (and `generate --weights`) against bad input and faults: every check runs before
the run folder is touched, --overwrite never loses the old run, damaged checkpoint files are
refused by every consumer, interrupted saves leave nothing behind, and each problem is one line
naming the option or the file. NumPy backend, 1-layer models of 16 channels: each run < 1 s."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import pytest

from gptspec.cli import main
from gptspec.training import checkpoint as checkpoint_module
from gptspec.training import setup
from gptspec.training.backends import NumpyBackend

from .faults import fails, flip_byte, snapshot, tiny_vocab, train_args, write_text_file
from .interrupts import signal_during_step


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    return {"vocab": tiny_vocab(folder / "vocab"), "text": write_text_file(folder)}


def train(files, out, *extra, status=0):
    assert main(["train", "--data", str(files["text"]), *train_args(files["vocab"]), "--out", str(out),
                 *map(str, extra)]) == status


@pytest.fixture
def old_run(tmp_path, files):
    """A finished 2-step run in tmp_path/run, and its bytes."""
    run = tmp_path / "run"
    train(files, run, "--steps", "2", "--save-every", "1")
    return run, snapshot(run)


@pytest.mark.parametrize("extra, message", [
    (["--amp", "O2"], "--amp O2 needs --backend mindspore"),
    (["--min-lr", "1", "--lr", "1e-3"], "--min-lr 1.0 must not exceed --lr 0.001"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--lr", "-1e-3"], "--lr must be a positive number, got -0.001"),
    (["--train-tokenizer", "100"], "--train-tokenizer 100 is too small"),
])
def test_a_refused_option_with_overwrite_keeps_the_old_run(old_run, files, capsys, extra, message):
    run, before = old_run
    model = train_args(files["vocab"])
    if "--train-tokenizer" in extra:        # instead of the fixture's --vocab
        model.remove("--vocab")
        model.remove(files["vocab"] if files["vocab"] in model else str(files["vocab"]))
    fails(capsys, "train", ["--data", files["text"], *model, "--out", run, "--steps", "3", "--overwrite", *extra],
          message)
    assert snapshot(run) == before


def test_overwrite_replaces_the_old_run_only_after_the_first_checkpoint(old_run, files, monkeypatch, capsys):
    run, before = old_run

    def crash(self, step, micro_batches):
        raise OSError(errno.EIO, "simulated crash in the first step")

    monkeypatch.setattr(NumpyBackend, "train_step", crash)
    fails(capsys, "train", ["--data", files["text"], *train_args(files["vocab"]), "--out", run, "--steps", "3",
                            "--overwrite"], "simulated crash")
    assert snapshot(run) == before and not (run / checkpoint_module.REPLACED).exists()
    monkeypatch.undo()
    train(files, run, "--steps", "3", "--overwrite")
    assert json.loads((run / "train_state.json").read_text())["step"] == 3
    assert not (run / checkpoint_module.REPLACED).exists() and not (run / "checkpoints" / "step-1").exists()


def test_disk_full_while_starting_keeps_the_old_run(old_run, files, monkeypatch, capsys):
    run, before = old_run

    def disk_full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint_module, "_write_atomic", disk_full)
    fails(capsys, "train", ["--data", files["text"], *train_args(files["vocab"]), "--out", run, "--overwrite"],
          "No space left on device", str(run / "run.json"))
    assert snapshot(run) == before and not (run / checkpoint_module.REPLACED).exists()


def test_a_start_killed_before_its_first_checkpoint_gives_the_old_run_back(old_run, files, capsys):
    run, before = old_run
    folder = checkpoint_module.RunFolder(run)
    folder.start({"options": {}, "free": {}, "config": {}}, overwrite=True)     # then SIGKILL: nothing more
    assert (run / checkpoint_module.REPLACED).is_dir()
    capsys.readouterr()
    train(files, run, "--steps", "2", "--save-every", "1", "--overwrite")
    assert "the run it replaced is back" in capsys.readouterr().out
    assert snapshot(run).keys() == before.keys()


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_no_stub(tmp_path, files, monkeypatch, capsys):
    monkeypatch.setattr(NumpyBackend, "train_step", lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "crash")))
    fails(capsys, "train", ["--data", files["text"], *train_args(files["vocab"]), "--out", tmp_path / "new"], "crash")
    assert not (tmp_path / "new").exists()


def test_a_stub_folder_is_not_sent_to_resume(tmp_path, files, capsys):
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "run.json").write_text(json.dumps({"format": checkpoint_module.FORMAT}))
    fails(capsys, "train", ["--data", files["text"], *train_args(files["vocab"]), "--out", stub],
          "never saved a checkpoint", "--overwrite")


@pytest.mark.parametrize("command", ["generate", "train"])
def test_damaged_weights_are_refused_by_every_consumer(old_run, files, capsys, command):
    run, _ = old_run
    flip_byte(run / "model.safetensors")
    if command == "generate":
        args = ["--weights", run, "--prompt-ids", "1 2", "--max-new-tokens", "2"]
    else:
        args = ["--data", files["text"], "--weights", run, *train_args(files["vocab"])[10:], "--out", run.parent / "b"]
    fails(capsys, command, args, f"{run / 'model.safetensors'} does not match train_state.json",
          f"the newest intact checkpoint is {run / 'checkpoints' / 'step-2'}")
    assert not (run.parent / "b").exists()
    assert main(["generate", "--weights", str(run / "checkpoints" / "step-2"), "--prompt-ids", "1 2",
                 "--max-new-tokens", "2"]) == 0


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_editing_the_run_folder_leaves_the_kept_checkpoint_intact(old_run, capsys, damage):
    run, _ = old_run
    kept = run / "checkpoints" / "step-2" / "model.safetensors"
    assert os.stat(run / "model.safetensors").st_ino != os.stat(kept).st_ino       # a copy, not a hard link
    if damage == "truncated":
        with open(run / "model.safetensors", "r+b") as f:
            f.truncate(1000)
    else:
        flip_byte(run / "model.safetensors")
    assert checkpoint_module.checkpoint_problem(kept.parent) is None
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0       # already at its last step
    out = capsys.readouterr().out
    assert f"resuming from {kept.parent}" in out and f"latest checkpoint in {run}" in out
    assert checkpoint_module.checkpoint_problem(run) is None                  # DIR repaired from step-2


def test_data_mistakes_are_warned_about(tmp_path, files, capsys):
    nul = tmp_path / "nul.txt"
    nul.write_bytes(bytes(64) + b" some text after the zeros")
    capsys.readouterr()
    train(files, tmp_path / "run", "--steps", "1", "--data", files["text"], files["text"], nul,     # (the last
          "--valid", files["text"])                                                                # --data counts)
    err = capsys.readouterr().err
    assert f"warning: --data {files['text']} has the same contents as --data {files['text']}: its rows count " \
           f"twice" in err
    assert f"warning: --valid {files['text']} has the same contents as --data {files['text']}: held-out rows are " \
           f"training rows" in err
    assert f"warning: --data {nul} holds 64 NUL bytes" in err


@pytest.mark.parametrize("backend, steps, lr", [
    ("numpy", 6, 10),
    pytest.param("mindspore", 2, 1000, marks=pytest.mark.mindspore),     # ~12 s: the graph's compile
])
def test_a_diverging_run_reports_an_overflowing_perplexity(tmp_path, files, capsys, backend, steps, lr):
    if backend == "mindspore":
        pytest.importorskip("mindspore", reason="the mindspore extra is not installed")
    run = tmp_path / "run"
    capsys.readouterr()
    train(files, run, "--steps", steps, "--lr", lr, "--max-grad-norm", "0", "--weight-decay", "0", "--backend", backend)
    out = capsys.readouterr().out
    assert "inf (overflow) after" in out and "the run diverged" in out
    assert (run / "loss.png").is_file() or "loss.png not drawn: matplotlib is not installed" in out


def test_resume_on_a_finetune_folder_names_the_command(tmp_path, capsys):
    run = tmp_path / "ft"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"format": checkpoint_module.FORMAT, "options": {"task": "classify"},
                                              "free": {}, "config": {}, "labels": ["a", "b"]}))
    fails(capsys, "train", ["--resume", run], "is a `gptspec finetune` run",
          f"gptspec finetune --resume {run}")


def test_a_damaged_run_json_is_named(old_run, capsys):
    run, _ = old_run
    (run / "run.json").write_text('{"format": "gptspec-train-1", "options": ')
    fails(capsys, "train", ["--resume", run], f"{run / 'run.json'} is damaged (not valid JSON")


def second_ctrl_c_while_saving(monkeypatch, at_step):
    """A real Ctrl-C during step `at_step` (1-based), and a second one while its checkpoint is written."""
    monkeypatch.setattr(NumpyBackend, "train_step", NumpyBackend.train_step)
    signal_during_step(NumpyBackend, at_step - 1)
    original = setup.write_tokenizer

    def write_tokenizer(tokenizer, folder):
        if folder.name == f".step-{at_step}.tmp":
            os.kill(os.getpid(), signal.SIGINT)
        return original(tokenizer, folder)

    monkeypatch.setattr(setup, "write_tokenizer", write_tokenizer)


def test_a_second_ctrl_c_while_saving_keeps_the_last_checkpoint(tmp_path, files, monkeypatch, capsys):
    run = tmp_path / "run"
    second_ctrl_c_while_saving(monkeypatch, at_step=3)
    fails(capsys, "train", ["--data", files["text"], *train_args(files["vocab"]), "--out", run, "--steps", "6",
                            "--save-every", "2"], "aborted by a second Ctrl-C", f"{run} keeps step 2", status=130)
    assert not list((run / "checkpoints").glob(".*")) and checkpoint_module.checkpoint_problem(run) is None
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0


def test_disk_full_while_saving_names_the_folder_and_keeps_the_last_checkpoint(tmp_path, files, monkeypatch, capsys):
    run = tmp_path / "run"
    original = setup.write_tokenizer

    def disk_full_at_step_2(tokenizer, folder):
        if folder.name == ".step-2.tmp":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(tokenizer, folder)

    monkeypatch.setattr(setup, "write_tokenizer", disk_full_at_step_2)
    fails(capsys, "train", ["--data", files["text"], *train_args(files["vocab"]), "--out", run, "--steps", "3",
                            "--save-every", "1"],
          f"cannot save checkpoint step 2 in {run / 'checkpoints' / '.step-2.tmp'} (No space left on device)",
          "keeps its previous checkpoint")
    assert not (run / "checkpoints" / ".step-2.tmp").exists()
    assert json.loads((run / "train_state.json").read_text())["step"] == 1


def test_stale_temporaries_are_removed_at_the_next_start(old_run, capsys):
    run, _ = old_run
    (run / "checkpoints" / ".step-9.tmp").mkdir()
    (run / "checkpoints" / ".step-9.tmp" / "model.safetensors").write_bytes(b"half")
    (run / ".model.safetensors.tmp").write_bytes(b"half")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "removed what an interrupted run left behind" in capsys.readouterr().out
    assert not (run / "checkpoints" / ".step-9.tmp").exists() and not (run / ".model.safetensors.tmp").exists()


def test_a_second_process_on_the_same_run_folder_is_refused(old_run, files, capsys):
    run, before = old_run
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from gptspec.training.runlock import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)", str(run)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        fails(capsys, "train", ["--resume", run], f"--resume {run} is in use by another gptspec process "
                                                  f"(pid {holder.pid}")
        fails(capsys, "train", ["--data", files["text"], *train_args(files["vocab"]), "--out", run, "--overwrite"],
              f"--out {run} is in use by another gptspec process (pid {holder.pid}")
        assert snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
