"""Fine-tuning data for GPT-1's classification task (`gptspec finetune --task classify`).

    rows = read_rows(["train.jsonl"], columns=("text", "label"))          # or a .csv with a header
    labels = label_set(rows)                                               # sorted; saved with the model
    data = encode_rows(rows, tokenizer, special, labels, seq_len=128)

GPT-1's input transformation for classification (Radford et al. 2018, figure 1): the text between
a start token and an extract token, `[_start_] text [_classify_]`; the head reads the last layer's
hidden state at `_classify_`. The three tokens `_start_`, `_delimiter_`, `_classify_` are new ids
after the tokenizer's last one (wte grows by three rows: ref_numpy.add_tokens). A text too long
for --seq-len loses its tail, and the command says how many did.
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


def read_rows(paths, *, columns: tuple[str, str], argument: str = "--data") -> list[tuple[str, str, str]]:
    """(text, label, where) of every row of .jsonl or .csv files; `columns` = (text column, label column)."""
    from .data import read_text_file

    rows = []
    for path in map(Path, paths):
        text = read_text_file(path, argument)
        if path.suffix == ".csv":
            records = _csv_records(path, text, columns, argument)
        elif path.suffix == ".jsonl":
            records = _jsonl_records(path, text, argument)
        else:
            raise ValueError(f"{argument}: {path} must be .jsonl or .csv (rows with a {columns[0]!r} and a "
                             f"{columns[1]!r} column)")
        for where, record in records:
            for column in columns:
                if column not in record:
                    raise ValueError(f"{argument}: {where}: no {column!r} column (it has {sorted(record)}); "
                                     f"name the columns with --text-column / --label-column")
            value, label = record[columns[0]], record[columns[1]]
            if not isinstance(value, str):
                raise ValueError(f"{argument}: {where}: {columns[0]!r} must be text, got {value!r}")
            if isinstance(label, bool) or not isinstance(label, (str, int)):
                raise ValueError(f"{argument}: {where}: {columns[1]!r} must be a string or an integer, got {label!r}")
            rows.append((value, str(label), where))
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
    """[_start_] text [_classify_], right-padded to seq_len, the text truncated to fit."""
    if seq_len < 3:
        raise ValueError(f"--seq-len must be >= 3 for [_start_] text [_classify_], got {seq_len}")
    index = {label: i for i, label in enumerate(labels)}
    n = len(rows)
    ids = np.zeros((n, seq_len), np.int64)
    mask = np.zeros((n, seq_len), np.int64)
    positions = np.zeros(n, np.int64)
    targets = np.zeros(n, np.int64)
    truncated = 0
    for r, (text, label, where) in enumerate(rows):
        if label not in index:
            raise ValueError(f"{argument}: {where}: label {label!r} is not one of the training labels {labels}")
        tokens = tokenizer.encode_ordinary(text)
        if len(tokens) > seq_len - 2:
            tokens, truncated = tokens[:seq_len - 2], truncated + 1
        row = [special["_start_"], *tokens, special["_classify_"]]
        ids[r, :len(row)], mask[r, :len(row)] = row, 1
        positions[r], targets[r] = len(row) - 1, index[label]
    notes = [f"{argument}: {n} rows, [_start_] text [_classify_] in {seq_len} tokens"
             + (f"; {truncated} texts were longer and lost their tail" if truncated else "")]
    return ClassifyRows(ids, mask, targets, positions, notes)
