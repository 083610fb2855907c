"""The tokenizer interface shared by GPT-1 and GPT-2 (tiktoken's API), and `Tokenizer.from_dir`.

    tok = Tokenizer.from_dir("path/to/gpt2")      # picks GPT-1 or GPT-2 from the files present
    ids = tok.encode("Hello world")               # [15496, 995]
    tok.decode(ids)                               # 'Hello world'
    tok.explain("Hello")                          # the merge steps of one word
    tok.encode_batch(["a b", "c"]), tok.decode_batch([[64], [66]])   # tiktoken's batch API too

tiktoken's Encoding API, method for method: encode, encode_ordinary, encode_batch,
encode_ordinary_batch, encode_single_token, decode, decode_bytes, decode_batch, decode_bytes_batch,
decode_single_token_bytes, decode_tokens_bytes, eot_token, special_tokens_set, n_vocab, with its
arguments (allowed_special, disallowed_special, errors, num_threads) and its errors (ValueError for
a disallowed special token; UnknownTokenError, a KeyError and a ValueError, for an id not in the
vocabulary or a text that is not a single token).

Speed comes from one idea: a text is cut into *units* whose ids simply concatenate to the
ids of the whole text (whitespace + a run of non-whitespace, roughly a word with its punctuation),
and the ids of each distinct unit are computed once and cached. Real text repeats its units so
much that encoding mostly becomes dict look-ups done by C loops (map + chain). A second cache
keeps the ids of each distinct word (pre-token), so a new unit mostly costs a regex split.
"""
from __future__ import annotations

import operator
import re
from functools import lru_cache
from itertools import chain
from pathlib import Path

from .bpe import MergeStep, Ranks, read_vocab

GPT2_FILES = ("encoder.json", "vocab.bpe")                    # OpenAI's GPT-2 release
GPT1_FILES = ("encoder_bpe_40000.json", "vocab_40000.bpe")    # OpenAI's GPT-1 release
EOT_TEXT = "<|endoftext|>"                                    # GPT-2's end-of-text special token
HF_FILES = ("vocab.json", "merges.txt")                       # Hugging Face, either model


class UnknownTokenError(KeyError, ValueError):
    """An id not in the vocabulary, or a text/bytes that is no single token.  A KeyError, as
    tiktoken raises there, and a ValueError, as every other bad input to gptspec is."""

    def __str__(self):  # KeyError would show repr(message), quotes and all
        return str(self.args[0]) if self.args else ""


class Tokenizer:
    """Encode text to token ids and back. Subclasses: GPT2Tokenizer, GPT1Tokenizer.

    A subclass provides `_units(text)` (the cache units of a text), `_unit_words(unit)` (the
    words BPE works on), `encode_word(word)` (uncached BPE), `pretokenize`, `explain`, `decode`
    and `decode_bytes`.
    """
    CACHE_LIMIT = 1 << 18     # distinct units kept; the cache is emptied when it would grow past this
    MAX_CACHED_CHARS = 64     # longer units rarely repeat: encode them, do not keep them

    def __init__(self, name: str, vocab: dict[str, int], ranks: Ranks, special_tokens: dict[str, int]):
        self.name = name
        self.vocab = vocab                  # token string -> id, special tokens included
        self.ranks = ranks                  # (left, right) -> merge rank
        self.special_tokens = dict(special_tokens)
        self.n_vocab = max(vocab.values()) + 1
        self._token_of_id = {token_id: token for token, token_id in vocab.items()}
        self._cache: dict[str, tuple[int, ...]] = {}        # unit -> ids
        self._word_cache: dict[str, tuple[int, ...]] = {}   # word -> ids
        self._id_of_bytes: dict[bytes, int] | None = None   # built by encode_single_token on first use

    @property
    def eot_token(self) -> int | None:
        """The id of '<|endoftext|>' (GPT-2: 50256), or None for a vocabulary without one (GPT-1).

        tiktoken's property raises KeyError there, but every encoding tiktoken ships has the token;
        GPT-1 genuinely has none, and callers use eot_token as "the end-of-text id, if any" (the
        eos_id of generate, where None means never stop; the separator of packed training data).
        None says "there is none" at the one place it is read; an exception would make each of them
        catch a normal case, and a stand-in id would silently be some other token."""
        return self.special_tokens.get(EOT_TEXT)

    @property
    def special_tokens_set(self) -> set[str]:
        """The special tokens' texts, as tiktoken's Encoding.special_tokens_set."""
        return set(self.special_tokens)

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r} n_vocab={self.n_vocab} merges={len(self.ranks)}>"

    # -- encoding ---------------------------------------------------------------------------
    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, treating special-token text like any other text."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        units = self._units(text)
        cache = self._cache
        try:
            return list(chain.from_iterable(map(cache.__getitem__, units)))
        except KeyError:  # some units are new: encode each new one once, then look everything up
            pass
        unique = set(units)
        new = {unit: self._encode_unit(unit) for unit in unique.difference(cache)}
        if len(cache) + len(new) > self.CACHE_LIMIT:  # forget the units this text does not use
            kept = {unit: cache[unit] for unit in unique.intersection(cache)}
            cache.clear()
            cache.update(kept)
        cache.update(new)
        ids = list(chain.from_iterable(map(cache.__getitem__, units)))
        for unit in new:
            if len(unit) > self.MAX_CACHED_CHARS:
                del cache[unit]
        return ids

    def _encode_unit(self, unit: str) -> tuple[int, ...]:
        words = self._word_cache
        if len(words) > self.CACHE_LIMIT:
            words.clear()
        ids: list[int] = []
        for word in self._unit_words(unit):
            word_ids = words.get(word)
            if word_ids is None:
                word_ids = words[word] = self.encode_word(word)
            ids += word_ids
        return tuple(ids)

    def encode(self, text: str, *, allowed_special=frozenset(), disallowed_special="all") -> list[int]:
        """Token ids of `text`; special tokens as in tiktoken.

        allowed_special: "all" or a set of special-token strings encoded as their special id.
        disallowed_special: "all" (every special token not allowed) or a set; if the text
        contains one of them this raises ValueError instead of silently encoding it as
        ordinary text. disallowed_special=() encodes them as ordinary text.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        allowed = self._special_set(allowed_special, "allowed_special")
        disallowed = (set(self.special_tokens) - allowed if disallowed_special == "all"
                      else self._special_set(disallowed_special, "disallowed_special"))
        found = [(text.find(token), token) for token in disallowed if token in text]
        if found:
            at, token = min(found)
            raise ValueError(
                f"the text contains the special token {token!r} (at character {at}). To encode it as the "
                f"special token pass allowed_special={{{token!r}}}; to encode it as ordinary text pass "
                f"disallowed_special=() or use encode_ordinary()")
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        # re.split with a capturing group alternates: ordinary text, special token, ordinary text, ...
        for i, piece in enumerate(_special_pattern(frozenset(allowed)).split(text)):
            if i % 2:
                ids.append(self.special_tokens[piece])
            elif piece:
                ids.extend(self.encode_ordinary(piece))
        return ids

    def encode_single_token(self, text_or_bytes: str | bytes) -> int:
        """The id of the token whose text (str, as UTF-8) or bytes are exactly `text_or_bytes`;
        special tokens included.  KeyError if no single token is those bytes, as in tiktoken."""
        if isinstance(text_or_bytes, str):
            text_or_bytes = text_or_bytes.encode("utf-8")
        if not isinstance(text_or_bytes, (bytes, bytearray)):
            raise TypeError(f"text_or_bytes must be str or bytes, got {type(text_or_bytes).__name__}")
        if self._id_of_bytes is None:
            self._id_of_bytes = self._build_id_of_bytes()
        try:
            return self._id_of_bytes[bytes(text_or_bytes)]
        except KeyError:
            raise UnknownTokenError(f"{bytes(text_or_bytes)!r} is not a single token of {self.name}") from None

    def _build_id_of_bytes(self) -> dict[bytes, int]:
        id_of_bytes: dict[bytes, int] = {}
        for token_id in sorted(self._token_of_id):
            token = self.decode_single_token_bytes(token_id)
            if token in id_of_bytes:  # no single answer: refuse rather than pick one
                raise ValueError(f"{self.name}: ids {id_of_bytes[token]} and {token_id} both stand for {token!r}")
            id_of_bytes[token] = token_id
        return id_of_bytes

    def encode_ordinary_batch(self, text: list[str], *, num_threads: int = 8) -> list[list[int]]:
        """[encode_ordinary(t) for t in text], as tiktoken's (see encode_batch for num_threads)."""
        texts = self._batch(text, "text", num_threads)
        return [self.encode_ordinary(t) for t in texts]

    def encode_batch(self, text: list[str], *, num_threads: int = 8, allowed_special=frozenset(),
                     disallowed_special="all") -> list[list[int]]:
        """[encode(t, allowed_special=..., disallowed_special=...) for t in text], as tiktoken's.

        num_threads is accepted (a positive int, as tiktoken's thread pool requires) but the texts
        are encoded one after another: this BPE is Python, which threads do not run in parallel,
        and its caches are not safe to share between threads.  Unlike tiktoken, a str instead of
        a list of str is refused (tiktoken would encode each of its characters separately)."""
        texts = self._batch(text, "text", num_threads)
        return [self.encode(t, allowed_special=allowed_special, disallowed_special=disallowed_special)
                for t in texts]

    def decode_batch(self, batch, *, errors: str = "replace", num_threads: int = 8) -> list[str]:
        """[decode(ids, errors) for ids in batch], as tiktoken's (num_threads as in encode_batch)."""
        return [self.decode(ids, errors=errors) for ids in self._batch(batch, "batch", num_threads)]

    def decode_bytes_batch(self, batch, *, num_threads: int = 8) -> list[bytes]:
        """[decode_bytes(ids) for ids in batch], as tiktoken's."""
        return [self.decode_bytes(ids) for ids in self._batch(batch, "batch", num_threads)]

    @staticmethod
    def _batch(items, argument: str, num_threads) -> list:
        if isinstance(items, (str, bytes)):
            raise TypeError(f"{argument} must be a list (one entry per sequence), got a single "
                            f"{type(items).__name__}: wrap it in a list, or use the single-sequence method")
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
        return list(items)

    def _special_set(self, value, argument: str) -> set[str]:
        if value == "all":
            return set(self.special_tokens)
        if isinstance(value, str):
            raise ValueError(f"{argument} must be 'all' or a set of special tokens, got the string {value!r}")
        unknown = set(value) - set(self.special_tokens)
        if unknown:
            raise ValueError(f"{argument}: {sorted(unknown)} are not special tokens of {self.name} "
                             f"(it has {sorted(self.special_tokens)})")
        return set(value)

    # -- decoding ---------------------------------------------------------------------------
    def _checked_ids(self, ids) -> list[int]:
        """ids as Python ints (NumPy integers welcome); unknown ids fail with the offending id."""
        ids = list(map(operator.index, ids))
        unknown = [i for i in set(ids) if i not in self._token_of_id]
        if unknown:
            raise UnknownTokenError(f"token id {min(unknown)} is not in the {self.name} vocabulary "
                                    f"(n_vocab={self.n_vocab})")
        return ids

    def decode_single_token_bytes(self, token: int) -> bytes:
        """The bytes of one token id, special tokens included (GPT-1: its text with '</w>' as a
        space, the piece decode_bytes concatenates).  KeyError for an id not in the vocabulary,
        as in tiktoken."""
        token = operator.index(token)
        if token not in self._token_of_id:
            raise UnknownTokenError(f"token id {token} is not in the {self.name} vocabulary (n_vocab={self.n_vocab})")
        return self.decode_bytes([token])

    def decode_tokens_bytes(self, tokens) -> list[bytes]:
        """[decode_single_token_bytes(t) for t in tokens], as tiktoken's."""
        return [self.decode_single_token_bytes(token) for token in tokens]

    def token_string(self, token_id: int) -> str:
        """How the vocabulary file spells one token ('Ġworld' for GPT-2, 'world</w>' for GPT-1)."""
        return self._token_of_id[self._checked_ids([token_id])[0]]

    # -- subclass hooks ---------------------------------------------------------------------
    def _units(self, text: str) -> list[str]:
        raise NotImplementedError

    def _unit_words(self, unit: str) -> list[str]:
        raise NotImplementedError

    def encode_word(self, word: str) -> tuple[int, ...]:
        raise NotImplementedError

    def pretokenize(self, text: str) -> list[str]:
        raise NotImplementedError

    def explain(self, word: str) -> list[MergeStep]:
        raise NotImplementedError

    def decode_bytes(self, ids) -> bytes:
        raise NotImplementedError

    def decode(self, ids, errors: str = "replace") -> str:
        raise NotImplementedError

    # -- loading ----------------------------------------------------------------------------
    @staticmethod
    def from_dir(path) -> "Tokenizer":
        """GPT-2 or GPT-1 tokenizer from a folder, chosen by the files present.

        encoder.json + vocab.bpe -> GPT-2; encoder_bpe_40000.json + vocab_40000.bpe -> GPT-1;
        vocab.json + merges.txt (Hugging Face names) -> GPT-1 if the vocabulary has '</w>'
        word ends, else GPT-2.
        """
        from . import bpe_gpt1, bpe_gpt2  # here, not at the top: both modules subclass Tokenizer

        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
        present = {name for name in (*GPT2_FILES, *GPT1_FILES, *HF_FILES) if (folder / name).is_file()}
        if set(GPT2_FILES) <= present:
            return bpe_gpt2.GPT2Tokenizer.from_files(folder / GPT2_FILES[0], folder / GPT2_FILES[1])
        if set(GPT1_FILES) <= present:
            return bpe_gpt1.GPT1Tokenizer.from_files(folder / GPT1_FILES[0], folder / GPT1_FILES[1])
        if set(HF_FILES) <= present:
            vocab = read_vocab(folder / HF_FILES[0])
            cls = bpe_gpt1.GPT1Tokenizer if any(t.endswith("</w>") for t in vocab) else bpe_gpt2.GPT2Tokenizer
            return cls.from_files(folder / HF_FILES[0], folder / HF_FILES[1], vocab=vocab)
        raise FileNotFoundError(_missing_files_message(folder, present))


def _missing_files_message(folder: Path, present: set[str]) -> str:
    sets = {"GPT-2": GPT2_FILES, "GPT-1": GPT1_FILES, "either model (Hugging Face names)": HF_FILES}
    for model, names in sets.items():
        have = [n for n in names if n in present]
        if have:
            missing = [n for n in names if n not in present]
            return f"{folder} has {' + '.join(have)} but not {' + '.join(missing)}, needed for {model}"
    expected = "; ".join(f"{' + '.join(names)} for {model}" for model, names in sets.items())
    return f"{folder} holds no tokenizer files: expected {expected}"


@lru_cache(maxsize=16)
def _special_pattern(tokens: frozenset) -> re.Pattern:
    """A capturing alternation of the special tokens, longest first so overlapping ones match whole."""
    return re.compile("(" + "|".join(re.escape(t) for t in sorted(tokens, key=lambda t: (-len(t), t))) + ")")
