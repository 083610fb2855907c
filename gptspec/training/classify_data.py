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


def read_rows(paths, *, columns: tuple[str, ...], argument: str = "--data",
              options: tuple[str, ...] = ("--text-column", "--label-column")) -> list[tuple[tuple, str, str]]:
    """(texts, label, where) of every row of .jsonl or .csv files; `columns` = the text columns
    (one for classify, premise and hypothesis for entail), then the label column; `options` the
    command-line options that name them (said when a column is missing)."""
    hint = f"name the columns with {' / '.join(options)}"

    def from_csv(path, text):
        return _csv_records(path, text, columns, argument, hint)

    rows = []
    for path in map(Path, paths):
        records = _file_records(path, argument, from_csv, f"the columns {', '.join(map(repr, columns))}")
        for where, record in records:
            for column in columns:
                if column not in record:
                    raise ValueError(f"{argument}: {where}: no {column!r} column (it has {sorted(record)}); {hint}")
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


def _csv_records(path, text, columns, argument, hint):
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{argument}: {path} has no column {missing[0]!r} (its header: {reader.fieldnames}); {hint}")
    return [(f"{path} line {reader.line_num}", record) for record in reader]


def _file_records(path: Path, argument: str, from_csv, expected: str) -> list[tuple[str, dict]]:
    """(where, record) of every row of one .csv (`from_csv(path, text)`) or .jsonl file; any other
    file is an error saying what its rows should hold (`expected`)."""
    from .data import read_text_file

    text = read_text_file(path, argument)
    if path.suffix == ".csv":
        return from_csv(path, text)
    if path.suffix == ".jsonl":
        return _jsonl_records(path, text, argument)
    raise ValueError(f"{argument}: {path} must be .jsonl or .csv (rows with {expected})")


def _jsonl_records(path, text, argument):
    from .data import jsonl_objects

    return [(f"{path} line {lineno}", record) for _, lineno, record in jsonl_objects(path, text, argument)]


def label_set(rows) -> list[str]:
    """The training labels, sorted (integers numerically): class i is labels[i]."""
    labels = {label for _, label, _ in rows}
    if len(labels) < 2:
        raise ValueError(f"--data: classification needs at least 2 labels, the data has {sorted(labels)}")
    return sorted(labels, key=lambda x: (0, int(x), "") if x.lstrip("-").isdigit() else (1, 0, x))


def special_ids(n_vocab: int) -> dict[str, int]:
    """_start_, _delimiter_, _classify_ -> the three ids after the tokenizer's vocabulary."""
    return {token: n_vocab + i for i, token in enumerate(SPECIAL_TOKENS)}


def fit_parts(parts: list[list[int]], budget: int, *, symmetric: bool = False) -> bool:
    """Cut the longest part's last token until the parts fit `budget` tokens (ties: the first part);
    True if anything was cut.  symmetric: on a tie cut every longest part, so the result does not
    depend on the parts' order (a similarity pair; it may end one token under the budget)."""
    if sum(map(len, parts)) <= budget:
        return False
    while sum(map(len, parts)) > budget:
        most = max(map(len, parts))
        longest = [i for i, part in enumerate(parts) if len(part) == most]
        for i in (longest if symmetric else longest[:1]):
            parts[i] = parts[i][:-1]
    return True


def transformed(parts: list[list[int]], special: dict[str, int]) -> list[int]:
    """GPT-1's input transformation: [_start_] part0 [_delimiter_] part1 ... [_classify_]."""
    row = [special["_start_"]]
    for i, part in enumerate(parts):
        row += ([special["_delimiter_"]] if i else []) + part
    return row + [special["_classify_"]]


def check_seq_len(seq_len: int, n_texts: int) -> None:
    needed = 2 * n_texts + 1  # start, a delimiter between texts, classify, and a token of each text
    if seq_len < needed:
        raise ValueError(f"--seq-len must be >= {needed} for this task, got {seq_len}")


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
        check_seq_len(seq_len, len(texts))
        parts = [tokenizer.encode_ordinary(text) for text in texts]
        truncated += fit_parts(parts, seq_len - len(texts) - 1)
        row = transformed(parts, special)
        ids[r, :len(row)], mask[r, :len(row)] = row, 1
        positions[r], targets[r] = len(row) - 1, index[label]
    shape = "[_start_] text [_classify_]" if len(rows[0][0]) == 1 else \
        "[_start_] premise [_delimiter_] hypothesis [_classify_]"
    notes = [f"{argument}: {n} rows, {shape} in {seq_len} tokens"
             + (f"; {truncated} rows were longer and lost the tail of their longer text" if truncated else "")]
    return ClassifyRows(ids, mask, targets, positions, notes)


# ---- similar and choice: several sequences per example -------------------------------------------

class GroupRows(ClassifyRows):
    """Examples of K token rows each: ids, attention_mask [E, K, L]; positions [E, K] (of each row's
    _classify_); labels [E].  similar: K = 2 (a-b and b-a); choice: K = the number of answers.
    The same fields and batching as ClassifyRows, one level deeper."""


def encode_pairs(rows, tokenizer, special: dict[str, int], labels: list[str], *, seq_len: int,
                 argument: str = "--data") -> GroupRows:
    """similar: each (text_a, text_b) pair as [_start_] a [_delimiter_] b [_classify_] and
    [_start_] b [_delimiter_] a [_classify_] (GPT-1 reads both orders), right-padded to seq_len;
    the longer text loses its tail first (both on a tie), once, so both orders hold the same tokens
    and a pair given as (b, a) is encoded as (a, b) is."""
    index = {label: i for i, label in enumerate(labels)}
    check_seq_len(seq_len, 2)
    n = len(rows)
    ids = np.zeros((n, 2, seq_len), np.int64)
    mask = np.zeros((n, 2, seq_len), np.int64)
    positions = np.zeros((n, 2), np.int64)
    targets = np.zeros(n, np.int64)
    truncated = 0
    for r, (texts, label, where) in enumerate(rows):
        if label not in index:
            raise ValueError(f"{argument}: {where}: label {label!r} is not one of the training labels {labels}")
        parts = [tokenizer.encode_ordinary(text) for text in texts]
        truncated += fit_parts(parts, seq_len - 3, symmetric=True)  # (a, b) and (b, a) keep the same tokens
        for k, order in enumerate((parts, parts[::-1])):
            row = transformed(order, special)
            ids[r, k, :len(row)], mask[r, k, :len(row)] = row, 1
            positions[r, k] = len(row) - 1
        targets[r] = index[label]
    notes = [f"{argument}: {n} pairs, [_start_] a [_delimiter_] b [_classify_] and b-a, in {seq_len} tokens"
             + (f"; {truncated} pairs were longer and lost the tail of their longer text" if truncated else "")]
    return GroupRows(ids, mask, targets, positions, notes)


def read_choice_rows(paths, *, context_column: str, answers_column: str, label_column: str,
                     argument: str = "--data") -> list[tuple[tuple, str, str]]:
    """(texts = (context, answer_0, ..., answer_N-1), right answer's index as a string, where) of every
    row.  JSONL: `answers_column` holds a list of strings; CSV: the answers are the columns
    `<answers_column>_0`, `<answers_column>_1`, ... (as many as the header has, at least 2).  Every
    row must have the same number of answers (the first row's)."""
    def from_csv(path, text):
        header = next(csv.reader(io.StringIO(text)), [])
        answer_columns = []
        while f"{answers_column}_{len(answer_columns)}" in header:
            answer_columns.append(f"{answers_column}_{len(answer_columns)}")
        if len(answer_columns) < 2:
            raise ValueError(f"{argument}: {path} has no answer columns {answers_column}_0, {answers_column}_1 "
                             f"(its header: {header}); name them with --answers-column")
        return [(where, {**record, answers_column: [record[c] for c in answer_columns]})
                for where, record in _csv_records(path, text, (context_column, label_column), argument,
                                                     "name the columns with --context-column / --label-column")]

    rows = []
    for path in map(Path, paths):
        records = _file_records(path, argument, from_csv,
                                f"a {context_column!r}, a list {answers_column!r} and a {label_column!r}")
        for where, record in records:
            for column in (context_column, answers_column, label_column):
                if column not in record:
                    raise ValueError(f"{argument}: {where}: no {column!r} column (it has {sorted(record)}); name "
                                     f"the columns with --context-column / --answers-column / --label-column")
            context, answers, label = record[context_column], record[answers_column], record[label_column]
            if not isinstance(context, str):
                raise ValueError(f"{argument}: {where}: {context_column!r} must be text, got {context!r}")
            if not isinstance(answers, list) or len(answers) < 2 or not all(isinstance(a, str) for a in answers):
                raise ValueError(f"{argument}: {where}: {answers_column!r} must be a list of at least 2 texts, "
                                 f"got {answers!r}")
            if rows and len(answers) != len(rows[0][0]) - 1:
                raise ValueError(f"{argument}: {where}: {len(answers)} answers, but {rows[0][2]} has "
                                 f"{len(rows[0][0]) - 1}: every row needs the same number")
            if isinstance(label, str) and label.strip().lstrip("-").isdigit():
                label = int(label)
            if isinstance(label, bool) or not isinstance(label, int):
                raise ValueError(f"{argument}: {where}: {label_column!r} must be the index of the right answer, "
                                 f"got {label!r}")
            if not 0 <= label < len(answers):
                raise ValueError(f"{argument}: {where}: {label_column!r} = {label} is not an answer index "
                                 f"[0, {len(answers)})")
            rows.append(((context, *answers), str(label), where))
    if not rows:
        raise ValueError(f"{argument}: no rows in {', '.join(map(str, paths))}")
    return rows


def encode_choices(rows, tokenizer, special: dict[str, int], n_choices: int, *, seq_len: int,
                   argument: str = "--data") -> GroupRows:
    """choice: answer i of each example as [_start_] context [_delimiter_] answer_i [_classify_],
    right-padded to seq_len, the longer of context and answer cut first in each row that is too long."""
    check_seq_len(seq_len, 2)
    n = len(rows)
    ids = np.zeros((n, n_choices, seq_len), np.int64)
    mask = np.zeros((n, n_choices, seq_len), np.int64)
    positions = np.zeros((n, n_choices), np.int64)
    targets = np.zeros(n, np.int64)
    truncated = 0
    for r, ((context, *answers), label, where) in enumerate(rows):
        if len(answers) != n_choices:
            raise ValueError(f"{argument}: {where}: {len(answers)} answers, but the model chooses among {n_choices}")
        cut = False
        for k, answer in enumerate(answers):
            parts = [tokenizer.encode_ordinary(context), tokenizer.encode_ordinary(answer)]
            cut |= fit_parts(parts, seq_len - 3)
            row = transformed(parts, special)
            ids[r, k, :len(row)], mask[r, k, :len(row)] = row, 1
            positions[r, k] = len(row) - 1
        truncated += cut
        targets[r] = int(label)
    notes = [f"{argument}: {n} examples of {n_choices} answers, [_start_] context [_delimiter_] answer "
             f"[_classify_] in {seq_len} tokens"
             + (f"; {truncated} examples had rows longer than that and lost the tail of their longer text"
                if truncated else "")]
    return GroupRows(ids, mask, targets, positions, notes)


def longest_row(task: str, rows, tokenizer) -> int:
    """Tokens of the longest transformed row of `rows` (the default --seq-len, before n_ctx caps it)."""
    def length(texts):
        return sum(len(tokenizer.encode_ordinary(t)) for t in texts) + len(texts) + 1
    if task == "choice":
        return max(length((texts[0], answer)) for texts, _, _ in rows for answer in texts[1:])
    return max(length(texts) for texts, _, _ in rows)


def read_task_rows(task: str, paths, opts: dict, *, argument: str) -> list[tuple[tuple, str, str]]:
    """The rows of `task` from the files in `paths`, columns named by opts (finetune's *_column options)."""
    if task == "choice":
        return read_choice_rows(paths, context_column=opts["context_column"], answers_column=opts["answers_column"],
                                label_column=opts["label_column"], argument=argument)
    columns = {"classify": (opts["text_column"] or "text",),
               "entail": (opts["premise_column"], opts["hypothesis_column"]),
               "similar": (opts["text_a_column"], opts["text_b_column"])}[task]
    options = {"classify": ("--text-column",), "entail": ("--premise-column", "--hypothesis-column"),
               "similar": ("--text-a-column", "--text-b-column")}[task]
    return read_rows(paths, columns=(*columns, opts["label_column"]), argument=argument,
                     options=(*options, "--label-column"))


def task_labels(task: str, rows) -> list[str]:
    """The label set saved with the model: the training labels, or for choice the answer indices."""
    if task == "choice":
        return [str(i) for i in range(len(rows[0][0]) - 1)]
    return label_set(rows)


def encode_task(task: str, rows, tokenizer, special: dict[str, int], labels: list[str], *, seq_len: int,
                argument: str):
    """ClassifyRows (classify, entail) or GroupRows (similar, choice) of `rows`."""
    if task == "similar":
        return encode_pairs(rows, tokenizer, special, labels, seq_len=seq_len, argument=argument)
    if task == "choice":
        return encode_choices(rows, tokenizer, special, len(labels), seq_len=seq_len, argument=argument)
    return encode_rows(rows, tokenizer, special, labels, seq_len=seq_len, argument=argument)
