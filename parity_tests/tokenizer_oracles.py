"""Shared by the tokenizer tests: the independent oracles, trained vocabularies, tricky texts.

Oracles (skipped with the reason when not importable):
  tiktoken      GPT-2: a tiktoken.Encoding built from the same vocabulary (no download)
  transformers  GPT-1: OpenAIGPTTokenizer.from_pretrained(folder with vocab.json + merges.txt);
                transformers 5.x ignores vocab_file=/merges_file=, so the files are written there
"""
from __future__ import annotations

import os
import shutil
import unicodedata
from pathlib import Path

import pytest
from hypothesis import settings

import ref_numpy
from ref_numpy.bpe_gpt2 import EOT, token_bytes

from . import bpe_trainer

N_TRAINED_MERGES = 300

TRICKY_TEXTS = [
    "", " ", "Hello world", "Hello, World! How's it going? I'm fine; they're OK, we've won, she'll see, he'd go.",
    "don't DON'T 'tis rock'n'roll 's", "  two spaces  before and after  ", "tabs\tand\nnewlines\r\n\n\nend\n",
    "numbers 123 4567 3.14159 1,000,000 ½ ² ٣ 〇 Ⅻ", "snake_case camelCase kebab-case __dunder__ a--b",
    "naïve café résumé Ångström façade NAÏVE", "Ελληνικά ΑΣ ΟΔΥΣΣΕΥΣ σς", "Русский текст", "中文字符测试 日本語のテキスト 한국어",
    "emoji 🙂👍🏽 👨‍👩‍👧 flags 🇫🇷", "math ∑ ∫ √ ≠ ≤ x²", "dashes – — ― … ‘quotes’ “double” «guillemets» ´",
    "zero\u200bwidth\u200djoiner soft\xadhyphen", "controls \x00\x01\x1b\x1c\x1f\x7f\x85\x0b\x0c end",
    "nbsp\xa0here\u3000ideographic\u2028line\u2029para\u1680ogham", "İstanbul ß ẞ ǅ ﬁ ŉ", "combining e\u0301 a\u0308 \u0301start",
    "urls https://example.com/a?b=c#d e-mail: a.b@c.de", "code: def f(x):\n    return x**2  # comment\n\n\n",
    "\ufffd replacement \U0010ffff \ue000 private \U000e0001 tag", "x" * 300, "ab " * 200, "a" * 1000 + " b",
    "'ll've're'd'm't's''", "  \n  \n\t\t \r\n", "trailing spaces   ", "<|endoftext", "<unk> literal",
]


def examples(n: int) -> int:
    """At least n examples; more when the active hypothesis profile asks for more (tokenizer-exhaustive)."""
    return max(n, settings.default.max_examples)


def stable_since_unicode_3_2(char: str) -> bool:
    """Assigned in Unicode 3.2 with the same general category today.

    HF tokenizers classifies characters with older Unicode tables than Python's; on these
    characters every version agrees, so GPT-1 ids must agree exactly.
    """
    category = unicodedata.ucd_3_2_0.category(char)
    return category != "Cn" and category == unicodedata.category(char)


def tiktoken_encoding(tokenizer, folder: Path | None = None):
    """tiktoken's Encoding of the same byte-level vocabulary, with tiktoken's own GPT-2 pattern.

    With `folder` (encoder.json + vocab.bpe) tiktoken reads the files itself (its data-gym loader,
    which also checks that merge order == id order); otherwise ranks come from `tokenizer.vocab`.
    """
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken (oracle extra) is not installed")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    if folder is None:
        ranks = {token_bytes(token): token_id for token, token_id in tokenizer.vocab.items() if token != EOT}
    else:
        saved = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local files directly, cache nothing
        try:
            ranks = data_gym_to_mergeable_bpe_ranks(str(folder / "vocab.bpe"), str(folder / "encoder.json"),
                                                    clobber_one_byte_tokens=True)
        finally:
            if saved is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = saved
    special = {EOT: tokenizer.eot_token} if tokenizer.eot_token is not None else {}
    return tiktoken.Encoding(name=f"gptspec-{tokenizer.name}", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens=special)


def hf_openai_gpt(folder: Path):
    """Hugging Face's OpenAIGPTTokenizer from a folder holding vocab.json + merges.txt."""
    transformers = pytest.importorskip("transformers", reason="transformers (oracle extra) is not installed")
    return transformers.OpenAIGPTTokenizer.from_pretrained(str(folder))


def as_hf_files(vocab_path: Path, merges_path: Path, folder: Path) -> Path:
    """Copy a vocabulary + merges pair into `folder` under Hugging Face's names."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(vocab_path, folder / "vocab.json")
    shutil.copyfile(merges_path, folder / "merges.txt")
    return folder


@pytest.fixture(scope="session")
def trained_dirs(tmp_path_factory) -> dict[str, Path]:
    """Trained gpt2-style and gpt1-style vocabularies, each under OpenAI's and HF's file names."""
    text = bpe_trainer.training_text()
    root = tmp_path_factory.mktemp("trained_bpe")
    gpt2 = bpe_trainer.train_gpt2_style(text, N_TRAINED_MERGES)
    gpt1 = bpe_trainer.train_gpt1_style(text, N_TRAINED_MERGES)
    return {
        "gpt2-openai": bpe_trainer.write_files(root / "gpt2-openai", *gpt2, names=("encoder.json", "vocab.bpe")),
        "gpt2-hf": bpe_trainer.write_files(root / "gpt2-hf", *gpt2),
        "gpt1-openai": bpe_trainer.write_files(root / "gpt1-openai", *gpt1,
                                               names=("encoder_bpe_40000.json", "vocab_40000.bpe")),
        "gpt1-hf": bpe_trainer.write_files(root / "gpt1-hf", *gpt1),
    }


@pytest.fixture(scope="session")
def trained_gpt2(trained_dirs):
    return ref_numpy.Tokenizer.from_dir(trained_dirs["gpt2-openai"])


@pytest.fixture(scope="session")
def trained_gpt1(trained_dirs):
    return ref_numpy.Tokenizer.from_dir(trained_dirs["gpt1-openai"])
