"""`gptspec` command line: discovers the subcommands in gptspec.commands."""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import sys
import traceback

from . import commands

# Exit statuses shared by the subcommands (gptspec parity documents them in its --help).
EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_BACKEND_RAISED = 0, 1, 2, 3


class BackendRaised(Exception):
    """The computation a subcommand checks raised (a crash: neither a failed check nor bad
    input).  Raise it `from` the original exception with a prefix such as "the backend raised";
    `main` prints one line naming that exception and our innermost frame it passed through, and
    exits EXIT_BACKEND_RAISED."""

    def describe(self) -> str:
        error = self.__cause__ or self
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        message = lines[0][:300] if lines else "(no message)"
        prefix = self.args[0] if self.args else "the backend raised"
        return f"{prefix} {type(error).__name__}: {message}{_where(error)}"


REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUR_PACKAGES = ("gptspec", "ref_numpy", "ms_backend", "weights", "parity_tests")


def _where(error: BaseException) -> str:
    """' at ms_backend/layers.py:57 (softmax)': the innermost frame in this project's code (a
    MindSpore error's last frames are the framework's), else the innermost frame."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames
            if os.path.relpath(os.path.abspath(f.filename), REPOSITORY).split(os.sep)[0] in OUR_PACKAGES]
    if not (ours or frames):
        return ""
    frame = (ours or frames)[-1]
    path = os.path.relpath(frame.filename, REPOSITORY) if ours else frame.filename
    return f" at {path}:{frame.lineno} ({frame.name})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptspec", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


# '-1e-3', '-.5', '-inf': argparse takes a token starting with '-' for an option unless it looks
# like '-5' or '-0.5', so `--lr -1e-3` failed with "expected one argument" before --lr's own check.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.IGNORECASE)


def attach_negative_values(argv: list[str]) -> list[str]:
    """['--lr', '-1e-3'] -> ['--lr=-1e-3']: the value reaches the option, whose check then names it."""
    joined = []
    for token in argv:
        previous = joined[-1] if joined else ""
        if NEGATIVE_NUMBER.match(token) and previous.startswith("--") and "=" not in previous and previous != "--":
            joined[-1] = f"{previous}={token}"
        else:
            joined.append(token)
    return joined


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(attach_negative_values(sys.argv[1:] if argv is None else list(argv)))
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, ImportError) as error:
        # Bad input, a missing file or a missing optional extra: one clear line, not a traceback
        # (GPTSPEC_DEBUG=1 for one).
        if os.environ.get("GPTSPEC_DEBUG"):
            raise
        print(f"gptspec {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BackendRaised as crash:
        if os.environ.get("GPTSPEC_DEBUG"):
            raise crash.__cause__ or crash
        print(f"gptspec {args.command}: error: {crash.describe()} (exit status {EXIT_BACKEND_RAISED}; "
              f"GPTSPEC_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_BACKEND_RAISED
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    # `python -m gptspec.cli`: run the imported module's main, whose BackendRaised is the class
    # the subcommands raise (this file, run as __main__, is a second copy of the module).
    from gptspec.cli import main as imported_main

    sys.exit(imported_main())
