"""GPT-1's BPE on OpenAI's files: ids identical to Hugging Face's OpenAIGPTTokenizer (no ftfy/spaCy).

transformers 5.x's OpenAIGPTTokenizer is backed by HF tokenizers: BertNormalizer(lowercase=True),
BertPreTokenizer, BPE with '</w>' and '<unk>'. It reads vocab.json + merges.txt from a folder,
so the test copies OpenAI's two files there under those names.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ref_numpy
from ref_numpy.bpe_gpt1 import GPT1Tokenizer, normalize

from . import bpe_trainer
from .conftest import require_reference
from .tokenizer_oracles import TRICKY_TEXTS, as_hf_files, examples, hf_openai_gpt, stable_since_unicode_3_2

STABLE_CHARS = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000 and stable_since_unicode_3_2(chr(c))]


@pytest.fixture(scope="module")
def gpt1():
    return ref_numpy.Tokenizer.from_dir(require_reference("openai-gpt"))


@pytest.fixture(scope="module")
def hf_gpt1(tmp_path_factory):
    folder = require_reference("openai-gpt")
    return hf_openai_gpt(as_hf_files(folder / "encoder_bpe_40000.json", folder / "vocab_40000.bpe",
                                     tmp_path_factory.mktemp("openai-gpt-hf")))


def test_vocabulary_facts(gpt1):
    assert type(gpt1) is GPT1Tokenizer
    assert (gpt1.n_vocab, gpt1.unk_token, gpt1.eot_token, len(gpt1.ranks)) == (40478, 0, None, 40000)


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_tricky_texts_equal_hf(gpt1, hf_gpt1, text):
    ids = gpt1.encode(text, allowed_special="all")  # HF always reads '<unk>' as the special token
    assert ids == hf_gpt1.encode(text)
    assert gpt1.decode(ids) == hf_gpt1.decode(ids)


@settings(max_examples=examples(300))
@given(text=st.text(st.sampled_from(STABLE_CHARS) | st.sampled_from(" \t\n.,'-AaBbEeÉé")))
def test_any_text_of_stable_characters_equals_hf(gpt1, hf_gpt1, text):
    assert gpt1.encode(text, allowed_special="all") == hf_gpt1.encode(text)


def test_every_stable_character_equals_hf(gpt1, hf_gpt1):
    """Each character inside a word and alone: dropped, split off, stripped and lowercased alike."""
    for start in range(0, len(STABLE_CHARS), 8192):
        text = " ".join(f"a{c}b {c}" for c in STABLE_CHARS[start:start + 8192])
        assert gpt1.encode(text, allowed_special="all") == hf_gpt1.encode(text), f"from U+{ord(STABLE_CHARS[start]):04X}"


def test_corpus_equals_hf(gpt1, hf_gpt1):
    text = bpe_trainer.training_text(max_chars=10**7)
    assert gpt1.encode(text) == hf_gpt1.encode(text)


@pytest.mark.parametrize("text, normalized", [
    ("Héllo,\tWORLD", "hello, world"),
    ("ΑΣ ΟΔΥΣΣΕΥΣ", "ασ οδυσσευσ"),      # character by character: no final sigma
    ("a\x85b\x0bc\u200bd", "abcd"),        # controls (also the whitespace ones) and format characters go
    ("a\u3000b\xa0c", "a b c"),             # other whitespace becomes a space
    ("İ", "i"), ("ﬁ", "ﬁ"),                 # NFD drops the dot; the ligature has no canonical decomposition
    ("日本", " 日  本 "),                     # CJK ideographs are spaced out
])
def test_normalization_examples(text, normalized):
    assert normalize(text) == normalized


def test_unknown_characters_are_unk_and_decoding_is_lowercase(gpt1):
    ids = gpt1.encode("Hello — WORLD…")
    assert ids.count(gpt1.unk_token) == 2
    assert gpt1.decode(ids) == "hello <unk>world <unk>"


def test_explain(gpt1):
    steps = gpt1.explain("Hello")
    assert steps[-1].parts == ("hello</w>",) and gpt1.vocab["hello</w>"] == gpt1.encode("Hello")[0]
    assert gpt1.symbols("hello") == ["h", "e", "l", "l", "o</w>"]


def test_hugging_face_file_names_give_the_same_tokenizer(gpt1, tmp_path):
    folder = require_reference("openai-gpt")
    hf = ref_numpy.Tokenizer.from_dir(as_hf_files(folder / "encoder_bpe_40000.json", folder / "vocab_40000.bpe",
                                                  tmp_path))
    assert type(hf) is GPT1Tokenizer and hf.ranks == gpt1.ranks and hf.vocab == gpt1.vocab
