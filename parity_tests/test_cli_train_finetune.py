"""`gptspec finetune --task classify` and `gptspec classify` end to end on a small real-text task:
is a paragraph of Python's reference manual (pydoc_data.topics) prose or a code example?"""
from __future__ import annotations

import csv
import json
import random
import re

import pytest

from gptspec.cli import main
from gptspec.training.loop import read_log

from .interrupts import interrupt_during_step, logs_without_timings

# The spec's backend: these tests state what fine-tuning computes (test_cli_finetune_ms.py runs MindSpore).
TINY = ["--config", "gpt2", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--n-ctx", "64",
        "--train-tokenizer", "300", "--seq-len", "48", "--batch-size", "16", "--lr", "3e-3", "--warmup", "5",
        "--backend", "numpy", "--no-progress"]


def prose_and_code():
    """(paragraph, "prose" | "code") pairs: an indented paragraph with a call, an assignment, def,
    class or >>> is code; a paragraph starting with a capital, ending with '.' or ':' and holding
    no '=' or '**' (reST headings) is prose; grammar rules (::=) and the rest are left out."""
    from pydoc_data.topics import topics

    rows = []
    for name in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[name]):
            lines = paragraph.strip("\n").splitlines()
            text = " ".join(line.strip() for line in lines)
            if not 30 < len(text) < 160:
                continue
            if all(line.startswith("   ") for line in lines) and "::=" not in text \
                    and re.search(r">>>|\bdef |\bclass |\w\(.*\)|\w = ", text):
                rows.append((text, "code"))
            elif lines[0][:1].isupper() and text.endswith((".", ":")) and "=" not in text and "**" not in text:
                rows.append((text, "prose"))
    random.Random(0).shuffle(rows)
    return rows


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("task")
    rows = prose_and_code()
    code = [r for r in rows if r[1] == "code"][:160]
    prose = [r for r in rows if r[1] == "prose"][:160]
    balanced = code + prose
    random.Random(1).shuffle(balanced)
    train, valid = balanced[:240], balanced[240:]
    with open(folder / "train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["paragraph", "source"])
        writer.writerows(train)
    (folder / "valid.jsonl").write_text("".join(json.dumps({"paragraph": t, "source": s}) + "\n" for t, s in valid),
                                        encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def finetuned(task_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("clf") / "run"
    assert main(["finetune", "--task", "classify", "--data", str(task_files / "train.csv"),
                 "--valid", str(task_files / "valid.jsonl"), "--text-column", "paragraph",
                 "--label-column", "source", *TINY, "--epochs", "4", "--out", str(out)]) == 0
    return out


def test_reaches_the_stated_accuracy_and_keeps_the_best(finetuned):
    evals = [r for r in read_log(finetuned / "log.jsonl") if "valid_accuracy" in r]
    assert evals[0]["step"] == 0 and 0.2 < evals[0]["valid_accuracy"] < 0.8      # about chance before
    # stated: 70% of 80 held-out paragraphs, 3.6 standard deviations above chance (0.5 +- 0.056);
    # observed 0.875. (Training a tiny model from scratch is noisy: BLAS rounding on another CPU
    # may change the trajectory, not the level it reaches.)
    assert max(r["valid_accuracy"] for r in evals) >= 0.7
    best = json.loads((finetuned / "best.json").read_text())
    assert best["valid_accuracy"] == max(r["valid_accuracy"] for r in evals[1:])
    assert (finetuned / best["folder"]).is_dir()


def test_classify_prints_label_and_probabilities(finetuned, capsys):
    capsys.readouterr()
    assert main(["classify", "--weights", str(finetuned), "x = [1, 2, 3] print(len(x))",
                 "The value of the expression is returned to the caller."]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["code", "prose"]
    assert all(re.search(r"code=0\.\d{3}  prose=0\.\d{3}", line) for line in lines)


def fails(capsys, args, message):
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_bad_input(task_files, tmp_path, capsys):
    base = ["finetune", "--task", "classify", "--data", str(task_files / "train.csv"), *TINY,
            "--out", str(tmp_path / "run")]
    fails(capsys, base, "has no column 'text' (its header: ['paragraph', 'source'])")
    bad = tmp_path / "valid.jsonl"
    bad.write_text(json.dumps({"text": "a b c d", "label": "poetry"}) + "\n")
    fails(capsys, [*base, "--text-column", "paragraph", "--label-column", "source", "--valid", str(bad)],
          "no 'paragraph' column")
    fails(capsys, [*base[:4], str(bad), *base[5:], "--valid", str(bad)],
          "classification needs at least 2 labels")
    bad.write_text(json.dumps({"paragraph": "a b c d", "source": "poetry"}) + "\n")
    fails(capsys, [*base, "--text-column", "paragraph", "--label-column", "source", "--valid", str(bad)],
          "label 'poetry' is not one of the training labels ['code', 'prose']")
    fails(capsys, ["classify", "--weights", str(tmp_path), "text"], "is not a fine-tuned classifier")


def test_entail_pairs_reach_the_stated_accuracy(task_files, tmp_path, capsys):
    """--task entail: [_start_] premise [_delimiter_] hypothesis [_classify_], the classify task's
    paragraphs as hypotheses after a question as premise (the plumbing of two texts; a tiny model
    learns to compare two texts far more slowly than this test may take)."""
    import csv as csv_module

    with open(task_files / "train.csv", newline="", encoding="utf-8") as f:
        train = [{"premise": "Is this code or prose?", "hypothesis": r["paragraph"], "label": r["source"]}
                 for r in csv_module.DictReader(f)]
    valid = [json.loads(line) for line in (task_files / "valid.jsonl").read_text(encoding="utf-8").splitlines()]
    valid = [{"premise": "Is this code or prose?", "hypothesis": r["paragraph"], "label": r["source"]} for r in valid]
    for name, part in (("train", train), ("valid", valid)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    tiny = list(TINY)
    tiny[tiny.index("--seq-len") + 1] = "56"
    assert main(["finetune", "--task", "entail", "--data", str(tmp_path / "train.jsonl"), "--valid",
                 str(tmp_path / "valid.jsonl"), *tiny, "--epochs", "4", "--out", str(tmp_path / "run")]) == 0
    assert "[_start_] premise [_delimiter_] hypothesis [_classify_] in 56 tokens" in capsys.readouterr().out
    evals = [r for r in read_log(tmp_path / "run" / "log.jsonl") if "valid_accuracy" in r]
    assert max(r["valid_accuracy"] for r in evals) >= 0.7       # stated as for classify (observed 0.9)
    capsys.readouterr()
    assert main(["classify", "--weights", str(tmp_path / "run"), "Is this code or prose?\tx = f(1)"]) == 0
    assert capsys.readouterr().out.split("\t")[0] in ("code", "prose")
    fails(capsys, ["classify", "--weights", str(tmp_path / "run"), "no tab here"], "takes 'premise<TAB>hypothesis'")


def test_finetune_resume_is_bit_exact(task_files, tmp_path, monkeypatch, capsys):
    """Ctrl-C during step 3, then --resume: the model, the head and the log equal an uninterrupted
    run's, dropout masks included."""

    import numpy as np

    import ref_numpy
    from gptspec.training.backends import NumpyBackend
    from gptspec.training.classify_backend import load_classifier

    args = ["finetune", "--task", "classify", "--data", str(task_files / "train.csv"), "--valid",
            str(task_files / "valid.jsonl"), "--text-column", "paragraph", "--label-column", "source", *TINY,
            "--steps", "6", "--eval-every", "2", "--dropout", "0.1"]   # dropout: the masks resume too
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    assert main([*args, "--dropout", "0", "--out", str(tmp_path / "no-dropout")]) == 0
    losses = [[r["loss"] for r in read_log(tmp_path / run / "log.jsonl") if "loss" in r]
              for run in ("whole", "no-dropout")]
    assert losses[0][0] != losses[1][0]   # --dropout reaches the loss
    interrupt_during_step(monkeypatch, NumpyBackend, 2)
    assert main([*args, "--out", str(tmp_path / "parts")]) == 130
    monkeypatch.undo()
    assert main(["finetune", "--resume", str(tmp_path / "parts"), "--no-progress"]) == 0
    _, whole_params, whole_head, _ = load_classifier(tmp_path / "whole")
    _, parts_params, parts_head, _ = load_classifier(tmp_path / "parts")
    for name in whole_head:
        assert np.array_equal(whole_head[name], parts_head[name])
    flat_whole, flat_parts = ref_numpy.flatten_params(whole_params), ref_numpy.flatten_params(parts_params)
    assert all(np.array_equal(flat_whole[k], flat_parts[k]) for k in flat_whole)
    assert logs_without_timings(tmp_path / "parts") == logs_without_timings(tmp_path / "whole")
