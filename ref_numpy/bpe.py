"""Byte-pair encoding, the part GPT-1 and GPT-2 share: the merge loop and the two data files.

A BPE tokenizer cuts a word into symbols (UTF-8 bytes for GPT-2, characters for GPT-1) and then
keeps joining the adjacent pair that was learned earliest -- the lowest rank, i.e. the earliest
line of the merges file -- until no adjacent pair is in the merges table. The final parts are
looked up in the vocabulary (token string -> id).

Files: a vocabulary JSON object {"token": id, ...} (OpenAI's encoder.json, Hugging Face's
vocab.json) and a merges text file, one "left right" pair per line after an optional
"#version" header (OpenAI's vocab.bpe, Hugging Face's merges.txt). Bad files fail here with the
file name and line.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

Ranks = dict[tuple[str, str], int]

# Unicode White_Space, as a regex character-class body. It is what \s means in the `regex` module
# and in Rust (tiktoken, Hugging Face tokenizers), not Python's str.isspace (which adds \x1c-\x1f).
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


class MergeStep(NamedTuple):
    """One step of `merge`: the pair joined, its rank (merges-file line order), the parts after."""
    pair: tuple[str, str]
    rank: int
    parts: tuple[str, ...]


def merge(parts: list[str], ranks: Ranks, steps: list[MergeStep] | None = None) -> list[str]:
    """Apply merges to `parts` until none applies (the loop of OpenAI's encoder.py / minGPT's bpe.py).

    Each round picks the adjacent pair of lowest rank (leftmost on ties) and joins every
    occurrence of it from left to right, so 'a a a' with the merge 'a a' becomes 'aa a'.
    If `steps` is a list, one MergeStep per round is appended to it ("show your work").
    """
    parts = list(parts)
    no_merge = len(ranks)  # larger than every rank
    while len(parts) > 1:
        pair_ranks = [ranks.get(pair, no_merge) for pair in zip(parts, parts[1:])]
        rank = min(pair_ranks)
        if rank == no_merge:
            break
        at = pair_ranks.index(rank)
        left, right = parts[at], parts[at + 1]
        if pair_ranks.count(rank) == 1:  # the usual case: the pair occurs once (ranks are unique per pair)
            parts[at:at + 2] = [left + right]
        else:
            parts = _join_every(parts, left, right)
        if steps is not None:
            steps.append(MergeStep((left, right), rank, tuple(parts)))
    return parts


def _join_every(parts: list[str], left: str, right: str) -> list[str]:
    joined, i, n = [], 0, len(parts)
    while i < n:
        if i + 1 < n and parts[i] == left and parts[i + 1] == right:
            joined.append(left + right)
            i += 2
        else:
            joined.append(parts[i])
            i += 1
    return joined


def _read_text(path: Path) -> str:
    try:
        # newline="": keep every character as stored; line ends are handled by the readers.
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None


def _json_line(text: str, key: str) -> str:
    """'line N' of a key in a JSON text, for error messages (best effort)."""
    for spelling in (json.dumps(key), json.dumps(key, ensure_ascii=False)):
        at = text.find(spelling)
        if at >= 0:
            return f"line {text.count(chr(10), 0, at) + 1}"
    return f"entry {key!r}"


def read_vocab(path) -> dict[str, int]:
    """token string -> id from a JSON vocabulary file; ids must be distinct non-negative integers."""
    path = Path(path)
    text = _read_text(path)

    def no_duplicate_keys(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise ValueError(f"{path}, {_json_line(text, key)}: token {key!r} appears twice")
            seen[key] = value
        return seen

    try:
        vocab = json.loads(text, object_pairs_hook=no_duplicate_keys)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {error.lineno} column {error.colno}: not valid JSON ({error.msg})") from None
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"{path}: expected a non-empty JSON object mapping token strings to ids")
    token_of_id = {}
    for token, token_id in vocab.items():
        if type(token_id) is not int or token_id < 0:
            raise ValueError(f"{path}, {_json_line(text, token)}: the id of {token!r} must be a non-negative "
                             f"integer, got {token_id!r}")
        if token_id in token_of_id:
            raise ValueError(f"{path}, {_json_line(text, token)}: tokens {token_of_id[token_id]!r} and {token!r} "
                             f"share the id {token_id}")
        token_of_id[token_id] = token
    return vocab


def read_merges(path, vocab: dict[str, int], vocab_path="the vocabulary") -> Ranks:
    """(left, right) -> rank from a merges file, checked against the vocabulary.

    Both symbols and their concatenation must be vocabulary tokens, otherwise the merge could
    produce a part without an id. A trailing '\\r' (Windows line ends) is ignored.
    """
    path = Path(path)
    lines = _read_text(path).split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    ranks: Ranks = {}
    first_line: dict[tuple[str, str], int] = {}
    for lineno, line in enumerate(lines, start=1):
        line = line[:-1] if line.endswith("\r") else line
        if lineno == 1 and line.startswith("#version"):
            continue
        pair = tuple(line.split(" "))
        if len(pair) != 2 or not all(pair):
            raise ValueError(f"{path}, line {lineno}: expected two symbols separated by one space, got {line!r}")
        for symbol in (*pair, pair[0] + pair[1]):
            if symbol not in vocab:
                raise ValueError(f"{path}, line {lineno}: merge {pair[0]!r} + {pair[1]!r} needs {symbol!r}, "
                                 f"which is not in {vocab_path}")
        if pair in ranks:
            raise ValueError(f"{path}, line {lineno}: merge {line!r} repeats line {first_line[pair]}")
        ranks[pair] = len(ranks)
        first_line[pair] = lineno
    return ranks
