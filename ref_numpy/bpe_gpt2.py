"""GPT-2's byte-level BPE: OpenAI's encoder.py made fast, with ids identical to tiktoken's "gpt2".

Text -> ids:
  1. pre-tokenize with PATTERN into contractions, ' '+letters, ' '+digits, ' '+other symbols and
     whitespace; BPE never merges across these pre-tokens,
  2. write each pre-token's UTF-8 bytes as printable characters (bytes_to_unicode: byte 32 ' ' is
     'Ġ', byte 10 '\\n' is 'Ċ'), the alphabet encoder.json and vocab.bpe are written in,
  3. bpe.merge joins the symbols by rank; every final part is a token of the vocabulary.
Decoding concatenates the tokens' bytes and decodes them as UTF-8 (errors="replace" by default, so
ids that cut a character in two show U+FFFD).

Lone surrogates ('\\ud800') fit in a Python str but not in UTF-8. Like tiktoken, encode first
rewrites such text through UTF-16 (surrogatepass in, replace out): a high+low surrogate pair
becomes the character it stands for, a lone surrogate becomes U+FFFD. Hence decode(encode(s)) == s
for every str without surrogates, and equals the rewritten str otherwise.
"""
from __future__ import annotations

import re
from pathlib import Path

import regex

from .bpe import WHITESPACE, MergeStep, Ranks, merge, read_merges, read_vocab
from .tokenizer import Tokenizer

PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"

# Cache units: whitespace, then non-whitespace. Before each unit boundary stands a non-whitespace
# character and after it whitespace (PATTERN's \s is WHITESPACE, in `regex` as in tiktoken), and no
# pre-token holds that combination, so none crosses a boundary; PATTERN has no look-behind, so each
# unit pre-tokenizes on its own exactly as inside the text. Stdlib `re` finds these units ~4x faster
# than `regex` runs PATTERN.
UNIT = re.compile(f"[{WHITESPACE}]*[^{WHITESPACE}]+|[{WHITESPACE}]+")


def bytes_to_unicode() -> dict[int, str]:
    """byte -> printable character. The 188 printable Latin-1 bytes stand for themselves; the other
    68 (controls, space, ...) become chr(256), chr(257), ... in byte order, so merges files stay text."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    mapping, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + shifted)
            shifted += 1
    return mapping


BYTE_SYMBOLS = bytes_to_unicode()
BYTE_OF_SYMBOL = {symbol: byte for byte, symbol in BYTE_SYMBOLS.items()}


def without_surrogates(text: str) -> str:
    """tiktoken's repair of strings UTF-8 cannot encode: pairs joined, lone surrogates -> U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def token_bytes(token: str) -> bytes:
    r"""The bytes a vocabulary token stands for: 'ĠhÃ©' -> b' h\xc3\xa9' (' hé' in UTF-8)."""
    try:
        return bytes(map(BYTE_OF_SYMBOL.__getitem__, token))
    except KeyError:  # an added token outside the byte alphabet stands for its own text
        return token.encode("utf-8")


class GPT2Tokenizer(Tokenizer):
    """Byte-level BPE of GPT-2 (any size: they share one vocabulary). n_vocab 50257, eot_token 50256."""

    def __init__(self, vocab: dict[str, int], ranks: Ranks, name: str = "gpt2"):
        missing = [symbol for symbol in BYTE_SYMBOLS.values() if symbol not in vocab]
        if missing:
            raise ValueError(f"{name}: not a byte-level vocabulary, it lacks the byte symbols {missing[:8]}")
        super().__init__(name, vocab, ranks, {EOT: vocab[EOT]} if EOT in vocab else {})
        self.pattern = regex.compile(PATTERN)
        self._bytes_of = {token_id: token_bytes(token) for token, token_id in vocab.items()}

    @classmethod
    def from_files(cls, vocab_path, merges_path, *, vocab: dict[str, int] | None = None) -> "GPT2Tokenizer":
        """From encoder.json + vocab.bpe (OpenAI) or vocab.json + merges.txt (Hugging Face)."""
        vocab = vocab if vocab is not None else read_vocab(vocab_path)
        return cls(vocab, read_merges(merges_path, vocab, vocab_path), name=Path(vocab_path).parent.name or "gpt2")

    # -- the steps ---------------------------------------------------------------------------
    def pretokenize(self, text: str) -> list[str]:
        """The pre-tokens of `text` (step 1): [' Hello', ',', ' world']."""
        return self.pattern.findall(without_surrogates(text))

    def symbols(self, word: str) -> list[str]:
        """The byte symbols BPE starts from (step 2): ' hé' -> ['Ġ', 'h', 'Ã', '©']."""
        # Latin-1 turns each byte into the character of the same number; translate maps all at once.
        return list(word.encode("utf-8").decode("latin-1").translate(BYTE_SYMBOLS))

    def encode_word(self, word: str) -> tuple[int, ...]:
        """Token ids of one pre-token (step 3), uncached."""
        return tuple(map(self.vocab.__getitem__, merge(self.symbols(word), self.ranks)))

    def explain(self, word: str) -> list[MergeStep]:
        """The merges BPE applies to one pre-token: [(pair, rank, parts after), ...]."""
        pieces = self.pretokenize(word)
        if pieces != [word]:
            raise ValueError(f"explain() takes one pre-token, but {word!r} pre-tokenizes into {pieces}")
        steps: list[MergeStep] = []
        merge(self.symbols(word), self.ranks, steps)
        return steps

    # -- the cached path used by encode ------------------------------------------------------
    def _units(self, text: str) -> list[str]:
        return UNIT.findall(text if text.isascii() else without_surrogates(text))

    def _unit_words(self, unit: str) -> list[str]:
        return self.pattern.findall(unit)

    # -- decoding ----------------------------------------------------------------------------
    def decode_bytes(self, ids) -> bytes:
        """The bytes the tokens stand for, concatenated."""
        return b"".join(map(self._bytes_of.__getitem__, self._checked_ids(ids)))

    def decode(self, ids, errors: str = "replace") -> str:
        """Text of `ids`; `errors` as in bytes.decode ('replace', 'strict', 'ignore', ...)."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)
