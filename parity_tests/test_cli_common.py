"""gptspec.common: where a --prompt's tokenizer comes from."""
from __future__ import annotations

import argparse
import shutil

import pytest

from gptspec.common import load_tokenizer

from .conftest import require_reference


def model_args(**values):
    defaults = dict(vocab=None, weights=None, model="gpt2", random_init=False)
    return argparse.Namespace(**{**defaults, **values})


def test_a_fetched_model_brings_its_own_tokenizer(tmp_path, monkeypatch):
    reference = require_reference("gpt2")
    folder = tmp_path / "openai" / "gpt2"  # where `gptspec fetch gpt2` puts OpenAI's release
    folder.mkdir(parents=True)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(reference / name, folder / name)
    monkeypatch.setenv("GPTSPEC_HOME", str(tmp_path))
    assert load_tokenizer(model_args()).encode("Hello world") == [15496, 995]


def test_an_unfetched_model_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTSPEC_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="run `gptspec fetch gpt2`"):
        load_tokenizer(model_args())


def test_a_random_model_needs_vocab():
    with pytest.raises(ValueError, match="--prompt needs a tokenizer: pass --vocab DIR"):
        load_tokenizer(model_args(random_init=True))


def test_a_checkpoint_folder_without_tokenizer_files_is_named(tmp_path):
    with pytest.raises(ValueError, match="--prompt needs a tokenizer"):
        load_tokenizer(model_args(weights=str(tmp_path)))
