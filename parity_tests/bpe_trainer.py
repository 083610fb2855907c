"""A tiny BPE trainer: learns a few hundred merges so the tokenizers are tested on any machine.

It writes the same two files OpenAI released, so the code under test loads them exactly like the
real ones:
  gpt2-style  byte symbols, merges over GPT-2 pre-tokens, ids 0-255 bytes then one per merge,
              then <|endoftext|>, so merge order == id order as tiktoken requires
  gpt1-style  characters with '</w>' on the last one, over GPT-1 normalized words, '<unk>' = 0
Training is ref_numpy.bpe_train's textbook loop (count adjacent pairs over all words weighted by
word count, add the most frequent pair as a merge, ties: the smallest pair, rewrite the words,
repeat); here it runs for a fixed number of merges, and also over GPT-1's character symbols.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ref_numpy.bpe_gpt1 import GPT1Tokenizer, normalize, split_words
from ref_numpy.bpe_gpt2 import BYTE_SYMBOLS, EOT
from ref_numpy.bpe_train import learn_merges, pretoken_counts


def training_text(max_chars: int = 200_000) -> str:
    """English prose shipped with every CPython: the reference-manual topics of pydoc."""
    from pydoc_data.topics import topics
    return "\n".join(topics[name] for name in sorted(topics))[:max_chars]


def train_gpt2_style(text: str, n_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a byte-level BPE trained on `text` by ref_numpy.bpe_train, `n_merges` merges."""
    merges = learn_merges(pretoken_counts(text), n_merges)
    vocab = {BYTE_SYMBOLS[b]: b for b in range(256)}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab[EOT] = len(vocab)
    return vocab, merges


def train_gpt1_style(text: str, n_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a GPT-1 style BPE trained on `text` (normalized the HF way)."""
    words = Counter(split_words(normalize(text)))
    symbols = Counter({tuple(GPT1Tokenizer.symbols(word)): n for word, n in words.items()})
    merges = learn_merges(symbols, n_merges)
    vocab = {"<unk>": 0}
    for symbol in sorted({s for word in symbols for s in word}):
        vocab[symbol] = len(vocab)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return vocab, merges


def write_files(folder, vocab: dict[str, int], merges, names=("vocab.json", "merges.txt")) -> Path:
    """The vocabulary and merges files under `names` in `folder` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / names[0]).write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / names[1]).write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return folder
