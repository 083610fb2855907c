"""One process at a time in a run folder: DIR/.lock, held (flock) while a command trains there.

A second `gptspec train/finetune` on the same folder is refused with the holder's pid, instead of
two processes interleaving their checkpoints. The lock is the kernel's (flock), so a process that
dies -- even by SIGKILL -- releases it; the file stays (removing it would let a waiting process
and a new one lock two different files).
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:     # not POSIX: no lock (one process per folder is then the user's care)
    fcntl = None

LOCK_FILE = ".lock"


class RunLock:
    def __init__(self, folder, argument: str = "--out"):
        self.folder, self.argument, self.fd = Path(folder), argument, None

    def acquire(self) -> "RunLock":
        """Lock DIR (created if missing) or raise ValueError naming the process that holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "a process"
                os.close(fd)
                raise ValueError(f"{self.argument} {self.folder} is in use by another gptspec process ({holder}, "
                                 f"see {self.folder / LOCK_FILE}): wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)       # closing drops the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
