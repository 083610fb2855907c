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
  3. copy it into DIR: first remove DIR/train_state.json, then replace each file by a real copy
     (written beside it, then os.replace: atomic per file), then put train_state.json back.
A crash in 1-2 leaves the previous checkpoint intact (and a stale .step-N.tmp/, removed when the
run folder is next locked); a crash in 3 leaves DIR without train_state.json or with files whose
hashes do not match it, so `--resume` falls back to the newest complete checkpoints/step-N/ (and
copies it back into DIR) instead of loading a mixture. DIR's files are copies, not hard links of
checkpoints/step-N/'s: editing one never damages the kept checkpoint.

Every consumer of a checkpoint folder (`generate`, `classify`, `train --weights`, `--resume`) reads
it through `verified_checkpoint`, which checks train_state.json's hashes first: a damaged file is a
clear error naming it, never a silently different model.

`--overwrite` moves the old run into DIR/.replaced/ and deletes it only once the new run has saved
its first checkpoint; a new run that stops before that (an error, a crash) is undone
(`abandon_if_unsaved`): the old run is put back, a new folder removed. One process at a time:
DIR/.lock (runlock.py) names the process that holds it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .runlock import LOCK_FILE, RunLock

RUN_FILE = "run.json"
STATE_FILE = "train_state.json"
LOG_FILE = "log.jsonl"
PLOT_FILE = "loss.png"
CHECKPOINTS = "checkpoints"
BEST_FILE = "best.json"
RUN_FILES = {RUN_FILE, LOG_FILE, PLOT_FILE, CHECKPOINTS, BEST_FILE}   # DIR entries that are not checkpoint files
REPLACED = ".replaced"      # --overwrite: the old run, until the new one has its first checkpoint
FORMAT = "gptspec-train-1"


class RunFolder:
    def __init__(self, path):
        self.path = Path(path)
        self.checkpoints = self.path / CHECKPOINTS

    # -- locking, starting and resuming -------------------------------------------------------
    @contextmanager
    def locked(self, argument: str, say: Callable[[str], None] = print):
        """Hold DIR/.lock (another process is refused, runlock.py) and first remove what an
        interrupted save or --overwrite left behind (clean_stale)."""
        self._created = not self.path.exists()
        with RunLock(self.path, argument):
            removed = self.clean_stale()
            if removed:
                say(f"removed what an interrupted run left behind: {', '.join(removed)}")
            yield self

    def check_start(self, *, overwrite: bool) -> None:
        """Refuse --out DIR before anything is written: a file, a folder of other files, or a run
        without --overwrite. Reads only."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out {self.path} is a file")
        entries = _entries(self.path)
        if not entries:
            return
        if RUN_FILE not in entries:
            raise ValueError(f"--out {self.path} is not empty and holds no training run: choose an empty or "
                             f"new folder (--overwrite only replaces earlier runs)")
        if not overwrite:
            step = _last_step(self.path)
            if step is None:
                raise ValueError(f"--out {self.path} holds a run that never saved a checkpoint (nothing to "
                                 f"resume): start over with --overwrite, or choose another folder")
            raise ValueError(f"--out {self.path} already holds a training run (at step {step}): continue it "
                             f"with --resume {self.path}, or start over with --overwrite")

    def start(self, identity: dict, *, overwrite: bool) -> None:
        """Make DIR a new run folder (check_start's refusals first). An earlier run is moved into
        DIR/.replaced/ (deleted after the new run's first checkpoint, put back by abandon_if_unsaved)."""
        self.check_start(overwrite=overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        self._unsaved = True        # from here on, abandon_if_unsaved undoes the start
        entries = _entries(self.path)
        if entries:
            aside = self.path / REPLACED
            shutil.rmtree(aside, ignore_errors=True)
            aside.mkdir()
            for name in entries:
                os.rename(self.path / name, aside / name)
            _fsync(self.path)
        _write_atomic(self.path / RUN_FILE, json.dumps({"format": FORMAT, **identity}, indent=2) + "\n")

    def abandon_if_unsaved(self) -> None:
        """The new run stopped before its first checkpoint: remove what it wrote and put back the run
        --overwrite moved aside, so a failed start loses nothing and leaves no stub behind."""
        if not getattr(self, "_unsaved", False):
            return
        self._unsaved = False
        for name in _entries(self.path):
            path = self.path / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        aside = self.path / REPLACED
        if aside.is_dir():
            for entry in aside.iterdir():
                os.rename(entry, self.path / entry.name)
            aside.rmdir()
        elif getattr(self, "_created", False) and not any(p.name != LOCK_FILE for p in self.path.iterdir()):
            shutil.rmtree(self.path)

    def clean_stale(self) -> list[str]:
        """Remove what an interrupted save left (checkpoints/.step-N.tmp/, DIR/.NAME.tmp) and a
        .replaced/ run whose replacement has a checkpoint. Returns what was removed."""
        removed = []
        stale = [*self.checkpoints.glob(".step-*.tmp"), *self.path.glob(".*.tmp")]
        if (self.path / REPLACED).is_dir():
            if _last_step(self.path) is None:       # killed before its first checkpoint: the old run returns
                self._unsaved = True
                self.abandon_if_unsaved()
                return [f"{self.path} (a start that never saved; the run it replaced is back)"]
            stale.append(self.path / REPLACED)
        for path in stale:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(str(path))
        return removed

    def identity(self, argument: str = "--resume") -> dict:
        """The stored run.json (for --resume), without its format tag."""
        path = self.path / RUN_FILE
        if not path.is_file():
            raise ValueError(f"{argument} {self.path}: no {RUN_FILE} there, so it is not a gptspec training run")
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"{argument} {self.path}: {path} is damaged (not valid JSON: {error})") from None
        if not isinstance(stored, dict) or stored.pop("format", None) != FORMAT:
            raise ValueError(f"{argument} {self.path}: {RUN_FILE} is not in the format {FORMAT}")
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

    def latest_step(self) -> str | None:
        """The step of DIR's latest checkpoint (or of its newest checkpoints/step-N), None if none."""
        return _last_step(self.path) if self.path.is_dir() else None

    def repair_from(self, checkpoint: Path) -> None:
        """DIR's own copy was damaged and `checkpoint` (a complete checkpoints/step-N/) is resumed:
        copy it back into DIR, so DIR again holds the latest checkpoint it claims to."""
        if checkpoint != self.path:
            self._mirror(checkpoint, sorted(p.name for p in checkpoint.iterdir()))

    # -- saving -----------------------------------------------------------------------------
    def save(self, step: int, write_files: Callable[[Path], None], state: dict) -> Path:
        """Write checkpoint `step`: `write_files(folder)` writes the backend's and tokenizer's files,
        then train_state.json records `state` and their hashes. Returns checkpoints/step-N/.
        A failed write (disk full) removes the partial folder and says which file and folder."""
        self.checkpoints.mkdir(exist_ok=True)
        final = self.checkpoints / f"step-{step}"
        temporary = self.checkpoints / f".step-{step}.tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        try:
            temporary.mkdir()
            files = self._write_temporary(temporary, step, write_files, state)
        except BaseException as error:
            shutil.rmtree(temporary, ignore_errors=True)
            if isinstance(error, OSError):
                raise OSError(error.errno, f"cannot save checkpoint step {step} in {temporary} "
                                           f"({_describe_os_error(error)}); the run folder keeps its previous "
                                           f"checkpoint") from None
            raise
        if final.exists():          # the same step saved again (a resumed run re-saving its start)
            shutil.rmtree(final)
        os.rename(temporary, final)
        _fsync(self.checkpoints)
        try:
            self._mirror(final, [*files, STATE_FILE])
        except OSError as error:
            raise OSError(error.errno, f"cannot copy checkpoint {final} into {self.path} "
                                       f"({_describe_os_error(error)}); {final} is complete: --resume "
                                       f"{self.path} continues from it") from None
        if getattr(self, "_unsaved", False):     # the new run has a checkpoint: the replaced one can go
            self._unsaved = False
            shutil.rmtree(self.path / REPLACED, ignore_errors=True)
        return final

    @staticmethod
    def _write_temporary(temporary: Path, step: int, write_files, state: dict) -> list[str]:
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
        return files

    def _mirror(self, folder: Path, files: list[str]) -> None:
        (self.path / STATE_FILE).unlink(missing_ok=True)     # DIR is "incomplete" until the end
        _fsync(self.path)
        stale = {p.name for p in self.path.iterdir()} - RUN_FILES - set(files) - {STATE_FILE}
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


def verified_checkpoint(folder, argument: str = "--weights") -> Path:
    """`folder`, checked before any consumer loads it: a checkpoint written by `gptspec
    train/finetune` (it holds train_state.json or run.json) matches its recorded hashes.
    A damaged or half-written file is an error naming it, with the newest intact checkpoint."""
    if not Path(folder).is_dir():
        return folder          # a model name or a missing path: the loader says which
    folder = Path(folder)
    if not ((folder / STATE_FILE).exists() or (folder / RUN_FILE).is_file()):
        return folder          # not written by gptspec train (a converted or fetched model): no manifest
    problem = checkpoint_problem(folder)
    if problem is None:
        return folder
    intact = [p for p in sorted((folder / CHECKPOINTS).glob("step-*"), key=_step_number, reverse=True)
              if checkpoint_problem(p) is None]
    advice = (f"the newest intact checkpoint is {intact[0]}" if intact else
              "restore the file, or train again")
    raise ValueError(f"{argument} {folder}: {problem}; {advice}")


def read_state(folder: Path) -> dict:
    state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    state.pop("format")
    state.pop("files")
    return state


def _last_step(folder: Path) -> str | None:
    """The step of DIR's latest checkpoint (or of its newest checkpoints/step-N), None if it has none."""
    try:
        return str(json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        steps = sorted((_step_number(p) for p in (folder / CHECKPOINTS).glob("step-*")), reverse=True)
        return str(steps[0]) if steps else None


def _entries(folder: Path) -> list[str]:
    """The names in `folder` (none if it does not exist) except the lock and stale temporaries."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.name not in (LOCK_FILE, REPLACED) and not p.name.endswith(".tmp"))


def _describe_os_error(error: OSError) -> str:
    """'No space left on device' (plus the file, when the OS error names one)."""
    where = f": {error.filename}" if error.filename else ""
    return f"{error.strerror or error}{where}"


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
    """target becomes a copy of source in one atomic rename. A real copy, never a hard link: a
    link would share its bytes with checkpoints/step-N/, and editing DIR's file in place would
    damage the kept checkpoint too."""
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        shutil.copyfile(source, temporary)
        _fsync(temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
