"""`gptspec train` end to end through the real CLI, NumPy backend, on tiny models and real text
(Python's own docs): the loss goes down, the checkpoint loads and generates, Ctrl-C and a crash
mid-save lose nothing, and --resume continues bit for bit."""
from __future__ import annotations

import json
import re
import math

import numpy as np
import pytest

import ref_numpy
import weights
from gptspec.cli import main
from gptspec.training import checkpoint as checkpoint_module
from gptspec.training.backends import NumpyBackend
from gptspec.training.loop import read_log

from . import bpe_trainer
from .interrupts import interrupt_during_step, logs_without_timings

TINY = ["--config", "gpt2", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--n-ctx", "32",
        "--train-tokenizer", "300", "--pack", "--seq-len", "16", "--batch-size", "4", "--lr", "3e-3",
        "--backend", "numpy", "--no-progress"]


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    """Three documents of real English prose (pydoc's reference-manual topics)."""
    folder = tmp_path_factory.mktemp("data")
    text = bpe_trainer.training_text(max_chars=24_000)
    paths = []
    for i in range(3):
        path = folder / f"doc{i}.txt"
        path.write_text(text[i * 8000:(i + 1) * 8000], encoding="utf-8")
        paths.append(str(path))
    return paths


def train(out, data, *extra, expect=0):
    status = main(["train", "--data", *data, *TINY, "--out", str(out), *extra])
    assert status == expect
    return status


def flat_params(folder):
    return ref_numpy.flatten_params(weights.load(folder)[1])


def assert_same_params(a, b):
    flat_a, flat_b = flat_params(a), flat_params(b)
    assert flat_a.keys() == flat_b.keys()
    for name in flat_a:
        assert np.array_equal(flat_a[name], flat_b[name]), f"{name} differs"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, text_files):
    out = tmp_path_factory.mktemp("run") / "run"
    train(out, text_files, "--steps", "40", "--eval-every", "20", "--save-every", "20", "--grad-accum", "2")
    return out


def test_loss_goes_down_on_real_text(finished_run):
    rows = read_log(finished_run / "log.jsonl")
    evals = [r for r in rows if "valid_loss" in r]
    assert [r["step"] for r in evals] == [0, 20, 40]
    before, after = evals[0]["valid_loss"], evals[-1]["valid_loss"]
    assert before == pytest.approx(math.log(300), abs=0.3)      # a random init predicts ~uniformly
    assert after < before - 0.7                                 # observed 5.69 -> 4.45 nats in 40 steps
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 41))
    assert all({"step", "loss", "lr", "loss_scale", "tokens_per_s", "grad_norm"} <= r.keys() for r in steps)
    assert steps[0]["lr"] == pytest.approx(3e-3) and steps[-1]["lr"] < 1e-4        # cosine down to 0
    assert (finished_run / "loss.png").stat().st_size > 0


def test_the_run_folder_holds_the_latest_checkpoint(finished_run):
    assert sorted(p.name for p in (finished_run / "checkpoints").iterdir()) == ["step-20", "step-40"]
    assert_same_params(finished_run, finished_run / "checkpoints" / "step-40")
    state = json.loads((finished_run / "train_state.json").read_text())
    assert state["step"] == 40 and state["data"]["epoch"] >= 0
    assert checkpoint_module.checkpoint_problem(finished_run) is None


def test_the_checkpoint_loads_in_weights_load_and_generates(finished_run, capsys):
    config, params = weights.load(finished_run)
    assert (config.n_layer, config.n_embd, config.n_vocab, config.n_ctx) == (1, 32, 300, 32)
    tokenizer = ref_numpy.Tokenizer.from_dir(finished_run)
    assert tokenizer.n_vocab == 300
    ids = ref_numpy.generate(config, params, tokenizer.encode("The for statement"), 8, seed=0)
    assert len(ids) == len(tokenizer.encode("The for statement")) + 8
    capsys.readouterr()
    assert main(["generate", "--weights", str(finished_run), "--prompt", "The for statement",
                 "--max-new-tokens", "5", "--greedy"]) == 0
    assert capsys.readouterr().out.startswith("The for statement")


def interrupt_at(monkeypatch, step_to_interrupt):
    """Send this process a real SIGINT (Ctrl-C) while step `step_to_interrupt` runs."""
    interrupt_during_step(monkeypatch, NumpyBackend, step_to_interrupt - 1)


def test_ctrl_c_saves_and_resume_is_bit_exact(tmp_path, text_files, monkeypatch, capsys):
    args = ("--steps", "12", "--eval-every", "4", "--dropout", "0.1", "--grad-accum", "2")
    train(tmp_path / "whole", text_files, *args)
    interrupt_at(monkeypatch, 5)
    train(tmp_path / "parts", text_files, *args, expect=130)
    assert "saved step 5" in capsys.readouterr().err
    assert json.loads((tmp_path / "parts" / "train_state.json").read_text())["step"] == 5
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "parts"), "--no-progress"]) == 0
    assert_same_params(tmp_path / "whole", tmp_path / "parts")
    assert logs_without_timings(tmp_path / "parts") == logs_without_timings(tmp_path / "whole")


def test_a_crash_mid_save_falls_back_to_the_last_complete_checkpoint(tmp_path, text_files, monkeypatch, capsys):
    args = ("--steps", "8", "--save-every", "4")
    train(tmp_path / "whole", text_files, *args)
    copies = []
    original = checkpoint_module._replace_with_copy

    def crash_on_step_8(source, target):
        if source.parent.name == "step-8" and copies:
            raise OSError("simulated power cut while copying the step-8 checkpoint into DIR")
        copies.append(target)
        return original(source, target)

    monkeypatch.setattr(checkpoint_module, "_replace_with_copy", crash_on_step_8)
    train(tmp_path / "crashed", text_files, *args, expect=2)
    monkeypatch.undo()
    crashed = tmp_path / "crashed"
    assert checkpoint_module.checkpoint_problem(crashed) is not None          # DIR is a half-updated mix
    weights.load(crashed)                                                      # its weights file is still whole
    (crashed / "checkpoints" / "step-8" / "optimizer.npz").unlink()           # and the step-8 copy is damaged
    capsys.readouterr()
    assert main(["train", "--resume", str(crashed), "--no-progress"]) == 0
    assert "resuming from" in capsys.readouterr().out and (crashed / "checkpoints" / "step-4").is_dir()
    assert_same_params(tmp_path / "whole", crashed)


def test_documents_padded_per_row_and_jsonl_completion_loss(tmp_path, capsys):
    """One padded row per JSONL row, loss on the completion only: the fixed answer is learnt."""
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Is {i} odd?", "completion": " no." if i % 2 == 0 else " yes."})
                            + "\n" for i in range(40)), encoding="utf-8")
    tiny = [a for a in TINY if a != "--pack"]
    tiny[tiny.index("--train-tokenizer") + 1] = "270"
    assert main(["train", "--data", str(data), *tiny, "--loss-on", "completion", "--steps", "30",
                 "--valid", str(data), "--out", str(tmp_path / "run")]) == 0
    assert "40 documents, each padded or truncated to 16 + 1 tokens\n" in capsys.readouterr().out
    evals = [r for r in read_log(tmp_path / "run" / "log.jsonl") if "valid_loss" in r]
    assert evals[-1]["valid_loss"] < evals[0]["valid_loss"] - 2.0      # observed 5.70 -> 2.70 nats


def test_demo_runs_end_to_end_offline(tmp_path, capsys):
    """--demo's path (Python's docs, its own BPE, before/after perplexity, samples), shrunk to 3 steps."""
    assert main(["train", "--demo", "--steps", "3", "--train-tokenizer", "300", "--n-layer", "1", "--n-embd", "32",
                 "--n-ctx", "64", "--seq-len", "64", "--warmup", "1", "--out", str(tmp_path / "demo"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "pydoc_data.topics (held out): packed" in out
    assert re.search(r"held-out perplexity: [\d.]+ before, [\d.]+ after", out)
    assert "--- sample 1 ---\nThe for statement" in out and "--- sample 2 ---\nA class definition" in out
    assert weights.load(tmp_path / "demo")[0].n_vocab == 300
