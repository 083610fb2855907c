"""The run folder of `gptspec train --out DIR`, and checkpoints that are written atomically.

    DIR/
      run.json                     what defines the run (model config, data, options): --resume checks it
      log.jsonl  loss.png          one row per step; the loss curve at the end
      config.json model.safetensors encoder.json vocab.bpe ... train_state.json
                                   the LATEST checkpoint, so weights.load(DIR) and
                                   `gptspec generate --weights DIR --prompt ...` read it
      checkpoints/step-N/          every checkpoint, the same files

A checkpoint is the backend's files (weights through weights.save, optimizer state) plus the
tokenizer and train_state.json (step, data position, seeds, and the sha256 of every other file),
which is written last. Saving step N:
  1. write everything into checkpoints/.step-N.tmp/, fsync each file,
  2. rename it to checkpoints/step-N/ (a rename is atomic: the folder is complete or absent),
  3. copy it into DIR: first remove DIR/train_state.json, then replace each file (os.replace,
     atomic per file), then put train_state.json back.
A crash in 1-2 leaves the previous checkpoint intact; a crash in 3 leaves DIR without
train_state.json or with files whose hashes do not match it, so `--resume` falls back to the newest
complete checkpoints/step-N/ instead of loading a mixture. weights.load(DIR) always reads a
whole weights file of one step, never a half-written one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

RUN_FILE = "run.json"
STATE_FILE = "train_state.json"
LOG_FILE = "log.jsonl"
PLOT_FILE = "loss.png"
CHECKPOINTS = "checkpoints"
BEST_FILE = "best.json"
RUN_FILES = {RUN_FILE, LOG_FILE, PLOT_FILE, CHECKPOINTS, BEST_FILE}   # DIR entries that are not checkpoint files
FORMAT = "gptspec-train-1"


class RunFolder:
    def __init__(self, path):
        self.path = Path(path)
        self.checkpoints = self.path / CHECKPOINTS

    # -- starting and resuming --------------------------------------------------------------
    def start(self, identity: dict, *, overwrite: bool) -> None:
        """Make DIR a new run folder. An existing non-empty DIR is refused unless it holds a run
        and `overwrite` is set (then that run is deleted); a folder of other files is never deleted."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out {self.path} is a file")
        if self.path.is_dir() and any(self.path.iterdir()):
            if not (self.path / RUN_FILE).is_file():
                raise ValueError(f"--out {self.path} is not empty and holds no training run: choose an empty or "
                                 f"new folder (--overwrite only replaces earlier runs)")
            if not overwrite:
                step = _last_step(self.path)
                raise ValueError(f"--out {self.path} already holds a training run (at step {step}): continue it "
                                 f"with --resume {self.path}, or start over with --overwrite")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path / RUN_FILE, json.dumps({"format": FORMAT, **identity}, indent=2) + "\n")

    def identity(self) -> dict:
        """The stored run.json (for --resume), without its format tag."""
        path = self.path / RUN_FILE
        if not path.is_file():
            raise ValueError(f"--resume {self.path}: no {RUN_FILE} there, so it is not a gptspec training run")
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.pop("format", None) != FORMAT:
            raise ValueError(f"--resume {self.path}: {RUN_FILE} is not in the format {FORMAT}")
        return stored

    def latest(self) -> tuple[Path, dict, str | None]:
        """(folder, train_state, note) of the newest complete checkpoint: DIR itself, or if its copy
        is incomplete (a save was interrupted) the newest complete checkpoints/step-N/."""
        problem = checkpoint_problem(self.path)
        if problem is None:
            return self.path, read_state(self.path), None
        for folder in sorted(self.checkpoints.glob("step-*"), key=_step_number, reverse=True):
            if checkpoint_problem(folder) is None:
                return folder, read_state(folder), f"{self.path}'s latest checkpoint is incomplete ({problem}); " \
                                                   f"resuming from {folder}"
        raise ValueError(f"--resume {self.path}: no complete checkpoint to resume from ({problem})")

    # -- saving -----------------------------------------------------------------------------
    def save(self, step: int, write_files: Callable[[Path], None], state: dict) -> Path:
        """Write checkpoint `step`: `write_files(folder)` writes the backend's and tokenizer's files,
        then train_state.json records `state` and their hashes. Returns checkpoints/step-N/."""
        self.checkpoints.mkdir(exist_ok=True)
        final = self.checkpoints / f"step-{step}"
        temporary = self.checkpoints / f".step-{step}.tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir()
        write_files(temporary)
        files = sorted(p.name for p in temporary.iterdir())
        if any((temporary / name).is_dir() for name in files):
            raise RuntimeError(f"a checkpoint is a flat folder of files; the backend wrote subfolders in {temporary}")
        hashes = {name: _sha256(temporary / name) for name in files}
        _write_atomic(temporary / STATE_FILE, json.dumps({"format": FORMAT, "step": step, **state,
                                                          "files": hashes}, indent=2) + "\n")
        for name in files:
            _fsync(temporary / name)
        _fsync(temporary)
        if final.exists():          # the same step saved again (a resumed run re-saving its start)
            shutil.rmtree(final)
        os.rename(temporary, final)
        _fsync(self.checkpoints)
        self._mirror(final, [*files, STATE_FILE])
        return final

    def _mirror(self, folder: Path, files: list[str]) -> None:
        (self.path / STATE_FILE).unlink(missing_ok=True)     # DIR is "incomplete" until the end
        _fsync(self.path)
        stale = {p.name for p in self.path.iterdir()} - RUN_FILES - set(files)
        for name in stale:                                   # files of an older checkpoint only
            if not name.startswith("."):
                (self.path / name).unlink()
        for name in files:
            if name == STATE_FILE:
                continue
            _replace_with_copy(folder / name, self.path / name)
        _replace_with_copy(folder / STATE_FILE, self.path / STATE_FILE)
        _fsync(self.path)


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint (a missing or altered file), or None."""
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        return f"{STATE_FILE} is missing in {folder}"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{state_path} is not valid JSON"
    if state.get("format") != FORMAT or not isinstance(state.get("files"), dict):
        return f"{state_path} is not a gptspec training state"
    for name, digest in state["files"].items():
        if not (folder / name).is_file():
            return f"{folder / name} is missing"
        if _sha256(folder / name) != digest:
            return f"{folder / name} does not match {STATE_FILE} (changed or half-written)"
    return None


def read_state(folder: Path) -> dict:
    state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    state.pop("format")
    state.pop("files")
    return state


def _last_step(folder: Path) -> str:
    try:
        return str(json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError):
        steps = sorted((_step_number(p) for p in (folder / CHECKPOINTS).glob("step-*")), reverse=True)
        return str(steps[0]) if steps else "no checkpoint yet"


def _step_number(path: Path) -> int:
    try:
        return int(path.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's entries to disk (folders: so a rename survives a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:      # some filesystems refuse fsync on folders; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def _replace_with_copy(source: Path, target: Path) -> None:
    """target becomes a copy of source in one atomic rename (a hard link when the filesystem allows)."""
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
        _fsync(temporary)
    os.replace(temporary, target)
