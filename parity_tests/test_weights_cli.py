"""gptspec convert: any readable checkpoint to safetensors or MindSpore, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

import ref_numpy as R
import weights
from gptspec.cli import main

from . import checkpoint_writers as W

CONFIG = R.GPTConfig(arch="gpt2", n_vocab=31, n_ctx=8, n_embd=8, n_head=2, n_layer=2)


def assert_same(a: dict, b: dict) -> None:
    fa, fb = R.flatten_params(a), R.flatten_params(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        np.testing.assert_array_equal(fa[name], fb[name], err_msg=name)


def test_convert_openai_to_safetensors_and_back_through_mindspore(tmp_path, capsys):
    pytest.importorskip("mindspore", reason="mindspore extra not installed")
    params = R.init_params(CONFIG, 1, random_biases=True)
    source = W.write_openai_gpt2(tmp_path / "tf", CONFIG, params)
    (source / "encoder.json").write_text("{}")
    (source / "vocab.bpe").write_text("#version: 0.2\n")
    assert main(["convert", str(source), str(tmp_path / "st"), "--to", "safetensors"]) == 0
    assert "(+ encoder.json, vocab.bpe)" in capsys.readouterr().out
    assert (tmp_path / "st" / "encoder.json").read_text() == "{}"
    assert main(["convert", str(tmp_path / "st"), str(tmp_path / "ms"), "--to", "mindspore"]) == 0
    assert main(["convert", str(tmp_path / "ms"), str(tmp_path / "st2"), "--to", "safetensors"]) == 0
    for folder in ("st", "ms", "st2"):
        config, loaded = weights.load(tmp_path / folder)
        assert config == CONFIG
        assert_same(params, loaded)
    assert (tmp_path / "st" / "model.safetensors").read_bytes() == (tmp_path / "st2" / "model.safetensors").read_bytes()


def test_convert_gpt1_release(tmp_path):
    config = CONFIG.replace(arch="gpt1")
    params = R.init_params(config, 2, random_biases=True)
    W.write_openai_gpt1(tmp_path / "gpt1", config, params)
    assert main(["convert", str(tmp_path / "gpt1"), str(tmp_path / "out"), "--to", "safetensors"]) == 0
    loaded_config, loaded = weights.load(tmp_path / "out")
    assert loaded_config == config
    assert_same(params, loaded)


def test_convert_refuses_a_non_empty_destination_unless_forced(tmp_path, capsys):
    W.write_hf(tmp_path / "src", CONFIG, R.init_params(CONFIG, 3))
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "notes.txt").write_text("keep")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--to", "safetensors"]) == 2
    err = capsys.readouterr().err
    assert "dst is not empty; pass --force" in err and not (tmp_path / "dst" / "model.safetensors").exists()
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--to", "safetensors", "--force"]) == 0
    assert (tmp_path / "dst" / "notes.txt").read_text() == "keep"
    assert_same(weights.load(tmp_path / "src")[1], weights.load(tmp_path / "dst")[1])


def test_convert_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GPTSPEC_HOME", str(tmp_path / "home"))
    assert main(["convert", "gpt2", str(tmp_path / "out"), "--to", "safetensors"]) == 2
    assert "gptspec convert: error: model 'gpt2' has not been downloaded" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["convert", str(tmp_path), str(tmp_path / "file"), "--to", "safetensors"]) == 2
    assert "exists and is a file" in capsys.readouterr().err
    params = R.init_params(CONFIG, 3)
    params["wpe"][0, 0] = np.nan
    W.write_hf(tmp_path / "nan", CONFIG, params)
    assert main(["convert", str(tmp_path / "nan"), str(tmp_path / "o2"), "--to", "safetensors", "--check-finite"]) == 2
    assert "'wpe.weight' (our 'wpe') holds 1 non-finite value(s) (NaN)" in capsys.readouterr().err
