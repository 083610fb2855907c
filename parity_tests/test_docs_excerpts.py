"""The docs' code blocks are the real source: docs/build_excerpts.py --check passes, and it fails
when an excerpt, the source or a command's output changes."""
from __future__ import annotations

import importlib.util
import shutil
import sys

import pytest

from parity_tests.conftest import REPO, require_reference

DOCS = REPO / "docs"


def load_builder():
    spec = importlib.util.spec_from_file_location("build_excerpts", DOCS / "build_excerpts.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


builder = load_builder()
PAGES = sorted(DOCS.glob("*.md"))


@pytest.fixture(scope="module")
def docs_report():
    """One check of every page (it reruns the pages' gptspec commands): shared by the tests below."""
    return builder.process(PAGES, check=True)


def test_every_generated_block_of_the_docs_is_up_to_date(docs_report):
    assert docs_report.stale == [], ("stale docs blocks (run python docs/build_excerpts.py):\n"
                                     + "\n".join(docs_report.stale))


def test_command_outputs_are_checked_when_the_reference_files_exist(docs_report):
    require_reference("gpt2")
    require_reference("openai-gpt")
    assert docs_report.skipped == []
    assert any(block.kind == "output" for page in PAGES
               for block in builder.find_blocks(page, page.read_text().split("\n")))


def copy_page(tmp_path, name="attention.md"):
    """A copy of the docs folder (pages and images); returns the copy of page `name`."""
    shutil.copytree(DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "docs" / name


def test_a_hand_edited_excerpt_is_reported_and_rebuilt(tmp_path, capsys):
    page = copy_page(tmp_path)
    original = page.read_text()
    marker = "<!-- excerpt: ref_numpy/layers.py::split_heads -->"
    assert marker in original
    line_number = original[:original.index(marker)].count("\n") + 1
    edited = original.replace("C // n_head).transpose(0, 2, 1, 3)", "C // n_head).transpose(0, 2, 3, 1)", 1)
    assert edited != original
    page.write_text(edited)
    assert builder.main(["--check", str(page)]) == 1
    assert capsys.readouterr().out == f"stale {page}:{line_number}: excerpt ref_numpy/layers.py::split_heads\n"
    assert builder.main([str(page)]) == 0
    assert page.read_text() == original
    assert builder.main(["--check", str(page)]) == 0


def test_a_changed_source_makes_its_excerpt_stale(tmp_path):
    for package in ("ref_numpy", "ms_backend", "weights", "gptspec"):  # what the pages excerpt
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    layers = tmp_path / "ref_numpy" / "layers.py"
    source = layers.read_text()
    changed = source.replace('    """[B, H, T, D] -> [B, T, C]: the inverse of split_heads."""',
                             '    """[B, H, T, D] -> [B, T, C]: undoes split_heads."""')
    assert changed != source
    layers.write_text(changed)
    page = copy_page(tmp_path)
    stale = builder.process([page], root=tmp_path, check=True).stale
    assert [where.rsplit(": ", 1)[1] for where in stale] == ["excerpt ref_numpy/layers.py::merge_heads"]


def test_an_excerpt_follows_its_symbol_when_lines_move(tmp_path):
    (tmp_path / "ref_numpy").mkdir()
    source = (REPO / "ref_numpy" / "layers.py").read_text()
    (tmp_path / "ref_numpy" / "layers.py").write_text(source.replace("import math\n", "import math\n\n\n# moved\n"))
    page = tmp_path / "page.md"
    page.write_text("<!-- excerpt: ref_numpy/layers.py::causal_mask -->\n")
    assert builder.main([str(page), "--root", str(tmp_path)]) == 0
    moved = page.read_text()
    assert builder.process([page], check=True).stale == []  # the same block as from the real layers.py
    assert moved.startswith("<!-- excerpt: ref_numpy/layers.py::causal_mask -->\n```python\ndef causal_mask(")


def test_symbols_of_every_kind(tmp_path):
    source = tmp_path / "m.py"
    source.write_text('"""Module doc."""\nimport x\n\n# why: a comment above\nLIMIT = 3\n\n\n'
                      'class A:\n    @staticmethod\n    def f():\n        return "```"\n')
    assert builder.source_of(tmp_path, "m.py::__doc__") == '"""Module doc."""'
    assert builder.source_of(tmp_path, "m.py::LIMIT") == "# why: a comment above\nLIMIT = 3"
    assert builder.source_of(tmp_path, "m.py::A.f") == '@staticmethod\ndef f():\n    return "```"'
    # a fence must be longer than any backtick run inside the block
    assert builder.fenced(builder.source_of(tmp_path, "m.py::A.f"), "python")[0] == "````python"


@pytest.mark.parametrize("page_text, message", [
    ("<!-- excerpt: ref_numpy/layers.py::atention -->\n", "has no function, class, method or top-level "
                                                          "assignment named 'atention'"),
    ("<!-- excerpt: ref_numpy/nothing.py::f -->\n", "no file ref_numpy/nothing.py"),
    ("<!-- excerpt: ref_numpy/layers.py -->\n", "must look like path/to/file.py::symbol"),
    ("<!-- table: sizes -->\n", "unknown table 'sizes'; known: model-sizes, bounds"),
    ("<!-- output: ls -l -->\n", "only gptspec commands can be run"),
    ("<!-- output: gptspec detokenize --vocab /nonexistent 1 -->\n", "failed (exit 2)"),
    ("<!-- image: gptspec attention --prompt-ids 1 -->\n", "needs --out FILE"),
    ("<!-- image: gptspec attention --out ../a.png -->\n", "must be a path inside the page's folder"),
    ("<!-- excerpt: ref_numpy/layers.py::gelu -->\n```python\nnever closed\n", "is never closed"),
])
def test_bad_markers_are_one_clear_error(tmp_path, capsys, page_text, message):
    page = tmp_path / "page.md"
    page.write_text(page_text)
    assert builder.main(["--check", str(page)]) == 2
    err = capsys.readouterr().err
    assert f"{page}:1: " in err and message in err and len(err.strip().splitlines()) == 1
