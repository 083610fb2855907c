"""tiktoken's Encoding API on ref_numpy.Tokenizer (issue 14, item 6): the batch methods, the
single-token methods, eot_token, with tiktoken's arguments and errors.

Against tiktoken's GPT-2 encoding built from OpenAI's files (oracle), and, without any files, on
the vocabularies trained by bpe_trainer (GPT-2 style and GPT-1 style).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ref_numpy

from .conftest import require_reference
from .tokenizer_oracles import (TRICKY_TEXTS, examples, tiktoken_encoding, trained_dirs,  # noqa: F401
                                trained_gpt1, trained_gpt2)

EOT = "<|endoftext|>"
texts = st.lists(st.text(max_size=30) | st.sampled_from(TRICKY_TEXTS), max_size=4)


@pytest.fixture(scope="module")
def gpt2():
    return ref_numpy.Tokenizer.from_dir(require_reference("gpt2"))


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2):
    return tiktoken_encoding(gpt2, require_reference("gpt2"))


def raised(call):
    """The exception type `call()` raises, or None."""
    try:
        call()
    except Exception as error:  # noqa: BLE001 -- the type is what is compared
        return type(error)
    return None


# -- against tiktoken (GPT-2, OpenAI's files) ---------------------------------------------------
@pytest.mark.oracle
@settings(max_examples=examples(20))
@given(batch=texts)
def test_batch_encoding_equals_tiktoken(gpt2, tiktoken_gpt2, batch):
    assert gpt2.encode_ordinary_batch(batch) == tiktoken_gpt2.encode_ordinary_batch(batch)
    assert gpt2.encode_batch(batch) == tiktoken_gpt2.encode_batch(batch)
    with_eot = [t + EOT for t in batch]
    assert (gpt2.encode_batch(with_eot, allowed_special="all", num_threads=1)
            == tiktoken_gpt2.encode_batch(with_eot, allowed_special="all", num_threads=1))
    assert (gpt2.encode_batch(with_eot, disallowed_special=())
            == tiktoken_gpt2.encode_batch(with_eot, disallowed_special=()))


@pytest.mark.oracle
def test_batch_encoding_refuses_special_text_like_tiktoken(gpt2, tiktoken_gpt2):
    batch = ["fine", "ends with " + EOT]
    assert raised(lambda: tiktoken_gpt2.encode_batch(batch)) is ValueError
    with pytest.raises(ValueError, match=r"special token '<\|endoftext\|>' \(at character 10\)"):
        gpt2.encode_batch(batch)
    assert raised(lambda: tiktoken_gpt2.encode_batch(batch, num_threads=0)) is ValueError
    with pytest.raises(ValueError, match="num_threads must be a positive int, got 0"):
        gpt2.encode_batch(batch, num_threads=0)


@pytest.mark.oracle
@settings(max_examples=examples(20))
@given(batch=st.lists(st.lists(st.integers(0, 50256), max_size=12), max_size=4))
def test_batch_decoding_equals_tiktoken(gpt2, tiktoken_gpt2, batch):
    """Random ids often cut a UTF-8 character: errors= decides, as in tiktoken."""
    for errors in ("replace", "ignore", "backslashreplace"):
        assert gpt2.decode_batch(batch, errors=errors) == tiktoken_gpt2.decode_batch(batch, errors=errors)
    assert gpt2.decode_bytes_batch(batch) == tiktoken_gpt2.decode_bytes_batch(batch)
    theirs = raised(lambda: tiktoken_gpt2.decode_batch(batch, errors="strict"))
    assert raised(lambda: gpt2.decode_batch(batch, errors="strict")) is theirs  # UnicodeDecodeError or None


@pytest.mark.oracle
def test_single_tokens_equal_tiktoken_for_every_id(gpt2, tiktoken_gpt2):
    for token in range(gpt2.n_vocab):  # every id, the special one included
        token_bytes = gpt2.decode_single_token_bytes(token)
        assert token_bytes == tiktoken_gpt2.decode_single_token_bytes(token), token
        assert gpt2.encode_single_token(token_bytes) == token
    assert gpt2.decode_tokens_bytes([15496, 995]) == tiktoken_gpt2.decode_tokens_bytes([15496, 995])
    for text in ("hello", " world", EOT, "é", b"\xc3"):
        assert gpt2.encode_single_token(text) == tiktoken_gpt2.encode_single_token(text), text


@pytest.mark.oracle
def test_single_token_errors_are_tiktokens(gpt2, tiktoken_gpt2):
    for not_one_token in ("hello world", "", b"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9 xyzzy"):
        assert raised(lambda: tiktoken_gpt2.encode_single_token(not_one_token)) is KeyError
        with pytest.raises(KeyError, match="is not a single token of gpt2"):
            gpt2.encode_single_token(not_one_token)
    assert raised(lambda: tiktoken_gpt2.decode_single_token_bytes(50257)) is KeyError
    assert raised(lambda: tiktoken_gpt2.decode([50257])) is KeyError
    with pytest.raises(KeyError, match="token id 50257 is not in the gpt2 vocabulary"):
        gpt2.decode([15496, 50257])
    with pytest.raises(KeyError, match="token id 50257 is not in the gpt2 vocabulary"):
        gpt2.decode_single_token_bytes(50257)
    with pytest.raises(TypeError):
        gpt2.encode_single_token(15496)
    with pytest.raises(TypeError):
        gpt2.decode_single_token_bytes("hello")


@pytest.mark.oracle
def test_eot_token_and_special_tokens_equal_tiktoken(gpt2, tiktoken_gpt2):
    assert gpt2.eot_token == tiktoken_gpt2.eot_token == 50256
    assert gpt2.special_tokens_set == tiktoken_gpt2.special_tokens_set == {EOT}
    assert gpt2.n_vocab == tiktoken_gpt2.n_vocab


# -- without OpenAI's files: the trained vocabularies --------------------------------------------
@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_every_id_is_one_token_both_ways(arch, trained_gpt1, trained_gpt2):  # noqa: F811
    tok = {"gpt1": trained_gpt1, "gpt2": trained_gpt2}[arch]
    ids = list(range(tok.n_vocab))
    pieces = tok.decode_tokens_bytes(ids)
    assert [tok.encode_single_token(piece) for piece in pieces] == ids
    assert b"".join(pieces) == tok.decode_bytes(ids)  # the pieces decode_bytes concatenates
    assert tok.decode_single_token_bytes(np.int64(ids[-1])) == pieces[-1]  # NumPy ids welcome


def test_gpt1_has_no_eot_token_and_its_single_tokens_are_normalized_words(trained_gpt1):  # noqa: F811
    """GPT-1: eot_token is None (no end-of-text token; see Tokenizer.eot_token), '<unk>' is its
    special token, and a word-final token's bytes end in the space '</w>' stands for."""
    assert trained_gpt1.eot_token is None and trained_gpt1.special_tokens_set == {"<unk>"}
    the = trained_gpt1.encode("the")
    assert len(the) == 1 and trained_gpt1.decode_single_token_bytes(the[0]) == b"the "
    assert trained_gpt1.encode_single_token("the ") == the[0]
    assert trained_gpt1.encode_single_token("<unk>") == trained_gpt1.unk_token
    with pytest.raises(KeyError, match="not a single token"):
        trained_gpt1.encode_single_token("The ")  # the vocabulary is lowercase


@settings(max_examples=examples(20))
@given(batch=texts)
def test_batches_are_the_single_calls(trained_gpt1, trained_gpt2, batch):  # noqa: F811
    for tok in (trained_gpt1, trained_gpt2):
        encoded = tok.encode_batch(batch, allowed_special="all", disallowed_special=())
        assert encoded == [tok.encode(t, allowed_special="all", disallowed_special=()) for t in batch]
        assert tok.encode_ordinary_batch(batch) == [tok.encode_ordinary(t) for t in batch]
        assert tok.decode_batch(encoded) == [tok.decode(ids) for ids in encoded]
        assert tok.decode_bytes_batch(encoded) == [tok.decode_bytes(ids) for ids in encoded]


@pytest.mark.parametrize("call, error, message", [
    (lambda tok: tok.encode_batch("one text"), TypeError, "text must be a list .* got a single str"),
    (lambda tok: tok.encode_ordinary_batch(b"bytes"), TypeError, "text must be a list .* got a single bytes"),
    (lambda tok: tok.decode_batch([[1]], num_threads=1.5), ValueError, "num_threads must be a positive int"),
    (lambda tok: tok.decode_bytes_batch([[1]], num_threads=True), ValueError, "num_threads must be a positive int"),
    (lambda tok: tok.encode_batch(["a"], allowed_special={"<|nope|>"}), ValueError, "not special tokens"),
    (lambda tok: tok.decode_batch([[0], [10**6]]), KeyError, "token id 1000000 is not in the"),
    (lambda tok: tok.decode([10**6]), ValueError, "token id 1000000 is not in the"),  # also a ValueError
    (lambda tok: tok.encode_single_token(None), TypeError, "must be str or bytes, got NoneType"),
])
def test_bad_batch_and_single_token_arguments_are_named(trained_gpt2, call, error, message):  # noqa: F811
    with pytest.raises(error, match=message):
        call(trained_gpt2)
