"""What the fault tests of the training CLI share (test_cli_faults*.py): tiny runs on the NumPy
backend, a snapshot of a folder's bytes (to show nothing was written or deleted), one-line errors."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import ref_numpy
from gptspec.cli import main

from . import bpe_trainer


def tiny_vocab(folder: Path) -> Path:
    """A 270-token byte-level BPE learnt on pydoc text (fast: no --train-tokenizer in each run)."""
    return ref_numpy.save_bpe(ref_numpy.train_bpe(bpe_trainer.training_text(max_chars=3000), 270), folder)


def train_args(vocab: Path) -> list[str]:
    return ["--config", "gpt2", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--n-ctx", "32",
            "--vocab", str(vocab), "--pack", "--seq-len", "8", "--batch-size", "2", "--backend", "numpy",
            "--no-progress"]


def finetune_args(vocab: Path) -> list[str]:
    return ["--config", "gpt2", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--n-ctx", "32",
            "--vocab", str(vocab), "--seq-len", "24", "--batch-size", "4", "--backend", "numpy", "--no-progress"]


def write_text_file(folder: Path) -> Path:
    path = folder / "doc.txt"
    path.write_text(bpe_trainer.training_text(max_chars=3000), encoding="utf-8")
    return path


def write_classify_csv(path: Path, *, bom: bool = False) -> Path:
    """(text, label) rows: short pydoc sentences labelled by whether they mention 'the'."""
    sentences = [s.strip() for s in bpe_trainer.training_text(max_chars=4000).split(".") if 10 < len(s.strip()) < 80]
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((s, "yes" if " the " in s else "no") for s in sentences[:24])
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (the lock file aside) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and p.name != ".lock"}


def fails(capsys, command: str, args: list[str], *messages: str, status: int = 2) -> str:
    """`gptspec command args` exits `status` with one line on stderr (besides the progress lines
    'step k/n ...' of a run that started) containing every message."""
    capsys.readouterr()
    assert main([command, *map(str, args)]) == status
    err = "".join(line + "\n" for line in capsys.readouterr().err.splitlines() if not re.match(r"step \d+/\d+ ", line))
    assert err.count("\n") == 1 and err.startswith(f"gptspec {command}: "), err
    for message in messages:
        assert message in err, err
    return err


def flip_byte(path: Path, offset: int = -100) -> None:
    """Damage a file in place: one byte inverted (a bad disk, a bad copy)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
