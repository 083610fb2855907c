"""`gptspec finetune --task similar | choice` and `gptspec classify` end to end on small real-text
tasks built from Python's reference manual (pydoc_data.topics paragraphs, code or prose):

- similar: how many of two paragraphs are code ("no code", "one code", "both code") -- a property
  of the pair that does not depend on its order, as GPT-1's summed two-order representation assumes.
  (Whether two paragraphs are of the *same* kind, an XOR of the two, stays at chance for this tiny
  model in test time: measured 0.46-0.56 after 8 epochs of 480 pairs.)
- choice: "Pick the code." or "Pick the prose." and two answers, one of each kind: the right answer
  depends on the context, so the score of an answer row must read both.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import random
import re

import pytest

from gptspec.cli import main
from gptspec.training.loop import read_log

from .interrupts import interrupt_during_step, logs_without_timings
from .test_cli_train_finetune import TINY, fails, prose_and_code

COUNTS = ["no code", "one code", "both code"]


def kinds():
    rows = prose_and_code()
    return [t for t, s in rows if s == "code"], [t for t, s in rows if s == "prose"]


@pytest.fixture(scope="module")
def similar_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("similar")
    code, prose = ([t for t in texts if len(t) < 90] for texts in kinds())  # short: a pair fits 64 tokens
    rng = random.Random(2)
    pairs = []
    for _ in range(480 + 120):
        a, b = rng.choice(code + prose), rng.choice(code + prose)
        pairs.append((a, b, COUNTS[(a in code) + (b in code)]))
    with open(folder / "train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["first", "second", "kind"])
        writer.writerows(pairs[:480])
    (folder / "valid.jsonl").write_text("".join(json.dumps({"first": a, "second": b, "kind": k}) + "\n"
                                                for a, b, k in pairs[480:]), encoding="utf-8")
    return folder


SIMILAR_COLUMNS = ["--text-a-column", "first", "--text-b-column", "second", "--label-column", "kind"]


@pytest.fixture(scope="module")
def similar_run(similar_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("similar_run") / "run"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        code = main(["finetune", "--task", "similar", "--data", str(similar_files / "train.csv"),
                     "--valid", str(similar_files / "valid.jsonl"), *SIMILAR_COLUMNS, *TINY, "--seq-len", "64",
                     "--epochs", "6", "--out", str(out)])
    assert code == 0, printed.getvalue()
    return out, printed.getvalue().splitlines()


def test_similar_reaches_the_stated_accuracy(similar_run):
    out, notes = similar_run
    # the paragraphs (up to ~45 tokens each) do not all fit 64 tokens in pairs: the command says so
    assert any(re.search(r"--data: 480 pairs, .* in 64 tokens; \d+ pairs were longer and lost the tail", n)
               for n in notes), notes
    evals = [r for r in read_log(out / "log.jsonl") if "valid_accuracy" in r]
    # stated: 0.75 of 120 held-out pairs; the labels are about 1/4, 1/2, 1/4, so always answering the
    # commonest gets 0.5 (sd 0.046 over 120): 0.75 is 5.4 sd above it. Observed 0.917 (step 150).
    assert max(r["valid_accuracy"] for r in evals) >= 0.75
    saved = json.loads((out / "labels.json").read_text())
    assert saved["task"] == "similar" and saved["labels"] == sorted(COUNTS)


def test_classify_a_pair_in_either_order(similar_run, capsys):
    out, _ = similar_run
    code = "   >>> x = [1, 2, 3]\n   >>> print(len(x))"
    code = " ".join(line.strip() for line in code.splitlines())
    prose = "The value of the expression is returned to the caller."
    capsys.readouterr()
    assert main(["classify", "--weights", str(out), f"{code}\t{prose}", f"{prose}\t{code}"]) == 0
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert len(lines) == 2
    # the 300-token BPE spends a token on every few characters: these two do not fit n_ctx = 64 together
    assert "2 pairs were longer and lost the tail of their longer text" in printed.err
    # both orders are read either way (and cut alike), so a pair and its swap print the same probabilities
    assert lines[0].split("\t")[:2] == lines[1].split("\t")[:2]
    assert re.fullmatch(r"(both|no|one) code\tboth code=0\.\d{3}  no code=0\.\d{3}  one code=0\.\d{3}\t.* \| .*",
                        lines[0]), lines[0]


@pytest.fixture(scope="module")
def choice_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("choice")
    code, prose = kinds()
    rng = random.Random(2)
    examples = []
    for _ in range(240 + 80):
        want, answers = rng.choice(["code", "prose"]), [rng.choice(code), rng.choice(prose)]
        rng.shuffle(answers)
        right = answers.index(next(a for a in answers if (a in code) == (want == "code")))
        examples.append({"question": f"Pick the {want}.", "answers": answers, "label": right})
    (folder / "train.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples[:240]), encoding="utf-8")
    with open(folder / "valid.csv", "w", newline="", encoding="utf-8") as f:  # CSV: answers_0, answers_1
        writer = csv.writer(f)
        writer.writerow(["question", "answers_0", "answers_1", "label"])
        writer.writerows([e["question"], *e["answers"], e["label"]] for e in examples[240:])
    return folder


@pytest.fixture(scope="module")
def choice_run(choice_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("choice_run") / "run"
    assert main(["finetune", "--task", "choice", "--data", str(choice_files / "train.jsonl"),
                 "--valid", str(choice_files / "valid.csv"), "--context-column", "question", *TINY,
                 "--epochs", "12", "--out", str(out)]) == 0
    return out


def test_choice_reaches_the_stated_accuracy(choice_run):
    evals = [r for r in read_log(choice_run / "log.jsonl") if "valid_accuracy" in r]
    assert 0.3 < evals[0]["valid_accuracy"] < 0.7  # about chance before
    # stated: 0.7 of 80 held-out examples of 2 answers, 3.6 sd above chance (0.5 +- 0.056);
    # observed 0.887 (0.8 from the 3rd epoch on).
    assert max(r["valid_accuracy"] for r in evals) >= 0.7
    saved = json.loads((choice_run / "labels.json").read_text())
    assert saved["task"] == "choice" and saved["labels"] == ["0", "1"]


def test_classify_prints_probabilities_over_the_answers(choice_run, capsys):
    code = ">>> x = [1, 2, 3] >>> print(len(x))"
    prose = "The value of the expression is returned to the caller."
    capsys.readouterr()
    assert main(["classify", "--weights", str(choice_run), f"Pick the code.\t{prose}\t{code}",
                 f"Pick the prose.\t{prose}\t{code}\t{prose}"]) == 0  # any number of answers >= 2
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"[01]\t0=0\.\d{3}  1=0\.\d{3}\tPick the code\. \| .*", lines[0]), lines[0]
    assert re.fullmatch(r"[012]\t0=0\.\d{3}  1=0\.\d{3}  2=0\.\d{3}\tPick the prose\. \| .*", lines[1]), lines[1]
    p = [float(x) for x in re.findall(r"=(0\.\d{3})", lines[1])]
    assert abs(p[0] - p[2]) <= 0.001 and abs(sum(p) - 1) <= 0.002  # the same answer twice scores the same


def test_classify_loads_once_and_builds_no_optimizer(choice_run, monkeypatch, capsys):
    """`gptspec classify` is inference only: the checkpoint is read once for every text (choice
    texts are encoded one by one) and no AdamW state (twice the model's memory) is built."""
    import ref_numpy

    from gptspec.training import classify_backend

    loads, load = [], classify_backend.load_classifier
    monkeypatch.setattr(classify_backend, "load_classifier", lambda folder: loads.append(folder) or load(folder))
    monkeypatch.setattr(ref_numpy, "adamw_init", lambda *args, **kwargs: pytest.fail("classify built AdamW's state"))
    capsys.readouterr()
    assert main(["classify", "--weights", str(choice_run), "Pick one.\ta\tb", "Pick one.\ta\tb\tc"]) == 0
    assert len(loads) == 1 and len(capsys.readouterr().out.splitlines()) == 2


def write_jsonl(path, *records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_bad_input(similar_files, choice_files, similar_run, choice_run, tmp_path, capsys):
    similar = ["finetune", "--task", "similar", "--data", str(similar_files / "train.csv"), *TINY,
               "--out", str(tmp_path / "run")]
    fails(capsys, similar, "has no column 'text_a' (its header: ['first', 'second', 'kind'])")
    bad = write_jsonl(tmp_path / "v.jsonl", {"first": "a b", "second": "c d", "kind": "three code"})
    fails(capsys, [*similar, *SIMILAR_COLUMNS, "--valid", bad],
          "label 'three code' is not one of the training labels ['both code', 'no code', 'one code']")
    bad = write_jsonl(tmp_path / "v.jsonl", {"first": "a b", "kind": "no code"})
    fails(capsys, [*similar, *SIMILAR_COLUMNS, "--valid", bad], "no 'second' column")

    choice = ["finetune", "--task", "choice", "--context-column", "question", *TINY, "--out", str(tmp_path / "run"),
              "--data"]
    fails(capsys, [*choice, str(choice_files / "train.jsonl"), "--context-column", "context"], "no 'context' column")
    two = {"question": "q", "answers": ["a", "b"], "label": 1}
    for record, message in [
            ({**two, "answers": ["a", "b", "c"]}, "3 answers, but"),
            ({**two, "answers": ["a"]}, "'answers' must be a list of at least 2 texts, got ['a']"),
            ({**two, "answers": "a"}, "'answers' must be a list of at least 2 texts"),
            ({**two, "label": 2}, "'label' = 2 is not an answer index [0, 2)"),
            ({**two, "label": -1}, "'label' = -1 is not an answer index [0, 2)"),
            ({**two, "label": "b"}, "'label' must be the index of the right answer, got 'b'"),
            ({"question": "q", "label": 0}, "no 'answers' column")]:
        fails(capsys, [*choice, write_jsonl(tmp_path / "d.jsonl", two, record)], message)
    fails(capsys, [*choice, str(choice_files / "train.jsonl"), "--valid",
                   write_jsonl(tmp_path / "v.jsonl", {**two, "answers": ["a", "b", "c"]})],
          "line 1: 3 answers, but the model chooses among 2")  # in --valid, trained on two
    (tmp_path / "d.csv").write_text("question,answer_a,answer_b,label\nq,a,b,0\n", encoding="utf-8")
    fails(capsys, [*choice, str(tmp_path / "d.csv")], "has no answer columns answers_0, answers_1")

    fails(capsys, ["classify", "--weights", str(similar_run[0]), "one text"],
          "a similar model takes 'text_a<TAB>text_b'")
    fails(capsys, ["classify", "--weights", str(choice_run), "q\tonly one answer"], "a choice model takes")


def test_a_pair_is_cut_alike_in_either_order():
    """A tie in length cuts both texts, so (a, b) and (b, a) keep the same tokens when cut."""
    import numpy as np

    from gptspec.training.classify_data import encode_pairs

    class Letters:  # one token per character
        @staticmethod
        def encode_ordinary(text):
            return [ord(c) - 97 for c in text]

    special = {"_start_": 26, "_delimiter_": 27, "_classify_": 28}
    rows = [(("abcdef", "uvwxyz"), "x", "1"), (("uvwxyz", "abcdef"), "x", "2")]
    encoded = encode_pairs(rows, Letters, special, ["x"], seq_len=10)
    np.testing.assert_array_equal(encoded.ids[0], encoded.ids[1][::-1])  # row 1's orders are row 0's swapped
    assert encoded.attention_mask[0, 0].sum() == 9 and "2 pairs were longer" in encoded.notes[0]


def test_choice_resume_is_bit_exact(choice_files, tmp_path, monkeypatch):
    """Ctrl-C during step 2 (of 6) of a choice run, then --resume: the one-output head, the model and the log
    equal an uninterrupted run's (the head and its optimizer state go through the checkpoint)."""

    import numpy as np

    import ref_numpy
    from gptspec.training.backends import NumpyBackend
    from gptspec.training.classify_backend import load_classifier

    args = ["finetune", "--task", "choice", "--data", str(choice_files / "train.jsonl"), "--valid",
            str(choice_files / "valid.csv"), "--context-column", "question", *TINY, "--steps", "6",
            "--eval-every", "2"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    interrupt_during_step(monkeypatch, NumpyBackend, 1)
    assert main([*args, "--out", str(tmp_path / "parts")]) == 130
    monkeypatch.undo()
    assert main(["finetune", "--resume", str(tmp_path / "parts"), "--no-progress"]) == 0
    _, whole_params, whole_head, _ = load_classifier(tmp_path / "whole")
    _, parts_params, parts_head, _ = load_classifier(tmp_path / "parts")
    assert whole_head["w"].shape == (32, 1)
    assert all(np.array_equal(whole_head[name], parts_head[name]) for name in whole_head)
    flat_whole, flat_parts = ref_numpy.flatten_params(whole_params), ref_numpy.flatten_params(parts_params)
    assert all(np.array_equal(flat_whole[k], flat_parts[k]) for k in flat_whole)
    assert logs_without_timings(tmp_path / "parts") == logs_without_timings(tmp_path / "whole")
