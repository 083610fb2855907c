"""`gptspec train` on bad input: one line on stderr naming the argument and the problem, exit 2,
nothing written or lost. Plus the data pieces (windows, targets, batch order) on their own."""
from __future__ import annotations

import json

import numpy as np
import pytest

import ref_numpy
from gptspec.cli import main
from gptspec.training.data import IGNORE_INDEX, BatchOrder, Document, make_windows, tokenize

from . import bpe_trainer

VOCAB = "--vocab"      # the tokenizer folder is filled in by the autouse fixture below
TINY = ["--config", "gpt2", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--n-ctx", "32",
        VOCAB, "", "--pack", "--seq-len", "8", "--batch-size", "2", "--backend", "numpy",
        "--no-progress"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "doc.txt"
    path.write_text(bpe_trainer.training_text(max_chars=3000), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tokenizer():
    return ref_numpy.train_bpe(bpe_trainer.training_text(max_chars=3000), 270)


@pytest.fixture(scope="module", autouse=True)
def vocab_dir(tmp_path_factory, tokenizer):
    folder = ref_numpy.save_bpe(tokenizer, tmp_path_factory.mktemp("vocab"))
    TINY[TINY.index(VOCAB) + 1] = str(folder)
    return folder


def fails(capsys, args, message):
    """The command exits 2 with exactly one line on stderr containing `message`."""
    capsys.readouterr()
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gptspec train: error: "), err
    assert message in err, err


def test_missing_empty_unreadable_and_folder_data(tmp_path, capsys):
    out = ["--out", str(tmp_path / "run"), *TINY]
    fails(capsys, ["--data", str(tmp_path / "nope.txt"), *out], f"--data: {tmp_path / 'nope.txt'} does not exist")
    (tmp_path / "empty.txt").write_text("  \n\n")
    fails(capsys, ["--data", str(tmp_path / "empty.txt"), *out], "empty.txt is empty")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    fails(capsys, ["--data", str(tmp_path / "latin1.txt"), *out], "latin1.txt is not UTF-8 text")
    fails(capsys, ["--data", str(tmp_path), *out], "is a folder")
    fails(capsys, out, "--data FILE ... is required")
    assert not (tmp_path / "run").exists()


def test_short_documents_are_counted_and_none_left_is_an_error(tmp_path, capsys, text_file):
    short = tmp_path / "short.txt"
    short.write_text("a\n\nb\n\nc\n")
    fails(capsys, ["--data", str(short), "--split-on-blank-lines", "--out", str(tmp_path / "r"), *TINY],
          "no document has 2 or more tokens to train on (3 skipped")
    assert main(["train", "--data", str(short), text_file, "--split-on-blank-lines", "--steps", "1",
                 "--out", str(tmp_path / "r2"), *TINY]) == 0
    assert "skipped 3 document(s) shorter than 2 tokens" in capsys.readouterr().out


def test_jsonl_rows(tmp_path, capsys, text_file):
    out = ["--out", str(tmp_path / "run"), *TINY]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a b c", "completion": "d e f"}) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    fails(capsys, ["--data", str(bad), *out], "bad.jsonl line 2: missing field 'completion'")
    bad.write_text('{"prompt": "a", "completion": "b"\n')
    fails(capsys, ["--data", str(bad), *out], "bad.jsonl line 1: not valid JSON")
    bad.write_text('{"prompt": "a", "completion": 3}\n')
    fails(capsys, ["--data", str(bad), *out], "field 'completion' must be a string")
    fails(capsys, ["--data", text_file, "--loss-on", "completion", *out],
          "--loss-on completion needs .jsonl data")


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "0"], "--batch-size must be a positive number, got 0"),
    (["--seq-len", "64"], "--seq-len 64 is longer than the model's context n_ctx=32"),
    (["--grad-accum", "3"], "--batch-size 2 must be a multiple of --grad-accum 3"),
    (["--steps", "2", "--epochs", "1"], "give --steps or --epochs, not both"),
    (["--dropout", "1"], "--dropout must be in [0, 1)"),
    (["--amp", "O2"], "--amp O2 needs --backend mindspore"),
    (["--train-tokenizer", "300"], "--vocab DIR and --train-tokenizer N exclude each other"),
    (["--model", "gpt2"], "give exactly one of --model NAME"),
    (["--steps", "4", "--warmup", "5"], "--warmup 5 is longer than the run (4 steps)"),
])
def test_bad_options(tmp_path, capsys, text_file, extra, message):
    fails(capsys, ["--data", text_file, "--out", str(tmp_path / "run"), *TINY, *extra], message)


def test_model_options_that_do_not_fit(tmp_path, capsys, text_file):
    base = ["--data", text_file, "--out", str(tmp_path / "run"), "--backend", "numpy"]
    fails(capsys, [*base, "--config", "gpt2"], "--config (a new model) needs a tokenizer")
    fails(capsys, [*base, "--config", "gpt2", "--train-tokenizer", "100"], "--train-tokenizer 100 is too small")
    fails(capsys, [*base, "--weights", str(tmp_path), "--n-layer", "2"], "--n-layer only apply to --config")


def test_output_folder_of_another_run_or_other_files(tmp_path, capsys, text_file):
    run = tmp_path / "run"
    assert main(["train", "--data", text_file, "--steps", "2", "--out", str(run), *TINY]) == 0
    state = (run / "train_state.json").read_text()
    fails(capsys, ["--data", text_file, "--steps", "3", "--out", str(run), *TINY],
          f"--out {run} already holds a training run (at step 2): continue it with --resume")
    assert (run / "train_state.json").read_text() == state                      # nothing touched
    assert main(["train", "--data", text_file, "--steps", "3", "--out", str(run), *TINY, "--overwrite"]) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    fails(capsys, ["--data", text_file, "--out", str(other), *TINY, "--overwrite"], "holds no training run")
    assert (other / "notes.txt").read_text() == "mine"


def test_resume_refuses_changes_and_missing_state(tmp_path, capsys, text_file):
    run = tmp_path / "run"
    assert main(["train", "--data", text_file, "--steps", "2", "--out", str(run), *TINY, "--save-every", "1"]) == 0
    fails(capsys, ["--resume", str(run), "--lr", "0.5"], "--lr 0.5 (the run has 0.0003)")
    fails(capsys, ["--resume", str(run), "--n-layer", "2"], "--n-layer 2 (the run has 1)")
    fails(capsys, ["--resume", str(tmp_path)], "not a gptspec training run")
    identity = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**identity, "config": {**identity["config"], "n_layer": 3}}))
    fails(capsys, ["--resume", str(run)], "the checkpoint's config")
    (run / "run.json").write_text(json.dumps(identity))
    for folder in (run, run / "checkpoints" / "step-1", run / "checkpoints" / "step-2"):
        (folder / "optimizer.npz").unlink()
    fails(capsys, ["--resume", str(run)], "no complete checkpoint to resume from")


def test_completion_targets_skip_the_prompt(tokenizer):
    docs = [Document(" yes.", prompt="Is 3 odd?"), Document(" no.", prompt="Is 4 odd?")]
    tokenized, notes = tokenize(docs, tokenizer, loss_on="completion")
    n_prompt = len(tokenizer.encode("Is 3 odd?"))
    assert [d.n_prompt for d in tokenized] == [n_prompt, n_prompt] and notes == []
    for pack in (False, True):
        windows = make_windows(tokenized, seq_len=24, pack=pack, eos_id=tokenizer.eot_token)
        row_ids = tokenized[0].ids + [tokenizer.eot_token]
        targets = windows.targets[0]
        # target t is token t + 1: prompt tokens 1..n_prompt-1 are never targets, the answer and EOS are
        assert (targets[:n_prompt - 1] == IGNORE_INDEX).all()
        assert targets[n_prompt - 1:len(row_ids) - 1].tolist() == row_ids[n_prompt:]
        if pack:      # the second document follows the first's EOS, its prompt ignored too
            assert windows.attention_mask is None
            assert (targets[len(row_ids) - 1:len(row_ids) - 1 + n_prompt] == IGNORE_INDEX).all()
        else:         # one padded row per document: padding is never a target
            assert windows.inputs.shape == (2, 24) and windows.attention_mask[0].sum() == len(row_ids)
            assert (targets[len(row_ids) - 1:] == IGNORE_INDEX).all()


def test_pack_cuts_windows_that_overlap_by_one_token(tokenizer):
    tokenized, _ = tokenize([Document(bpe_trainer.training_text(max_chars=500))], tokenizer)
    stream = tokenized[0].ids + [tokenizer.eot_token]
    windows = make_windows(tokenized, seq_len=10, pack=True, eos_id=tokenizer.eot_token)
    n = (len(stream) - 1) // 10
    assert windows.inputs.shape == (n, 10)
    assert np.array_equal(windows.inputs.ravel(), stream[:n * 10])
    assert np.array_equal(windows.targets.ravel(), stream[1:n * 10 + 1])     # every token a target once


def test_batch_order_is_a_permutation_per_epoch_and_resumes_exactly():
    order = BatchOrder(10, seed=3)
    first = np.concatenate([order.take(4) for _ in range(5)])                  # 20 rows: two epochs
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:]) == list(range(10))
    assert not np.array_equal(first[:10], first[10:])                          # reshuffled each epoch
    again = BatchOrder(10, seed=3)
    again.take(7)
    resumed = BatchOrder.from_state(json.loads(json.dumps(again.state())))
    assert np.array_equal(resumed.take(13), first[7:])


def test_grad_accumulation_equals_the_whole_batch(tokenizer):
    """Micro-batches with different numbers of real targets, weighted by their shares, give the
    whole batch's mean loss and gradients (float64, within the backward bound)."""
    from gptspec.compare import assert_close
    from gptspec.tolerances import backward_bound
    from gptspec.training.backends import Hyper, NumpyBackend
    from gptspec.training.objectives import LanguageModelling

    text = bpe_trainer.training_text(max_chars=4000)
    docs = [Document(text[i * 40:i * 40 + 10 + 25 * i]) for i in range(4)]       # 10 to 85 characters
    windows = make_windows(tokenize(docs, tokenizer)[0], seq_len=24, pack=False, eos_id=tokenizer.eot_token)
    counts = (windows.targets != IGNORE_INDEX).sum(axis=1)
    assert len(set(counts[:2].tolist() + [counts[2:].sum()])) > 1                # unequal shares
    config = ref_numpy.GPTConfig(n_vocab=tokenizer.n_vocab, n_ctx=32, n_embd=16, n_head=2, n_layer=2)
    backend = NumpyBackend(config, ref_numpy.init_params(config, 0), Hyper(lr=1e-3, total_steps=1), LanguageModelling(),
                           dtype=np.float64)
    whole_loss, whole, _ = backend.batch_loss_and_grads(0, [windows.rows(slice(0, 4))])
    parts_loss, parts, _ = backend.batch_loss_and_grads(0, [windows.rows(slice(0, 1)), windows.rows(slice(1, 4))])
    bound = backward_bound(config, "float64", windows.inputs.size)
    assert_close("loss", parts_loss, whole_loss, bound)
    flat_parts = ref_numpy.flatten_params(parts)
    for name, reference in ref_numpy.flatten_params(whole).items():
        assert_close(name, flat_parts[name], reference, bound)
