"""ref_numpy.train_bpe / save_bpe: a byte-level BPE learnt from text, saved as OpenAI's GPT-2 files."""
from __future__ import annotations

import pytest

import ref_numpy
from ref_numpy.bpe_gpt2 import EOT
from ref_numpy.bpe_train import join_pair, learn_merges, pretoken_counts

from . import bpe_trainer
from .tokenizer_oracles import TRICKY_TEXTS, tiktoken_encoding

TEXT = bpe_trainer.training_text(max_chars=60_000)
HELD_OUT = bpe_trainer.training_text(max_chars=90_000)[60_000:]


@pytest.fixture(scope="module")
def trained():
    return ref_numpy.train_bpe(TEXT, 700)


def test_worked_example_merges_by_frequency_then_smallest_pair():
    # 'low' x5, ' lower' x2, ' newest' x6 ... the first merges are the most frequent byte pairs.
    words = pretoken_counts("low low low low low lower lower newest newest newest newest newest newest")
    # pretokens: 'low', ' low' x4, ' lower' x2, ' newest' x6  ('Ġ' is the space byte)
    assert words[("l", "o", "w")] == 1 and words[("Ġ", "l", "o", "w")] == 4
    merges = learn_merges(words, 3)
    # pair counts: ('w','e') 2+6=8; ('l','o') 7; ('o','w') 7; ('Ġ','l') ('Ġ','n') ('n','e') ('e','w') ... 6
    assert merges[0] == ("w", "e")     # 8: the most frequent
    # ' lower' is now Ġ l o we r, so ('o','w') drops to 5 and ('l','o') (7) is alone at the top
    assert merges[1] == ("l", "o")
    # now six pairs count 6: ('Ġ','lo') ('Ġ','n') ('n','e') ('e','we') ('we','s') ('s','t'); the smallest wins
    assert merges[2] == ("e", "we")
    assert join_pair(("a", "a", "a"), ("a", "a")) == ("aa", "a")


def test_exact_vocabulary_size_and_eot_last(trained):
    assert trained.n_vocab == 700
    assert trained.eot_token == 699 and trained.vocab[EOT] == 699
    assert sorted(trained.vocab.values()) == list(range(700))


def test_round_trip_and_compression(trained):
    for text in [HELD_OUT, *TRICKY_TEXTS]:
        assert trained.decode(trained.encode(text)) == text
    ids = trained.encode(HELD_OUT)
    assert len(ids) < 0.5 * len(HELD_OUT.encode("utf-8"))   # ~450 learnt tokens halve English prose


def test_save_then_from_dir_gives_the_same_ids(trained, tmp_path):
    ref_numpy.save_bpe(trained, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.json", "vocab.bpe"]
    loaded = ref_numpy.Tokenizer.from_dir(tmp_path)
    assert loaded.vocab == trained.vocab and loaded.ranks == trained.ranks
    assert loaded.encode(HELD_OUT) == trained.encode(HELD_OUT)


@pytest.mark.oracle
def test_saved_files_encode_like_tiktoken(trained, tmp_path):
    """tiktoken reads the saved files itself (checking merge order == id order) and agrees."""
    ref_numpy.save_bpe(trained, tmp_path)
    encoding = tiktoken_encoding(trained, tmp_path)
    for text in [HELD_OUT, *TRICKY_TEXTS]:
        assert trained.encode_ordinary(text) == encoding.encode_ordinary(text)


def test_same_text_same_tokenizer():
    assert ref_numpy.train_bpe(TEXT[:5000], 300).ranks == ref_numpy.train_bpe(TEXT[:5000], 300).ranks


@pytest.mark.parametrize("n_vocab", [256, 0, -1, 300.0, True])
def test_bad_vocabulary_size(n_vocab):
    with pytest.raises(ValueError, match="n_vocab must be an integer >= 257"):
        ref_numpy.train_bpe(TEXT[:100], n_vocab)


def test_text_too_small_for_the_vocabulary():
    with pytest.raises(ValueError, match="too few distinct byte pairs for n_vocab=400"):
        ref_numpy.train_bpe("ab ab ab", 400)


def test_save_refuses_a_gpt1_tokenizer(tmp_path, trained_gpt1):
    with pytest.raises(TypeError, match="GPT-2 byte-level"):
        ref_numpy.save_bpe(trained_gpt1, tmp_path)


from .tokenizer_oracles import trained_dirs, trained_gpt1  # noqa: E402,F401  (fixtures)
