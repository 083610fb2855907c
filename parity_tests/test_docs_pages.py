"""The walkthrough's worked examples run and print what the pages say, and its links lead somewhere."""
from __future__ import annotations

import doctest
import re

import pytest

from parity_tests.conftest import REPO

DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
PYCON_BLOCK = re.compile(r"^```pycon\n(.*?)^```$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def pycon_examples(page):
    """The ```pycon blocks of a page, joined: one namespace per page, as a reader would type them."""
    return "\n".join(PYCON_BLOCK.findall(page.read_text(encoding="utf-8")))


PAGES_WITH_EXAMPLES = [page for page in PAGES if pycon_examples(page)]
# Pages whose examples use an optional extra: skipped, saying so, without it.
NEEDS = {"checkpoints.md": ("safetensors", "the weights extra (safetensors)")}


def test_the_walkthrough_has_examples_to_run():
    assert {page.name for page in PAGES_WITH_EXAMPLES} >= {"attention.md", "kv-cache.md", "padding.md",
                                                          "sampling.md"}


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=lambda page: page.name)
def test_examples_print_what_the_page_shows(page):
    if page.name in NEEDS:
        module, extra = NEEDS[page.name]
        pytest.importorskip(module, reason=f"the examples of {page.name} need {extra}")
    test = doctest.DocTestParser().get_doctest(pycon_examples(page), {}, page.name, str(page), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    output = []
    runner.run(test, out=output.append)
    assert runner.failures == 0, "".join(output)
    assert runner.tries == len(test.examples) > 0


def anchors(page) -> set[str]:
    """The #fragments a git host gives the page's headings: lowercase, punctuation dropped, spaces -> '-'."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def broken_links(page) -> list[str]:
    """Relative links and images of `page` whose file, or whose heading (#fragment), is missing."""
    text = PYCON_BLOCK.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target, fragment in LINK.findall(text):
        if "://" in target:
            continue
        path = page.parent / target
        if not path.exists():
            broken.append(target)
        elif fragment and path.suffix == ".md" and fragment[1:] not in anchors(path):
            broken.append(target + fragment)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_relative_links_images_and_anchors_exist(page):
    assert broken_links(page) == []


def test_broken_links_are_found(tmp_path):
    (tmp_path / "other.md").write_text("# A `code` heading: with punctuation!\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-code-heading-with-punctuation) [gone](missing.md) "
                    "![img](img/none.png) [bad anchor](other.md#nope) [web](https://example.org/x.md)\n")
    assert broken_links(page) == ["missing.md", "img/none.png", "other.md#nope"]


def test_the_index_links_every_page():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    linked = {target for target, _ in LINK.findall(index)}
    assert {page.name for page in PAGES if page.name != "README.md"} <= linked
