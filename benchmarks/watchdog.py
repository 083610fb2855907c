"""Run a benchmark in a subprocess under a resident-memory limit, so that a model too large for the
machine is measured ("does not fit in N GB") instead of taking the machine down.

    result = run_limited(command, limit_gb=20, env=env)
    result.returncode, result.stdout, result.stderr, result.peak_gb, result.killed, result.over_limit

The watchdog samples the resident memory (VmRSS) of the subprocess and of every process it started,
every `interval` seconds, and kills the whole process group when their sum exceeds `limit_gb`, or
when the machine's available memory (MemAvailable) falls below `reserve_gb` -- on a shared machine
other jobs' memory counts too, and the kernel's OOM killer would pick a process at random.  A
sampled peak can miss a spike shorter than `interval`; the subprocess's own ru_maxrss (which a
benchmark reports itself) does not.
"""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from typing import NamedTuple

GB = 2 ** 30


class Limited(NamedTuple):
    returncode: int
    stdout: str
    stderr: str
    peak_gb: float  # the largest sampled resident size of the process tree
    killed: str | None  # None, or why the watchdog killed it
    over_limit: bool  # killed because it exceeded limit_gb (not because the machine ran out)


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and all its descendants (Linux /proc), 0 once it has exited."""
    total, pending = 0, [pid]
    while pending:
        p = pending.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    pending += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def available_bytes() -> int:
    """The machine's MemAvailable (what can still be allocated without swapping or OOM)."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


def run_limited(command, *, limit_gb: float, reserve_gb: float = 1.0, env=None, interval: float = 0.05) -> Limited:
    """Run `command` (a list) to completion or until it breaks the limit; see the module docstring."""
    if not limit_gb > 0:
        raise ValueError(f"limit_gb must be > 0, got {limit_gb!r}")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, text=True, start_new_session=True)
        peak, killed = 0, None
        while process.poll() is None:
            rss = tree_rss_bytes(process.pid)
            peak = max(peak, rss)
            if rss > limit_gb * GB:
                killed = f"resident memory {rss / GB:.1f} GB > the {limit_gb:g} GB limit"
            elif available_bytes() < reserve_gb * GB:
                killed = (f"the machine ran out of memory (< {reserve_gb:g} GB available, this run "
                          f"{rss / GB:.1f} GB): other jobs' memory counts too")
            if killed:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                break
            time.sleep(interval)
        out.seek(0)
        err.seek(0)
        over_limit = killed is not None and killed.startswith("resident memory")
        return Limited(process.returncode, out.read(), err.read(), peak / GB, killed, over_limit)
