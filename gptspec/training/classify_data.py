"""Fine-tuning data for GPT-1's classification tasks (`gptspec finetune --task classify|entail`).

    rows = read_rows(["train.jsonl"], columns=("text", "label"))          # or a .csv with a header
    labels = label_set(rows)                                               # sorted; saved with the model
    data = encode_rows(rows, tokenizer, special, labels, seq_len=128)

GPT-1's input transformations (Radford et al. 2018, figure 1): classification puts the text between
a start and an extract token, `[_start_] text [_classify_]`; entailment joins premise and
hypothesis with a delimiter, `[_start_] premise [_delimiter_] hypothesis [_classify_]`. The head
reads the last layer's hidden state at `_classify_`. The three tokens are new ids after the
tokenizer's last one (wte grows by three rows: ref_numpy.add_tokens). Texts too long for --seq-len
lose their tails (the longer text first), and the command says how many rows were cut.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPECIAL_TOKENS = ("_start_", "_delimiter_", "_classify_")


@dataclass
class ClassifyRows:
    """ids, attention_mask [N, L] int64; labels, positions (of _classify_) [N] int64."""
    ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray
    positions: np.ndarray
    notes: list

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, index):
        return self.ids[index], self.labels[index], self.positions[index], self.attention_mask[index]

    @staticmethod
    def count_tokens(micro_batch) -> int:
        return int(micro_batch[3].sum())


TASK_COLUMNS = {"classify": ("text",), "entail": ("premise", "hypothesis")}


def read_rows(paths, *, columns: tuple[str, ...], argument: str = "--data") -> list[tuple[tuple, str, str]]:
    """(texts, label, where) of every row of .jsonl or .csv files; `columns` = the text columns
    (one for classify, premise and hypothesis for entail), then the label column."""
    from .data import read_text_file

    rows = []
    for path in map(Path, paths):
        text = read_text_file(path, argument)
        if path.suffix == ".csv":
            records = _csv_records(path, text, columns, argument)
        elif path.suffix == ".jsonl":
            records = _jsonl_records(path, text, argument)
        else:
            raise ValueError(f"{argument}: {path} must be .jsonl or .csv (rows with the columns "
                             f"{', '.join(map(repr, columns))})")
        for where, record in records:
            for column in columns:
                if column not in record:
                    raise ValueError(f"{argument}: {where}: no {column!r} column (it has {sorted(record)}); "
                                     f"name the columns with --text-column / --label-column")
            texts, label = tuple(record[c] for c in columns[:-1]), record[columns[-1]]
            for column, value in zip(columns, texts):
                if not isinstance(value, str):
                    raise ValueError(f"{argument}: {where}: {column!r} must be text, got {value!r}")
            if isinstance(label, bool) or not isinstance(label, (str, int)):
                raise ValueError(f"{argument}: {where}: {columns[-1]!r} must be a string or an integer, "
                                 f"got {label!r}")
            rows.append((texts, str(label), where))
    if not rows:
        raise ValueError(f"{argument}: no rows in {', '.join(map(str, paths))}")
    return rows


def _csv_records(path, text, columns, argument):
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{argument}: {path} has no column {missing[0]!r} (its header: {reader.fieldnames}); "
                         f"name the columns with --text-column / --label-column")
    return [(f"{path} line {reader.line_num}", record) for record in reader]


def _jsonl_records(path, text, argument):
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{argument}: {path} line {lineno}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{argument}: {path} line {lineno}: expected a JSON object")
        records.append((f"{path} line {lineno}", record))
    return records


def label_set(rows) -> list[str]:
    """The training labels, sorted (integers numerically): class i is labels[i]."""
    labels = {label for _, label, _ in rows}
    if len(labels) < 2:
        raise ValueError(f"--data: classification needs at least 2 labels, the data has {sorted(labels)}")
    return sorted(labels, key=lambda x: (0, int(x), "") if x.lstrip("-").isdigit() else (1, 0, x))


def special_ids(n_vocab: int) -> dict[str, int]:
    """_start_, _delimiter_, _classify_ -> the three ids after the tokenizer's vocabulary."""
    return {token: n_vocab + i for i, token in enumerate(SPECIAL_TOKENS)}


def encode_rows(rows, tokenizer, special: dict[str, int], labels: list[str], *, seq_len: int,
                argument: str = "--data") -> ClassifyRows:
    """[_start_] text [_classify_] or [_start_] premise [_delimiter_] hypothesis [_classify_],
    right-padded to seq_len, the longer text cut first when the row does not fit."""
    index = {label: i for i, label in enumerate(labels)}
    n = len(rows)
    ids = np.zeros((n, seq_len), np.int64)
    mask = np.zeros((n, seq_len), np.int64)
    positions = np.zeros(n, np.int64)
    targets = np.zeros(n, np.int64)
    truncated = 0
    for r, (texts, label, where) in enumerate(rows):
        if label not in index:
            raise ValueError(f"{argument}: {where}: label {label!r} is not one of the training labels {labels}")
        n_special = len(texts) + 1                       # start, a delimiter between texts, classify
        if seq_len < n_special + len(texts):
            raise ValueError(f"--seq-len must be >= {n_special + len(texts)} for this task, got {seq_len}")
        parts = [tokenizer.encode_ordinary(text) for text in texts]
        if sum(map(len, parts)) > seq_len - n_special:
            truncated += 1
            while sum(map(len, parts)) > seq_len - n_special:
                longest = max(range(len(parts)), key=lambda i: len(parts[i]))
                parts[longest] = parts[longest][:-1]
        row = [special["_start_"]]
        for i, part in enumerate(parts):
            row += ([special["_delimiter_"]] if i else []) + part
        row.append(special["_classify_"])
        ids[r, :len(row)], mask[r, :len(row)] = row, 1
        positions[r], targets[r] = len(row) - 1, index[label]
    shape = "[_start_] text [_classify_]" if len(rows[0][0]) == 1 else \
        "[_start_] premise [_delimiter_] hypothesis [_classify_]"
    notes = [f"{argument}: {n} rows, {shape} in {seq_len} tokens"
             + (f"; {truncated} rows were longer and lost the tail of their longer text" if truncated else "")]
    return ClassifyRows(ids, mask, targets, positions, notes)
