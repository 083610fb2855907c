"""GPT-1's BPE with the text normalization of Hugging Face's OpenAIGPTTokenizer (no ftfy, no spaCy).

Text -> ids:
  1. normalize like BERT's BasicTokenizer (HF tokenizers' BertNormalizer(lowercase=True)): drop
     control/format characters, turn whitespace into ' ', put spaces around CJK ideographs, strip
     accents (NFD, then drop nonspacing marks), lowercase character by character,
  2. pre-tokenize: split at spaces, every punctuation character is a word of its own,
  3. BPE per word on characters, the last one marked as a word end: 'hi' -> ['h', 'i</w>'];
     symbols missing from the vocabulary (e.g. '—', '…', CJK, emoji) become '<unk>' (id 0).
The vocabulary is lowercase, has 40478 ids and no end-of-text token (eot_token is None).

The GPT-1 release itself tokenized with ftfy + spaCy + its own text_standardize; docs/tokenizers.md
shows where the ids differ (accents, dashes, newlines). The Unicode tables of HF tokenizers are older
than Python's; for characters assigned or re-categorized after Unicode 3.2 both may disagree.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import regex

from .bpe import WHITESPACE, MergeStep, Ranks, merge, read_merges, read_vocab
from .tokenizer import Tokenizer

WORD_END = "</w>"
UNK = "<unk>"

# Cache units: runs of anything but the whitespace that survives step 1 (U+000B, U+000C and U+0085
# are whitespace but also controls, so step 1 deletes them). Step 1 works character by character,
# and NFD reorders only combining marks, which never cross a whitespace character, so a text's words
# are its units' words one after the other.
_KEPT_WHITESPACE = "\t\n\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"  # WHITESPACE minus those three
_UNIT = re.compile(f"[^{_KEPT_WHITESPACE}]+")

# Step 1 on general text. Order matters (it is HF's): controls go before whitespace becomes ' ',
# so U+0085 (a control that is also whitespace) disappears instead of becoming a space.
_CONTROL = regex.compile(r"[[\x00\ufffd\p{Cc}\p{Cf}\p{Co}\p{Cs}]--[\t\n\r]]", regex.V1)
_WHITESPACE = regex.compile(f"[{WHITESPACE}]")
_CJK = regex.compile("[\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f\U0002b740-\U0002b81f"
                     "\U0002b920-\U0002ceaf\uf900-\ufaff\U0002f800-\U0002fa1f]")  # HF's is_chinese_char
_NONSPACING_MARK = regex.compile(r"\p{Mn}")
# Step 1 on ASCII text, in one C call: \t \n \r -> ' ', the other controls deleted.
_ASCII_CLEAN = {**{c: None for c in [*range(0x20), 0x7F]}, **{ord(c): " " for c in "\t\n\r"}}

# Step 2. BERT's punctuation: ASCII punctuation (which includes $ + < = > ^ ` | ~) or category P*.
_ASCII_PUNCTUATION = r"!-/:-@\[-`{-~"
_WORD = regex.compile(rf"[\p{{P}}{_ASCII_PUNCTUATION}]|[^ \p{{P}}{_ASCII_PUNCTUATION}]+")
_ASCII_WORD = re.compile(rf"[{_ASCII_PUNCTUATION}]|[^ {_ASCII_PUNCTUATION}]+")


def normalize(text: str) -> str:
    """Step 1: 'Héllo,\\tWORLD' -> 'hello, world'."""
    if text.isascii():
        return text.translate(_ASCII_CLEAN).lower()
    text = _WHITESPACE.sub(" ", _CONTROL.sub("", text))
    text = _CJK.sub(r" \g<0> ", text)
    text = _NONSPACING_MARK.sub("", unicodedata.normalize("NFD", text))
    # Lowercase each character on its own (Rust's char::to_lowercase): str.lower alone would apply
    # the final-sigma rule ('ΑΣ' -> 'ας'), the only context rule it knows.
    return text.replace("Σ", "σ").lower()


def split_words(normalized: str) -> list[str]:
    """Step 2: 'hello, world' -> ['hello', ',', 'world']."""
    return (_ASCII_WORD if normalized.isascii() else _WORD).findall(normalized)


class GPT1Tokenizer(Tokenizer):
    """GPT-1 (openai-gpt) BPE. n_vocab 40478; '<unk>' is its only special token; eot_token is None."""

    def __init__(self, vocab: dict[str, int], ranks: Ranks, name: str = "openai-gpt"):
        if UNK not in vocab:
            raise ValueError(f"{name}: the vocabulary has no {UNK!r} token for unknown characters")
        super().__init__(name, vocab, ranks, {UNK: vocab[UNK]})
        self.unk_token = vocab[UNK]

    @classmethod
    def from_files(cls, vocab_path, merges_path, *, vocab: dict[str, int] | None = None) -> "GPT1Tokenizer":
        """From encoder_bpe_40000.json + vocab_40000.bpe (OpenAI) or vocab.json + merges.txt (HF)."""
        vocab = vocab if vocab is not None else read_vocab(vocab_path)
        name = Path(vocab_path).parent.name or "openai-gpt"
        return cls(vocab, read_merges(merges_path, vocab, vocab_path), name=name)

    # -- the steps ---------------------------------------------------------------------------
    def pretokenize(self, text: str) -> list[str]:
        """The words of `text` after normalization (steps 1 and 2)."""
        return split_words(normalize(text))

    @staticmethod
    def symbols(word: str) -> list[str]:
        """The symbols BPE starts from (step 3): 'hello' -> ['h', 'e', 'l', 'l', 'o</w>']."""
        return [*word[:-1], word[-1] + WORD_END]

    def encode_word(self, word: str) -> tuple[int, ...]:
        """Token ids of one normalized word, uncached."""
        vocab, unk = self.vocab, self.unk_token
        return tuple(vocab.get(part, unk) for part in merge(self.symbols(word), self.ranks))

    def explain(self, word: str) -> list[MergeStep]:
        """The merges BPE applies to one word: [(pair, rank, parts after), ...]."""
        words = self.pretokenize(word)
        if len(words) != 1:
            raise ValueError(f"explain() takes one word, but {word!r} normalizes into the words {words}")
        steps: list[MergeStep] = []
        merge(self.symbols(words[0]), self.ranks, steps)
        return steps

    # -- the cached path used by encode ------------------------------------------------------
    def _units(self, text: str) -> list[str]:
        return _UNIT.findall(text)

    def _unit_words(self, unit: str) -> list[str]:
        return self.pretokenize(unit)

    # -- decoding (lossy: case, accents and spacing around punctuation are gone) ---------------
    def decode_bytes(self, ids) -> bytes:
        """The tokens' text concatenated, every '</w>' a space, as UTF-8. Like GPT-2's it concatenates:
        decode_bytes(a + b) == decode_bytes(a) + decode_bytes(b), which streaming output needs."""
        tokens = map(self._token_of_id.__getitem__, self._checked_ids(ids))
        return "".join(tokens).replace(WORD_END, " ").encode("utf-8")

    def decode(self, ids, errors: str = "replace") -> str:
        """Text of `ids` as HF's BPEDecoder: each '</w>' a space, except after the last token.

        `errors` is accepted for the common interface; GPT-1 tokens are text, so nothing can fail.
        """
        ids = self._checked_ids(ids)
        text = self.decode_bytes(ids).decode("utf-8")
        return text[:-1] if ids and self._token_of_id[ids[-1]].endswith(WORD_END) else text
