"""Learning a GPT-2 style byte-level BPE from text: where encoder.json and vocab.bpe come from.

    tok = train_bpe(text, n_vocab=1024)     # 256 byte tokens + 767 merges + <|endoftext|>
    tok.encode("Hello world")               # a GPT2Tokenizer like OpenAI's, only smaller
    save_bpe(tok, "out/")                   # encoder.json + vocab.bpe: Tokenizer.from_dir("out/") reads it

The training loop is the textbook one (Sennrich et al. 2016; GPT-2 runs it over bytes):
  1. cut the text into GPT-2 pre-tokens (bpe_gpt2.PATTERN) and count each distinct one,
  2. write every pre-token as its UTF-8 bytes, one symbol per byte (the 256 base tokens),
  3. count every adjacent pair of symbols over all pre-tokens, weighted by the pre-token's count,
  4. the most frequent pair becomes the next merge (ties: the smallest pair, so runs repeat),
     every pre-token holding it is rewritten with the pair joined, and the pair counts updated,
  5. repeat until the vocabulary has n_vocab - 1 tokens, then add <|endoftext|> as the last id.
Ids: bytes 0-255 first, then one per new token in the order learnt, then <|endoftext|>. So a
token's id is its merge rank + 256, which tiktoken requires and GPT-2's own files follow.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterator

import regex

from .bpe_gpt2 import BYTE_SYMBOLS, EOT, PATTERN, GPT2Tokenizer

Symbols = tuple[str, ...]   # one pre-token as its current parts, e.g. ('Ġ', 'w', 'or', 'ld')
Pair = tuple[str, str]

N_BYTE_TOKENS = 256


def pretoken_counts(text: str) -> Counter:
    """{pre-token as byte symbols: count} (steps 1-2): ' world' -> ('Ġ', 'w', 'o', 'r', 'l', 'd')."""
    counts = Counter(regex.findall(PATTERN, text))
    return Counter({tuple(BYTE_SYMBOLS[b] for b in word.encode("utf-8")): n for word, n in counts.items()})


def most_frequent_pairs(words: Counter) -> Iterator[Pair]:
    """Yield merges one at a time, most frequent adjacent pair first (steps 3-4).

    `words` maps symbol tuples to counts; it is not modified. Instead of recounting every pair
    after each merge, only the words holding the merged pair are rewritten, and the pair counts
    change by the difference between their old and new pairs.
    """
    words = dict(words)
    pair_counts: Counter = Counter()
    for symbols, count in words.items():
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += count
    while True:
        candidates = [(-count, pair) for pair, count in pair_counts.items() if count > 0]
        if not candidates:
            return                                   # every word is a single symbol: nothing left to merge
        best = min(candidates)[1]                    # highest count, then the smallest pair
        yield best
        for symbols in [s for s in words if best[0] in s and best[1] in s]:
            joined = join_pair(symbols, best)
            if joined == symbols:
                continue
            count = words.pop(symbols)
            words[joined] = words.get(joined, 0) + count
            for pair in zip(symbols, symbols[1:]):
                pair_counts[pair] -= count
            for pair in zip(joined, joined[1:]):
                pair_counts[pair] += count


def join_pair(symbols: Symbols, pair: Pair) -> Symbols:
    """Every occurrence of `pair` joined, left to right: ('a','a','a') with ('a','a') -> ('aa','a')."""
    out, i = [], 0
    while i < len(symbols):
        if symbols[i:i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def learn_merges(words: Counter, n_merges: int) -> list[Pair]:
    """The first `n_merges` merges (fewer if the words run out of pairs)."""
    merges = []
    for pair in most_frequent_pairs(words):
        if len(merges) == n_merges:
            break
        merges.append(pair)
    return merges


def train_bpe(text: str, n_vocab: int, *, name: str = "trained-bpe") -> GPT2Tokenizer:
    """A GPT-2 style byte-level BPE tokenizer of exactly `n_vocab` ids learnt on `text`.

    n_vocab counts the 256 byte tokens and <|endoftext|> (the last id), so it must be >= 257.
    Two merges can spell the same token (('ab','c') and ('a','bc')); such a merge is kept (BPE
    needs it to reach that token from either side) but adds no id, so training runs until the
    vocabulary is full rather than for a fixed number of merges. Raises ValueError if `text`
    has too few distinct pairs to fill n_vocab ids.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if isinstance(n_vocab, bool) or not isinstance(n_vocab, int) or n_vocab < N_BYTE_TOKENS + 1:
        raise ValueError(f"n_vocab must be an integer >= {N_BYTE_TOKENS + 1} (256 bytes + <|endoftext|>), "
                         f"got {n_vocab!r}")
    vocab = {BYTE_SYMBOLS[b]: b for b in range(N_BYTE_TOKENS)}
    merges: list[Pair] = []
    pairs = most_frequent_pairs(pretoken_counts(text))
    while len(vocab) < n_vocab - 1:
        pair = next(pairs, None)
        if pair is None:
            raise ValueError(f"the training text has too few distinct byte pairs for n_vocab={n_vocab}: it yields "
                             f"at most {len(vocab) + 1} tokens; give more text or a smaller vocabulary")
        merges.append(pair)
        vocab.setdefault(pair[0] + pair[1], len(vocab))
    vocab[EOT] = len(vocab)
    return GPT2Tokenizer(vocab, {pair: rank for rank, pair in enumerate(merges)}, name=name)


def save_bpe(tokenizer: GPT2Tokenizer, folder) -> Path:
    """Write `tokenizer` as OpenAI's GPT-2 files, encoder.json + vocab.bpe, in `folder` (created).

    encoder.json maps token strings to ids; vocab.bpe lists the merges in rank order after a
    '#version: 0.2' line. Tokenizer.from_dir(folder) reads them back to the same ids.
    """
    if not isinstance(tokenizer, GPT2Tokenizer):
        raise TypeError(f"save_bpe writes GPT-2 byte-level tokenizers, got {type(tokenizer).__name__}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = sorted(tokenizer.ranks, key=tokenizer.ranks.__getitem__)
    (folder / "encoder.json").write_text(json.dumps(tokenizer.vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                      encoding="utf-8")
    return folder
