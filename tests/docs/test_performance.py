"""A repository of 3,000 files (half Python) is documented, linted and written (the per-test timeout bounds it;
the printed figures are for people, not an assertion)."""

from __future__ import annotations

import time
from pathlib import Path

from quantapilot.docs.generate import generate_docs
from quantapilot.docs.lint import lint_pages
from quantapilot.docs.pages import MAX_TREE_LINES
from quantapilot.docs.write import write_pages
from tests.docs.repos import git

MODULE = '''\
"""Module {i} of package {p}."""

from dataclasses import dataclass


@dataclass
class Item{i}(object):
    """An item; see ``make_{i}``."""

    name: str
    size: int = {i}

    def grow(self, by: int = 1, *, cap: int | None = None) -> "Item{i}":
        """Return a bigger item."""
        return self


def make_{i}(name: str, /, *sizes: int, strict: bool = False) -> Item{i}:
    """Build an item."""
    return Item{i}(name)
'''


def test_performance_three_thousand_files(tmp_path: Path) -> None:
    repo = tmp_path / "big"
    for i in range(1500):
        pkg = f"src/pkg{i % 30}/sub{i % 7}"
        (repo / pkg).mkdir(parents=True, exist_ok=True)
        (repo / pkg / f"mod{i}.py").write_text(MODULE.format(i=i, p=pkg))
        data = repo / f"data/set{i % 40}"
        data.mkdir(parents=True, exist_ok=True)
        (data / f"item{i}.json").write_text(f'{{"id": {i}}}\n')
    (repo / "README.md").write_text("# Big\n\nA big generated repository.\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "big")

    started = time.perf_counter()
    pages = generate_docs(repo, project="big", version="1.0.0", updated="2026-01-15")
    generated = time.perf_counter()
    issues = lint_pages(pages)
    linted = time.perf_counter()
    write_pages(repo, pages)
    written = time.perf_counter()
    print(
        f"\n3001 files, {len(pages)} pages: generate {generated - started:.2f}s, lint {linted - generated:.2f}s, "
        f"write {written - linted:.2f}s, total {written - started:.2f}s"
    )

    assert issues == []
    assert len(pages) == 4 + 1500
    tree = next(p for p in pages if p.slug == "file-tree").markdown
    assert "3001 tracked files" in tree
    assert f"(limit {MAX_TREE_LINES} lines)" in tree
