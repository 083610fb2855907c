"""GPT-2's byte-level BPE on OpenAI's files: ids identical to tiktoken, exact round trip.

tiktoken is built from the same encoder.json (tokenizer_oracles.tiktoken_encoding), so the test
compares algorithms, not downloads. Run with --hypothesis-profile=tokenizer-exhaustive for 1e5
examples per property.
"""
from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ref_numpy
from gptspec.cli import main
from ref_numpy.bpe_gpt2 import BYTE_SYMBOLS, GPT2Tokenizer, without_surrogates

from . import bpe_trainer
from .conftest import require_reference
from .tokenizer_oracles import TRICKY_TEXTS, as_hf_files, examples, tiktoken_encoding


@pytest.fixture(scope="module")
def gpt2():
    return ref_numpy.Tokenizer.from_dir(require_reference("gpt2"))


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2):
    return tiktoken_encoding(gpt2, require_reference("gpt2"))


def test_vocabulary_facts(gpt2):
    assert type(gpt2) is GPT2Tokenizer
    assert (gpt2.n_vocab, gpt2.eot_token, len(gpt2.ranks)) == (50257, 50256, 50000)
    assert gpt2.special_tokens == {"<|endoftext|>": 50256}


def test_known_ids(gpt2):
    # The example every GPT-2 tutorial prints (Hugging Face docs, minGPT's bpe.py).
    assert gpt2.encode("Hello world") == [15496, 995]


@pytest.mark.parametrize("text", TRICKY_TEXTS + ["\ud800 lone", "pair \ud83d\ude00 joined", "\udfff\ud800"])
def test_tricky_texts_equal_tiktoken(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text)
    assert gpt2.decode(gpt2.encode(text)) == without_surrogates(text)


@settings(max_examples=examples(300))
@given(text=st.text(st.characters(exclude_categories=["Cn"])))
def test_any_text_equals_tiktoken(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)


@settings(max_examples=examples(300))
@given(text=st.text())
def test_round_trip(gpt2, text):
    ids = gpt2.encode_ordinary(text)
    assert gpt2.decode(ids) == without_surrogates(text)
    assert gpt2.decode_bytes(ids) == without_surrogates(text).encode("utf-8")


def revealer():
    """A byte-level vocabulary whose ids show how text was pre-tokenized, with its tiktoken twin.

    Only 'x', '1' and '!' merge, with any following byte. In ' x{c}1{c}!{c}' a merge with c's first
    byte happens after 'x' iff c is a letter, after '1' iff a number, after '!' iff neither, and
    none at all iff c is whitespace: the ids spell out c's class in PATTERN. (With the real
    vocabulary most pre-token boundaries next to a rare character change no id.)
    """
    vocab = {BYTE_SYMBOLS[b]: b for b in range(256)}
    ranks = {}
    for first in "x1!":
        for b in range(256):
            ranks[first, BYTE_SYMBOLS[b]] = len(ranks)
            vocab[first + BYTE_SYMBOLS[b]] = len(vocab)
    tokenizer = GPT2Tokenizer(vocab, ranks, name="revealer")
    return tokenizer, tiktoken_encoding(tokenizer)


def test_every_character_splits_like_tiktoken():
    """Every character Python's Unicode database knows (private use: a sample) is classified alike.

    Characters newer than that database can differ: the `regex` module may know a newer Unicode
    version than tiktoken's Rust regex (docs/tokenizers.md).
    """
    ours, theirs = revealer()
    known = [c for c in map(chr, range(0x110000)) if unicodedata.category(c) not in ("Cn", "Co", "Cs")]
    known += [chr(c) for block in (0xE000, 0xF0000, 0x100000) for c in range(block, block + 256)]
    for start in range(0, len(known), 8192):
        text = "".join(f" x{c}1{c}!{c}" for c in known[start:start + 8192])
        assert ours.encode_ordinary(text) == theirs.encode_ordinary(text), f"from U+{ord(known[start]):04X}"


def test_corpus_equals_tiktoken(gpt2, tiktoken_gpt2):
    text = bpe_trainer.training_text(max_chars=10**7)
    assert len(text) > 300_000  # all of pydoc's topics
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text)


def test_surrogates_are_repaired_like_tiktoken(gpt2):
    assert gpt2.encode("a\ud800b") == gpt2.encode("a\ufffdb")
    assert gpt2.encode("\ud83d\ude00") == gpt2.encode("\U0001F600")  # a high+low pair is one character
    assert gpt2.decode(gpt2.encode("x\udc00")) == "x\ufffd"


def test_special_tokens_like_tiktoken(gpt2, tiktoken_gpt2):
    text = "end<|endoftext|>start <|endoftext|>"
    for kwargs in ({}, {"disallowed_special": {"<|endoftext|>"}}):
        with pytest.raises(ValueError):
            tiktoken_gpt2.encode(text, **kwargs)
        with pytest.raises(ValueError, match="special token"):
            gpt2.encode(text, **kwargs)
    for kwargs in ({"allowed_special": "all"}, {"allowed_special": {"<|endoftext|>"}}, {"disallowed_special": ()}):
        assert gpt2.encode(text, **kwargs) == tiktoken_gpt2.encode(text, **kwargs)
    ids = gpt2.encode(text, allowed_special="all")
    assert ids.count(50256) == 2 and gpt2.decode(ids) == text


def test_decode_bytes_equals_tiktoken(gpt2, tiktoken_gpt2):
    ids = list(range(0, 50257, 97)) + [50256]
    assert gpt2.decode_bytes(ids) == tiktoken_gpt2.decode_bytes(ids)
    assert gpt2.decode(ids) == tiktoken_gpt2.decode(ids)


def test_hugging_face_file_names_give_the_same_tokenizer(gpt2, tmp_path):
    folder = require_reference("gpt2")
    hf = ref_numpy.Tokenizer.from_dir(as_hf_files(folder / "encoder.json", folder / "vocab.bpe", tmp_path))
    assert type(hf) is GPT2Tokenizer and hf.ranks == gpt2.ranks and hf.vocab == gpt2.vocab


def test_explain_hello(gpt2):
    steps = gpt2.explain("hello")
    assert [step.pair for step in steps] == [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o")]
    assert steps[-1].parts == ("hello",) and gpt2.vocab["hello"] == gpt2.encode("hello")[0]
    assert [s.rank for s in steps] == [gpt2.ranks[s.pair] for s in steps]
    assert gpt2.symbols(" hé") == ["Ġ", "h", "Ã", "©"]


def test_cli_generate_from_text_decodes_what_it_generates(capsys):
    vocab = str(require_reference("gpt2"))
    common = ["generate", "--model", "distilgpt2", "--random-init", "--seed", "5", "--max-new-tokens", "5",
              "--greedy"]
    gpt2 = ref_numpy.Tokenizer.from_dir(vocab)
    prompt = "The meaning of life is"
    assert main(common + ["--prompt-ids", ",".join(map(str, gpt2.encode(prompt)))]) == 0
    generated = [int(i) for i in capsys.readouterr().out.splitlines()[1].split()[1:]]
    assert main(common + ["--vocab", vocab, "--prompt", prompt]) == 0
    assert capsys.readouterr().out == prompt + gpt2.decode(generated) + "\n"


@pytest.mark.parametrize("args, message", [
    (["--prompt", "Hi"], "--prompt needs a tokenizer: pass --vocab DIR"),
    (["--prompt", "Hi", "--prompt-ids", "1"], "either --prompt TEXT or --prompt-ids IDS"),
    (["--prompt", "Hi", "--vocab", "GPT1"], "the tokenizer openai-gpt has 40478 ids but the model has n_vocab=50257"),
])
def test_cli_generate_prompt_errors(capsys, args, message):
    args = [str(require_reference("openai-gpt")) if a == "GPT1" else a for a in args]
    assert main(["generate", "--model", "distilgpt2", "--random-init"] + args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
