"""Training data for `gptspec train`: files -> documents -> token windows -> shuffled batches.

    docs = read_documents(["a.txt", "b.txt"], split_on_blank_lines=True)   # or rows of a .jsonl
    data = make_windows(tokenize(docs, tokenizer, loss_on="all"), seq_len=128, pack=True, eos_id=50256)
    batches = BatchOrder(len(data), seed=0)
    rows = batches.take(8)                     # the next 8 row indices; batches.state() saves the position

A window is one row of the model's input: `inputs = tokens[0:-1]`, `targets = tokens[1:]`, so a
window of seq_len inputs holds seq_len + 1 tokens. Targets that must not count (padding, or the
prompt under `--loss-on completion`) hold IGNORE_INDEX, the spec's cross_entropy skips them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ref_numpy import IGNORE_INDEX      # the spec's "no loss on this target"


def n_targets(targets) -> int:
    """How many targets are predicted (not IGNORE_INDEX)."""
    return int((np.asarray(targets) != IGNORE_INDEX).sum())


@dataclass(frozen=True)
class Document:
    """One training document: its text, or a prompt and completion (JSONL rows)."""
    text: str
    prompt: str = ""          # under --loss-on completion the prompt's tokens get no loss
    source: str = ""          # "file.txt" or "file.jsonl line 3", for messages


@dataclass
class TokenWindows:
    """Fixed-length rows ready for training: inputs, targets [N, L] int64; attention_mask [N, L] or None."""
    inputs: np.ndarray
    targets: np.ndarray
    attention_mask: np.ndarray | None
    notes: list[str]          # what was skipped, truncated or dropped (printed; nothing silent)

    def __len__(self) -> int:
        return len(self.inputs)

    def rows(self, index) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        mask = None if self.attention_mask is None else self.attention_mask[index]
        return self.inputs[index], self.targets[index], mask

    def n_targets(self) -> int:
        return n_targets(self.targets)

    @staticmethod
    def count_tokens(micro_batch) -> int:
        """Real (not padding) input tokens of a micro-batch from `rows`."""
        inputs, _, mask = micro_batch
        return inputs.size if mask is None else int(mask.sum())


# -- 1. files -> documents ------------------------------------------------------------------------
def read_documents(paths, *, split_on_blank_lines: bool = False, argument: str = "--data") -> list[Document]:
    """Documents from text files (one per file, or one per blank-line-separated paragraph) and
    .jsonl files (one {"prompt": ..., "completion": ...} object per line)."""
    if not paths:
        raise ValueError(f"{argument}: no files given")
    documents: list[Document] = []
    for path in map(Path, paths):
        text = read_text_file(path, argument)
        if path.suffix == ".jsonl":
            documents += _jsonl_documents(path, text, argument)
        elif split_on_blank_lines:
            paragraphs = [p.strip("\n") for p in _blank_lines(text)]
            documents += [Document(p, source=f"{path} paragraph {i + 1}") for i, p in enumerate(paragraphs) if p.strip()]
        else:
            documents.append(Document(text, source=str(path)))
    return documents


def read_text_file(path: Path, argument: str) -> str:
    if not path.exists():
        raise ValueError(f"{argument}: {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{argument}: {path} is a folder; give the text or .jsonl files in it")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{argument}: {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise ValueError(f"{argument}: cannot read {path} ({error.strerror})") from None
    text = text.removeprefix("\ufeff")     # a byte-order mark (Excel's "CSV UTF-8") is not text
    if not text.strip():
        raise ValueError(f"{argument}: {path} is empty")
    return text


def file_warnings(data, valid=None) -> list[str]:
    """What passes the checks but is most likely a mistake, said once each: a --data file given
    twice (same contents: its rows count twice), --valid files that are --data files (the held-out
    score is then a training score), a file holding NUL bytes (binary data, not text)."""
    import hashlib

    warnings, seen = [], {}
    for argument, paths in (("--data", data or []), ("--valid", valid or [])):
        for path in map(Path, paths):
            try:
                content = path.read_bytes()
            except OSError:
                continue        # read_text_file says why
            digest = hashlib.sha256(content).hexdigest()
            if digest in seen:
                first_argument, first = seen[digest]
                what = ("its rows count twice in training" if argument == first_argument == "--data" else
                        "held-out rows are training rows, so the held-out score measures training"
                        if argument != first_argument else "its rows count twice")
                warnings.append(f"{argument} {path} has the same contents as {first_argument} {first}: {what}")
            else:
                seen[digest] = (argument, path)
            nul = content.count(0)
            if nul:
                warnings.append(f"{argument} {path} holds {nul} NUL bytes of {len(content)}: binary data, not text?")
    return warnings


def _blank_lines(text: str) -> list[str]:
    import re
    return re.split(r"\n[ \t\r]*\n", text.replace("\r\n", "\n"))


def jsonl_objects(path: Path, text: str, argument: str, expected: str = "a JSON object") -> list[tuple]:
    """(where: '--data: file line N', N, the object) for each non-blank line of a .jsonl file's text; a
    line that is not valid JSON or not an object (`expected` says what it should hold) is an error."""
    objects = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{argument}: {path} line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected {expected}, got {type(row).__name__}")
        objects.append((where, lineno, row))
    return objects


def _jsonl_documents(path: Path, text: str, argument: str) -> list[Document]:
    documents = []
    for where, lineno, row in jsonl_objects(path, text, argument, 'an object with "prompt" and "completion"'):
        for field in ("prompt", "completion"):
            if field not in row:
                raise ValueError(f"{where}: missing field {field!r} (each row needs \"prompt\" and \"completion\")")
            if not isinstance(row[field], str):
                raise ValueError(f"{where}: field {field!r} must be a string, got {type(row[field]).__name__}")
        documents.append(Document(row["completion"], prompt=row["prompt"], source=f"{path} line {lineno}"))
    return documents


# -- 2. documents -> token ids --------------------------------------------------------------------
@dataclass
class TokenizedDocument:
    ids: list[int]
    n_prompt: int             # the first n_prompt tokens are never targets (0 unless --loss-on completion)


def tokenize(documents: list[Document], tokenizer, *, loss_on: str = "all") -> tuple[list[TokenizedDocument], list[str]]:
    """Token ids of each document (prompt then completion), skipping documents of < 2 tokens.

    Special-token text inside a document ('<|endoftext|>' typed in a file) is encoded as ordinary
    text: only the separator added between documents is the real end-of-text token.
    Returns (documents, notes); raises if nothing is left to train on.
    """
    if loss_on not in ("all", "completion"):
        raise ValueError(f"--loss-on must be 'all' or 'completion', got {loss_on!r}")
    if loss_on == "completion" and not any(doc.prompt for doc in documents):
        raise ValueError("--loss-on completion needs .jsonl data with \"prompt\" and \"completion\" fields")
    kept, short = [], []
    for doc in documents:
        prompt = tokenizer.encode_ordinary(doc.prompt) if doc.prompt else []
        ids = prompt + tokenizer.encode_ordinary(doc.text)
        no_target = loss_on == "completion" and len(ids) == len(prompt)
        if len(ids) < 2 or no_target:
            short.append(doc.source)
            continue
        kept.append(TokenizedDocument(ids, len(prompt) if loss_on == "completion" else 0))
    notes = []
    if short:
        notes.append(f"skipped {len(short)} document(s) shorter than 2 tokens or without completion tokens "
                     f"(first: {short[0]})")
    if not kept:
        raise ValueError(f"no document has 2 or more tokens to train on ({len(short)} skipped, first: "
                         f"{short[0] if short else 'none'})")
    return kept, notes


# -- 3. token ids -> windows ----------------------------------------------------------------------
def make_windows(documents: list[TokenizedDocument], *, seq_len: int, pack: bool, eos_id: int | None,
                 pad_id: int = 0) -> TokenWindows:
    """Rows of seq_len inputs and targets.

    pack=True: documents joined with eos_id between them and cut into windows of seq_len + 1 tokens
    that overlap by one (window k is stream[k*L : k*L + L + 1]), so every token is a target once;
    the tail shorter than a window is dropped (and said so).
    pack=False: each document (+ eos_id) padded or truncated to seq_len + 1 tokens, with an
    attention mask; `ref_numpy.shift_targets` puts IGNORE_INDEX on padding targets.
    """
    if pack and eos_id is None:
        raise ValueError("--pack joins documents with an end-of-text token, and this tokenizer has none "
                         "(GPT-1's): train without --pack")
    suffix = [] if eos_id is None else [eos_id]
    tokens = [doc.ids + suffix for doc in documents]
    # is_target[i]: token i may be predicted (not part of a prompt)
    is_target = [[j >= doc.n_prompt for j in range(len(ids))] for doc, ids in zip(documents, tokens)]
    window = seq_len + 1
    if pack:
        stream = np.fromiter((t for ids in tokens for t in ids), dtype=np.int64)
        counts = np.fromiter((f for flags in is_target for f in flags), dtype=bool)
        n_windows = (len(stream) - 1) // seq_len
        if n_windows == 0:
            raise ValueError(f"the data has {len(stream)} tokens: not enough for one window of --seq-len {seq_len} "
                             f"(+1); give more text or a smaller --seq-len")
        starts = np.arange(n_windows)[:, None] * seq_len + np.arange(window)[None, :]
        ids, target_ok = stream[starts], counts[starts]
        inputs, targets = ids[:, :-1], np.where(target_ok[:, 1:], ids[:, 1:], IGNORE_INDEX)
        dropped = len(stream) - 1 - n_windows * seq_len
        notes = [f"packed {len(stream)} tokens into {n_windows} windows of {seq_len}"
                 + (f"; the last {dropped} tokens do not fill a window and are not used" if dropped else "")]
        return TokenWindows(inputs, targets, None, notes)
    from ref_numpy import pad_or_truncate, shift_targets

    truncated = sum(len(ids) > window for ids in tokens)
    ids, mask = pad_or_truncate(tokens, window, pad_id, side="right")
    inputs, targets, attention_mask = shift_targets(ids, mask, ignore_index=IGNORE_INDEX)
    target_ok = np.zeros(ids.shape, dtype=bool)
    for row, flags in enumerate(is_target):
        target_ok[row, :min(len(flags), window)] = flags[:window]
    targets = np.where(target_ok[:, 1:], targets, IGNORE_INDEX)
    notes = [f"{len(tokens)} documents, each padded or truncated to {seq_len} + 1 tokens"
             + (f"; {truncated} were longer and lost their tail (use --pack to keep it)" if truncated else "")]
    return TokenWindows(np.asarray(inputs, np.int64), np.asarray(targets, np.int64),
                        None if attention_mask is None else np.asarray(attention_mask, np.int64), notes)


# -- 4. the order of rows -------------------------------------------------------------------------
class BatchOrder:
    """An endless sequence of row indices: epoch e is a permutation of range(n_rows) drawn from
    numpy.random.default_rng([seed, e]); a batch takes the next rows, running into the next epoch
    when this one ends. Its position (epoch, offset) is the whole state, so a resumed run draws
    exactly the rows an uninterrupted one would."""

    def __init__(self, n_rows: int, seed: int, *, shuffle: bool = True, epoch: int = 0, offset: int = 0):
        if n_rows <= 0:
            raise ValueError("no training rows")
        self.n_rows, self.seed, self.shuffle = n_rows, seed, shuffle
        self.epoch, self.offset = epoch, offset

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n_rows)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)

    def take(self, n: int) -> np.ndarray:
        """The next n row indices."""
        out = []
        while n > 0:
            chunk = self._order(self.epoch)[self.offset:self.offset + n]
            out.append(chunk)
            n -= len(chunk)
            self.offset += len(chunk)
            if self.offset == self.n_rows:
                self.epoch, self.offset = self.epoch + 1, 0
        return np.concatenate(out)

    def state(self) -> dict:
        return {"n_rows": self.n_rows, "seed": self.seed, "shuffle": self.shuffle,
                "epoch": self.epoch, "offset": self.offset}

    @classmethod
    def from_state(cls, state: dict) -> "BatchOrder":
        return cls(state["n_rows"], state["seed"], shuffle=state["shuffle"], epoch=state["epoch"],
                   offset=state["offset"])
