"""Regenerate (or check) the generated blocks of the docs from the real source, never by hand.

A marker in the Markdown owns the block right after it:

    <!-- excerpt: ref_numpy/layers.py::attention -->   a ```python block: the exact source of a
                                                        function, class, method (`Class.method`),
                                                        top-level assignment (with the comment lines
                                                        just above it) or module docstring (`__doc__`)
    <!-- output: gptspec tokenize --vocab $REFERENCE/gpt2 "Hi" -->
                                                        a ```text block: the command, run in-process,
                                                        and what it printed; $REFERENCE is the folder
                                                        of OpenAI's tokenizer files
    <!-- table: model-sizes -->                         a Markdown table computed from ref_numpy
    <!-- image: gptspec attention ... --out img/x.png -->
                                                        a ![...](img/x.png) line; the command, run in
                                                        the page's folder, draws the image when it is
                                                        missing (or with --images); $DEMO_RUN in
                                                        an image command is the model `gptspec train
                                                        --demo` trains (see demo_run_dir)

Symbols are found by name with `ast`, so an excerpt follows its function wherever it moves.

    python docs/build_excerpts.py                 rewrite every stale block in docs/*.md
    python docs/build_excerpts.py --check         list stale blocks and exit 1 if there are any
    python docs/build_excerpts.py --check FILE.md only these files
    python docs/build_excerpts.py --images        also redraw the images that exist already

Output blocks that need $REFERENCE are skipped (and said so) when the folder is missing.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import io
import os
import re
import shlex
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- (excerpt|output|table|image): (.+?) -->\s*$")
FENCE = re.compile(r"^(`{3,})")


class Skip(Exception):
    """A block that cannot be built here (e.g. reference data missing); left as it is."""


@dataclass
class Block:
    """One marker and the lines it owns: lines[start:end] of its file (empty when not built yet)."""
    path: Path
    marker_line: int  # 0-based index of the marker
    kind: str
    argument: str
    start: int
    end: int

    def where(self) -> str:
        return f"{self.path}:{self.marker_line + 1}: {self.kind} {self.argument}"


# -- finding the blocks ------------------------------------------------------------------------

def find_blocks(path: Path, lines: list[str]) -> list[Block]:
    """Every marker of a Markdown file with the extent of the block that follows it."""
    blocks = []
    for i, line in enumerate(lines):
        match = MARKER.match(line)
        if match:
            start = i + 1
            blocks.append(Block(path, i, match[1], match[2].strip(), start, owned_block_end(path, lines, start)))
    return blocks


def owned_block_end(path: Path, lines: list[str], start: int) -> int:
    """End (exclusive) of the fenced block, table or image line starting at `start`; `start` if
    there is none."""
    if start >= len(lines):
        return start
    if lines[start].startswith("!["):
        return start + 1
    fence = FENCE.match(lines[start])
    if fence:
        for j in range(start + 1, len(lines)):
            if lines[j].rstrip() == fence[1]:
                return j + 1
        raise ValueError(f"{path}:{start}: the fenced block after the marker is never closed")
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return end


# -- building a block --------------------------------------------------------------------------

def fenced(text: str, language: str) -> list[str]:
    """text in a fence longer than any backtick run inside it (CommonMark's rule)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + language, *text.rstrip("\n").split("\n"), fence]


def source_of(root: Path, reference: str) -> str:
    """'ref_numpy/layers.py::attention' -> the exact source of that symbol, dedented."""
    if "::" not in reference:
        raise ValueError(f"excerpt {reference!r} must look like path/to/file.py::symbol")
    relative, symbol = reference.split("::", 1)
    file = root / relative
    if not file.is_file():
        raise ValueError(f"excerpt {reference!r}: no file {relative}")
    source = file.read_text(encoding="utf-8")
    lines = source.split("\n")
    tree = ast.parse(source, filename=str(file))
    if symbol == "__doc__":
        first = tree.body[0] if tree.body else None
        if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)):
            raise ValueError(f"excerpt {reference!r}: {relative} has no module docstring")
        return "\n".join(lines[first.lineno - 1:first.end_lineno])
    node = find_symbol(tree.body, symbol.split("."))
    if node is None:
        raise ValueError(f"excerpt {reference!r}: {relative} has no function, class, method or top-level "
                         f"assignment named {symbol!r}")
    first_line = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
    while first_line > 0 and lines[first_line - 1].strip().startswith("#"):
        first_line -= 1  # the comment block just above explains the symbol: keep it
    return textwrap.dedent("\n".join(lines[first_line:node.end_lineno]))


def find_symbol(body: list[ast.stmt], path: list[str]) -> ast.stmt | None:
    """The definition or assignment named path[0] in `body`, descending into classes for the rest."""
    name, rest = path[0], path[1:]
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            if not rest:
                return node
            return find_symbol(node.body, rest) if isinstance(node, ast.ClassDef) else None
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        if not rest and any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return node
    return None


def reference_dir() -> Path:
    """OpenAI's tokenizer files: $GPTSPEC_REFERENCE_DIR, else ../shared/reference beside the repo
    (the same rule as parity_tests/conftest.py)."""
    return Path(os.environ.get("GPTSPEC_REFERENCE_DIR", REPO.parent / "shared" / "reference"))


_demo_run: list[Path] = []  # the folder demo_run_dir trained, kept for the rest of this build
DEMO_RUN_NAME = "gptspec-demo"  # the folder `gptspec train --demo` writes by default


def demo_run_dir() -> Path:
    """The trained demo model of $DEMO_RUN: $GPTSPEC_DEMO_RUN (a folder named gptspec-demo that
    `gptspec train --demo` wrote), else `gptspec train --demo` run once per build into a temporary
    folder (the run is deterministic; 2-6 minutes on a 2-core CPU).  Only drawing an image needs
    it, and --check never draws: the docs check never trains."""
    given = os.environ.get("GPTSPEC_DEMO_RUN")
    if given:
        given = Path(given).resolve()
        if given.name != DEMO_RUN_NAME or not (given / "train_state.json").is_file():
            raise ValueError(f"GPTSPEC_DEMO_RUN={str(given)!r} must be a run folder named {DEMO_RUN_NAME} "
                             f"written by gptspec train --demo (the plots' titles name it)")
        return given
    if not _demo_run:
        out = Path(tempfile.mkdtemp(prefix="gptspec-docs-")) / DEMO_RUN_NAME
        print(f"training the demo model into {out} (gptspec train --demo; a few minutes) ...", file=sys.stderr)
        run_gptspec(f"gptspec train --demo --no-progress --out {shlex.quote(str(out))}")
        _demo_run.append(out)
    return _demo_run[0]


def run_gptspec(command: str, folder: Path = REPO) -> str:
    """Run `gptspec ...` in-process, in `folder`, and return what it printed."""
    argv = shlex.split(command)
    if not argv or argv[0] != "gptspec":
        raise ValueError(f"marker {command!r}: only gptspec commands can be run")
    if "$REFERENCE" in command and not reference_dir().is_dir():
        raise Skip(f"reference folder {reference_dir()} not found (set GPTSPEC_REFERENCE_DIR)")
    from gptspec.cli import main

    argv = [arg.replace("$REFERENCE", str(reference_dir())) for arg in argv[1:]]
    if any("$DEMO_RUN" in arg for arg in argv):  # run beside it: the plot's title then names
        run = demo_run_dir()                       # gptspec-demo, not a temporary path
        argv = [str(folder.resolve() / arg) if i and argv[i - 1] == "--out" else arg.replace("$DEMO_RUN", run.name)
                for i, arg in enumerate(argv)]
        folder = run.parent
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), working_directory(folder):
        status = main(argv)
    if status != 0:
        raise ValueError(f"marker {command!r} failed (exit {status}): {stderr.getvalue().strip()}")
    return stdout.getvalue()


@contextlib.contextmanager
def working_directory(path: Path):
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def image_file(block: Block) -> str:
    """The --out FILE of an image marker's command: a path relative to the page's folder."""
    argv = shlex.split(block.argument)
    if "--out" not in argv[:-1]:
        raise ValueError(f"image marker {block.argument!r} needs --out FILE")
    out = argv[argv.index("--out") + 1]
    if Path(out).is_absolute() or ".." in Path(out).parts:
        raise ValueError(f"image marker: --out {out!r} must be a path inside the page's folder, like img/x.png")
    return Path(out).as_posix()


def image_line(block: Block, draw: bool) -> list[str]:
    """The Markdown image line of an image marker; runs the command first if `draw`."""
    if draw:
        run_gptspec(block.argument, block.path.parent)
    return [f"![{' '.join(shlex.split(block.argument)[:2])}]({image_file(block)})"]


def model_sizes_table() -> list[str]:
    """Every preset of ref_numpy.PRESETS with its parameter count, from expected_shapes."""
    import numpy as np

    import ref_numpy

    rows = ["| name | arch | layers | heads | n_embd | context | vocabulary | parameters |",
            "|---|---|---|---|---|---|---|---|"]
    for name in ref_numpy.PRESETS:
        config = ref_numpy.GPTConfig.from_name(name)
        count = sum(int(np.prod(shape)) for shape in ref_numpy.expected_shapes(config).values())
        rows.append(f"| `{name}` | {config.arch} | {config.n_layer} | {config.n_head} | {config.n_embd} | "
                    f"{config.n_ctx} | {config.n_vocab} | {count:,} ({count / 1e6:.0f}M) |")
    return rows


def bounds_table() -> list[str]:
    """gptspec.tolerances' bounds on the logits vs the float64 spec, for every preset."""
    import ref_numpy
    from gptspec import tolerances

    columns = [("float32", lambda c: tolerances.forward_bound(c, "float32")),
               ("AMP O1 fp16", lambda c: tolerances.amp_bound(c, "O1")),
               ("AMP O2 fp16", lambda c: tolerances.amp_bound(c, "O2")),
               ("AMP O3 fp16", lambda c: tolerances.amp_bound(c, "O3")),
               ("AMP O2 bf16", lambda c: tolerances.amp_bound(c, "O2", "bfloat16"))]
    rows = ["| model | " + " | ".join(name for name, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in ref_numpy.PRESETS:
        config = ref_numpy.GPTConfig.from_name(name)
        rows.append(f"| `{name}` | " + " | ".join(f"{bound(config).value:.2g}" for _, bound in columns) + " |")
    return rows


TABLES = {"model-sizes": model_sizes_table, "bounds": bounds_table}


def build(block: Block, root: Path, draw_images: bool = False) -> list[str]:
    """The lines the block should hold."""
    if block.kind == "excerpt":
        return fenced(source_of(root, block.argument), "python")
    if block.kind == "output":
        if "$DEMO_RUN" in block.argument:  # it would train on every --check
            raise ValueError("$DEMO_RUN (the trained demo model) is for image markers only")
        return fenced(f"$ {block.argument}\n{run_gptspec(block.argument)}", "text")
    if block.kind == "image":
        return image_line(block, draw_images)
    if block.argument not in TABLES:
        raise ValueError(f"unknown table {block.argument!r}; known: {', '.join(TABLES)}")
    return TABLES[block.argument]()


# -- checking and rewriting --------------------------------------------------------------------

@dataclass
class Report:
    stale: list[str]
    skipped: list[str]
    rewritten: list[str]


def process(paths: list[Path], root: Path = REPO, check: bool = True, redraw: bool = False) -> Report:
    """Compare (check) or rewrite every block of `paths`; sources are read under `root`.
    Images are drawn when missing, or always with `redraw`; a check never draws."""
    report = Report([], [], [])
    for path in paths:
        lines = path.read_text(encoding="utf-8").split("\n")
        new_lines = list(lines)
        for block in reversed(find_blocks(path, lines)):  # from the end: earlier indices stay valid
            try:
                missing_image = block.kind == "image" and not (path.parent / image_file(block)).is_file()
                wanted = build(block, root, draw_images=not check and (redraw or missing_image))
            except Skip as reason:
                report.skipped.append(f"{block.where()}: {reason}")
                continue
            except ValueError as error:
                raise ValueError(f"{path}:{block.marker_line + 1}: {error}") from None
            if check and missing_image:
                report.stale.append(f"{block.where()} (the image file is missing)")
            elif lines[block.start:block.end] != wanted:
                report.stale.append(block.where())
                new_lines[block.start:block.end] = wanted
        if new_lines != lines and not check:
            path.write_text("\n".join(new_lines), encoding="utf-8")
            report.rewritten.append(str(path))
    report.stale.reverse()
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="Markdown files (default: docs/*.md)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    parser.add_argument("--root", type=Path, default=REPO, help="where excerpt paths are read (default: the repo)")
    parser.add_argument("--images", action="store_true", help="redraw every image, not only the missing ones")
    args = parser.parse_args(argv)
    files = args.files or sorted((REPO / "docs").glob("*.md"))
    try:
        report = process(files, args.root, check=args.check, redraw=args.images)
    except (ValueError, OSError) as error:
        print(f"build_excerpts: error: {error}", file=sys.stderr)
        return 2
    for note in report.skipped:
        print(f"skipped {note}", file=sys.stderr)
    if args.check:
        for where in report.stale:
            print(f"stale {where}")
        if report.stale:
            print(f"{len(report.stale)} stale block(s): run python docs/build_excerpts.py", file=sys.stderr)
            return 1
        return 0
    for path in report.rewritten:
        print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
