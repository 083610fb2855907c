"""Tokenizer behaviour that needs no OpenAI files: vocabularies trained here by bpe_trainer.

Covers the merge loop, the cache (units must give the ids of the whole text), file loading and
its errors, the tiktoken-style special-token API, decoding, the CLI, and the oracles on the
trained vocabularies.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

import ref_numpy
from gptspec.cli import main
from ref_numpy.bpe import WHITESPACE, MergeStep, merge
from ref_numpy.bpe_gpt1 import _KEPT_WHITESPACE, GPT1Tokenizer
from ref_numpy.bpe_gpt2 import GPT2Tokenizer, without_surrogates

from . import bpe_trainer
from .tokenizer_oracles import (TRICKY_TEXTS, examples, hf_openai_gpt, tiktoken_encoding, trained_dirs,  # noqa: F401
                                trained_gpt1, trained_gpt2)

# Text that stresses the unit split: every kind of whitespace, contractions, marks, CJK, controls.
EDGY = " \t\n\r\x0b\x0c\x85\xa0\u2000\u2028\u3000\x1c\x00'sdtlmrev.,!?-_<|>aAé1٣中😀\u0301\u200b\ud800Σ"
edgy_text = st.text(st.sampled_from(EDGY), max_size=40) | st.text(max_size=40)


# -- the merge loop ---------------------------------------------------------------------------
def test_merge_joins_lowest_rank_first_and_every_occurrence():
    ranks = {("a", "b"): 0, ("b", "c"): 1, ("ab", "ab"): 2}
    steps = []
    assert merge(list("abcabab"), ranks, steps) == ["ab", "c", "abab"]
    assert steps == [MergeStep(("a", "b"), 0, ("ab", "c", "ab", "ab")),
                     MergeStep(("ab", "ab"), 2, ("ab", "c", "abab"))]


def test_merge_overlapping_pairs_join_from_the_left():
    assert merge(list("aaa"), {("a", "a"): 0}) == ["aa", "a"]
    assert merge(list("aaaa"), {("a", "a"): 0}) == ["aa", "aa"]


def test_merge_without_applicable_pairs_changes_nothing():
    steps = []
    assert merge(list("xyz"), {("a", "b"): 0}, steps) == ["x", "y", "z"] and steps == []
    assert merge(["x"], {}) == ["x"]


# -- the cache gives the ids of the whole text ---------------------------------------------------
def uncached_ids(tokenizer, text):
    """Pre-tokenize the whole text and BPE every word: the definition, without units or caches."""
    return [i for word in tokenizer.pretokenize(text) for i in tokenizer.encode_word(word)]


@settings(max_examples=examples(300))
@given(text=edgy_text)
def test_cached_units_equal_whole_text_encoding(trained_gpt2, trained_gpt1, text):
    for tokenizer in (trained_gpt2, trained_gpt1):
        assert tokenizer.encode_ordinary(text) == uncached_ids(tokenizer, text)
        # Stronger than equal ids (a small vocabulary may hide a wrong split): the same words.
        words_of_units = [w for unit in tokenizer._units(text) for w in tokenizer._unit_words(unit)]
        assert words_of_units == tokenizer.pretokenize(text)


def test_small_caches_are_emptied_and_long_units_not_kept(trained_dirs):
    tokenizer = ref_numpy.Tokenizer.from_dir(trained_dirs["gpt2-hf"])
    tokenizer.CACHE_LIMIT, tokenizer.MAX_CACHED_CHARS = 8, 5
    for text in TRICKY_TEXTS + ["a b c", "a b c d e f g h i j", "j i h g f e d c b a k"]:
        assert tokenizer.encode_ordinary(text) == uncached_ids(tokenizer, text)
        assert len(tokenizer._cache) <= 8 + len(set(tokenizer._units(text)))
        assert all(len(unit) <= 5 for unit in tokenizer._cache)


def test_unit_whitespace_is_unicode_white_space():
    """GPT-2's units rely on WHITESPACE being exactly what \\s means in its pattern."""
    every_char = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)

    def matching(pattern):
        return set(regex.findall(pattern, every_char))

    space = matching(r"\s")
    assert space == matching(f"[{WHITESPACE}]")
    # GPT-1's units split at the whitespace its normalizer keeps: all but the controls among it.
    assert matching(f"[{_KEPT_WHITESPACE}]") == {c for c in space if c in "\t\n\r" or c not in matching(r"\p{Cc}")}


# -- round trip ---------------------------------------------------------------------------------
@settings(max_examples=examples(300))
@given(text=st.text())
def test_gpt2_style_round_trip(trained_gpt2, text):
    assert trained_gpt2.decode(trained_gpt2.encode_ordinary(text)) == without_surrogates(text)


# -- loading ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, cls", [("gpt2-openai", GPT2Tokenizer), ("gpt2-hf", GPT2Tokenizer),
                                       ("gpt1-openai", GPT1Tokenizer), ("gpt1-hf", GPT1Tokenizer)])
def test_from_dir_picks_the_model_from_the_files(trained_dirs, name, cls):
    tokenizer = ref_numpy.Tokenizer.from_dir(trained_dirs[name])
    assert type(tokenizer) is cls
    twin = ref_numpy.Tokenizer.from_dir(trained_dirs[name.split("-")[0] + "-openai"])
    assert tokenizer.encode_ordinary(TRICKY_TEXTS[3]) == twin.encode_ordinary(TRICKY_TEXTS[3])


@pytest.mark.parametrize("files, message", [
    (["encoder.json"], "has encoder.json but not vocab.bpe, needed for GPT-2"),
    (["vocab_40000.bpe"], "has vocab_40000.bpe but not encoder_bpe_40000.json, needed for GPT-1"),
    (["merges.txt"], "has merges.txt but not vocab.json"),
    ([], "holds no tokenizer files: expected encoder.json + vocab.bpe"),
])
def test_from_dir_names_the_missing_file(tmp_path, files, message):
    for name in files:
        (tmp_path / name).write_text("{}")
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        ref_numpy.Tokenizer.from_dir(tmp_path)


def test_from_dir_of_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ref_numpy.Tokenizer.from_dir(tmp_path / "nope")


VOCAB = '{\n "<unk>": 0,\n "a": 1,\n "b</w>": 2,\n "ab</w>": 3\n}\n'


@pytest.mark.parametrize("vocab, merges, message", [
    ('{\n "a": 1,\n "b" 2\n}', "a b</w>\n", r"vocab.json, line 3 column 6: not valid JSON"),
    ('["a", "b"]', "a b</w>\n", "expected a non-empty JSON object"),
    ('{\n "<unk>": 0,\n "a": "1"\n}', "", r"vocab.json, line 3: the id of 'a' must be a non-negative integer"),
    ('{\n "<unk>": 0,\n "a": 0\n}', "", r"line 3: tokens '<unk>' and 'a' share the id 0"),
    ('{\n "<unk>": 0,\n "<unk>": 1\n}', "", r"line 2: token '<unk>' appears twice"),
    (VOCAB, "#version: 0.2\na b</w> c\n", r"merges.txt, line 2: expected two symbols separated by one space"),
    (VOCAB, "a b</w>\n\na b</w>\n", r"merges.txt, line 2: expected two symbols"),
    (VOCAB, "a a\n", r"merges.txt, line 1: merge 'a' \+ 'a' needs 'aa', which is not in"),
    (VOCAB, "a b</w>\nc b</w>\n", r"merges.txt, line 2: merge 'c' \+ 'b</w>' needs 'c'"),
    (VOCAB, "a b</w>\na b</w>\n", r"merges.txt, line 2: merge 'a b</w>' repeats line 1"),
    (VOCAB.replace('"<unk>": 0,', '"<pad>": 0,'), "a b</w>\n", "has no '<unk>' token"),
])
def test_malformed_files_name_the_file_and_line(tmp_path, vocab, merges, message):
    (tmp_path / "vocab.json").write_text(vocab, encoding="utf-8")
    (tmp_path / "merges.txt").write_text(merges, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        ref_numpy.Tokenizer.from_dir(tmp_path)


def test_well_formed_small_files_load_with_windows_line_ends(tmp_path):
    (tmp_path / "vocab.json").write_text(VOCAB, encoding="utf-8")
    (tmp_path / "merges.txt").write_bytes(b"#version: 0.2\r\na b</w>\r\n")
    tokenizer = ref_numpy.Tokenizer.from_dir(tmp_path)
    assert tokenizer.ranks == {("a", "b</w>"): 0}
    assert tokenizer.encode("AB b") == [3, 2]


def test_a_byte_level_vocabulary_needs_all_256_bytes(tmp_path):
    (tmp_path / "encoder.json").write_text('{"a": 0, "b": 1, "ab": 2}')
    (tmp_path / "vocab.bpe").write_text("a b\n")
    with pytest.raises(ValueError, match="not a byte-level vocabulary"):
        ref_numpy.Tokenizer.from_dir(tmp_path)


def test_not_utf8_is_named(tmp_path):
    (tmp_path / "vocab.json").write_bytes(b'{"\xff": 0}')
    (tmp_path / "merges.txt").write_text("")
    with pytest.raises(ValueError, match="vocab.json: not UTF-8 text"):
        ref_numpy.Tokenizer.from_dir(tmp_path)


# -- special tokens, as tiktoken --------------------------------------------------------------
def test_special_token_text_is_refused_unless_allowed(trained_gpt2):
    tok, eot = trained_gpt2, trained_gpt2.eot_token
    with pytest.raises(ValueError, match=r"contains the special token '<\|endoftext\|>' \(at character 2\)"):
        tok.encode("a <|endoftext|>")
    assert tok.encode("a <|endoftext|>", allowed_special="all") == tok.encode_ordinary("a ") + [eot]
    assert tok.encode("<|endoftext|>x", allowed_special={"<|endoftext|>"}) == [eot] + tok.encode_ordinary("x")
    assert tok.encode("a <|endoftext|>", disallowed_special=()) == tok.encode_ordinary("a <|endoftext|>")
    with pytest.raises(ValueError, match="contains the special token"):
        tok.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}, disallowed_special={"<|endoftext|>"})
    with pytest.raises(ValueError, match=r"\['<\|end\|>'\] are not special tokens"):
        tok.encode("x", allowed_special={"<|end|>"})
    with pytest.raises(ValueError, match="must be 'all' or a set"):
        tok.encode("x", allowed_special="<|endoftext|>")
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(b"bytes")


def test_gpt1_special_token_is_unk(trained_gpt1):
    assert trained_gpt1.special_tokens == {"<unk>": 0} and trained_gpt1.eot_token is None
    with pytest.raises(ValueError, match="special token '<unk>'"):
        trained_gpt1.encode("an <unk> here")
    ids = trained_gpt1.encode("an <unk> here", allowed_special="all")
    assert ids == trained_gpt1.encode("an") + [0] + trained_gpt1.encode("here")


# -- decoding -----------------------------------------------------------------------------------
def test_decode_checks_ids(trained_gpt2, trained_gpt1):
    for tok in (trained_gpt2, trained_gpt1):
        ids = tok.encode("the end")
        assert tok.decode(np.array(ids, dtype=np.int64)) == tok.decode(ids)
        for bad in (tok.n_vocab, -1):
            with pytest.raises(ValueError, match=f"token id {bad} is not in the"):
                tok.decode([ids[0], bad])
        with pytest.raises(TypeError):
            tok.decode([1.0])


def test_gpt2_decode_of_a_split_character(trained_gpt2):
    ids = trained_gpt2.encode("é")  # two bytes, no merge for them in a small vocabulary
    assert len(ids) == 2 and trained_gpt2.decode_bytes(ids) == "é".encode()
    assert trained_gpt2.decode(ids[:1]) == "\ufffd" and trained_gpt2.decode(ids[:1], errors="ignore") == ""
    with pytest.raises(UnicodeDecodeError):
        trained_gpt2.decode(ids[:1], errors="strict")


def test_gpt1_decode_puts_spaces_at_word_ends(trained_gpt1):
    ids = trained_gpt1.encode("The cat, the HAT.")
    assert trained_gpt1.decode(ids) == "the cat , the hat ."
    assert trained_gpt1.decode_bytes(ids) == b"the cat , the hat . "  # concatenates, for streaming


# -- explain ------------------------------------------------------------------------------------
@settings(max_examples=examples(100))
@given(word=st.text(st.sampled_from("abcdeilnorstu"), min_size=1, max_size=12))
def test_explain_replays_the_encoding(trained_gpt2, trained_gpt1, word):
    for tokenizer in (trained_gpt2, trained_gpt1):
        steps = tokenizer.explain(word)
        parts = steps[-1].parts if steps else tuple(tokenizer.symbols(word))
        assert [tokenizer.vocab[p] for p in parts] == tokenizer.encode(word)
        assert all(a.rank < b.rank for a, b in zip(steps, steps[1:]))  # merges learned in order
        assert all("".join(step.parts) == "".join(tokenizer.symbols(word)) for step in steps)


def test_explain_takes_one_word(trained_gpt2, trained_gpt1):
    with pytest.raises(ValueError, match="pre-tokenizes into"):
        trained_gpt2.explain("two words")
    with pytest.raises(ValueError, match="normalizes into the words"):
        trained_gpt1.explain("end.")


# -- independent oracles on the trained vocabularies ---------------------------------------------
def test_trained_gpt2_style_equals_tiktoken(trained_gpt2, trained_dirs):
    encoding = tiktoken_encoding(trained_gpt2, trained_dirs["gpt2-openai"])
    for text in [bpe_trainer.training_text(), *TRICKY_TEXTS]:
        assert trained_gpt2.encode_ordinary(text) == encoding.encode_ordinary(text)


def test_trained_gpt1_style_equals_hf(trained_gpt1, trained_dirs):
    hf = hf_openai_gpt(trained_dirs["gpt1-hf"])
    for text in [bpe_trainer.training_text(), *TRICKY_TEXTS]:
        assert trained_gpt1.encode(text, allowed_special="all") == hf.encode(text)


# -- command line -------------------------------------------------------------------------------
def test_cli_tokenize_and_detokenize(trained_dirs, capsys):
    folder = str(trained_dirs["gpt2-hf"])
    tokenizer = ref_numpy.Tokenizer.from_dir(folder)
    assert main(["tokenize", "--vocab", folder, "--explain", "Hello there"]) == 0
    out = capsys.readouterr().out
    ids = tokenizer.encode("Hello there")
    assert f"ids: {' '.join(map(str, ids))}" in out
    for step in tokenizer.explain(" there"):
        assert f"{step.pair[0]} + {step.pair[1]}  ->  {' '.join(step.parts)}" in out
    assert main(["detokenize", "--vocab", folder, ",".join(map(str, ids))]) == 0
    assert capsys.readouterr().out == "Hello there\n"


@pytest.mark.parametrize("argv, message", [
    (["tokenize", "a <|endoftext|>"], "pass --allow-special"),
    (["detokenize", "1", "99999"], "token id 99999 is not in the"),
    (["detokenize", "x"], "token ids must be integers"),
])
def test_cli_errors_are_one_line(trained_dirs, capsys, argv, message):
    assert main(argv[:1] + ["--vocab", str(trained_dirs["gpt2-hf"])] + argv[1:]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
