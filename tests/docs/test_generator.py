"""Documentation generation on real git repositories: content, cross-links, determinism, safe writing."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

import pytest

from quantapilot.docs.generate import generate_docs
from quantapilot.docs.lint import lint_pages
from quantapilot.docs.model import GENERATOR_MARKER, GeneratedPage
from quantapilot.docs.render import split_front_matter
from quantapilot.docs.write import OutputConflictError, write_pages
from tests.docs.repos import DEMO_FILES, git, make_repo

UPDATED = "2026-01-15"


def _generate(repo: Path, **kwargs: object) -> list[GeneratedPage]:
    return generate_docs(repo, project="demo", version="1.2.3", updated=UPDATED, **kwargs)  # type: ignore[arg-type]


def _by_slug(pages: list[GeneratedPage]) -> dict[str, GeneratedPage]:
    return {p.slug: p for p in pages}


@pytest.fixture
def demo_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "demo", DEMO_FILES)


def test_generator_produces_expected_pages(demo_repo: Path) -> None:
    pages = _by_slug(_generate(demo_repo))
    assert list(pages)[:4] == ["index", "file-tree", "guides", "api/index"]
    assert {"api/demo", "api/demo.core", "api/demo.boom", "api/demo.escapes"} <= set(pages)
    assert "api/demo.broken" not in pages
    for slug, page in pages.items():
        assert page.path == f"docs/{slug}.md"
        meta, body = split_front_matter(page.markdown)
        assert meta == {
            "id": slug.replace("/", "."),
            "title": page.title,
            "status": "ready",
            "version": "1.2.3",
            "updated": UPDATED,
            "owners": ["quantapilot"],
            "description": page.description,
            "tags": page.tags,
            "generator": GENERATOR_MARKER,
        }
        assert body.startswith("\n# ")


def test_generator_index_has_metadata_readme_and_parse_failures(demo_repo: Path) -> None:
    index = _by_slug(_generate(demo_repo))["index"].markdown
    assert "| Package name | demo (from `pyproject.toml`) |" in index
    assert "| Package version | 1.2.3 |" in index
    assert "| Python | 5 |" in index
    assert "| JavaScript | 1 |" in index
    # README embedded with headings demoted under the page's own sections, links re-aimed from docs/.
    assert "## Overview (from `README.md`)" in index
    assert "\n## Demo\n" in index
    assert "\n### Usage\n" in index
    assert "[the guide](guide.md)" in index
    assert "[contributing](../CONTRIBUTING.md)" in index
    assert "(https://demo.example.org)" in index
    assert "# a comment in a code block stays a comment" in index
    # Parse failures are listed, not fatal.
    assert "## Files that could not be parsed" in index
    assert "`src/demo/broken.py`: syntax error at line 1" in index


def test_generator_redacts_personal_data_from_readme(demo_repo: Path) -> None:
    pages = _generate(demo_repo)
    index = _by_slug(pages)["index"].markdown
    assert "jane.doe" not in index
    assert "7946" not in index
    assert "Contact [redacted] or [redacted] for help." in index
    assert lint_pages(pages) == []


def test_generator_api_page_has_signatures_and_docstrings(demo_repo: Path) -> None:
    core = _by_slug(_generate(demo_repo))["api/demo.core"].markdown
    assert "# Module `demo.core`" in core
    assert "Source: [src/demo/core.py](../../src/demo/core.py)" in core
    assert "Core engine of the demo." in core
    assert "More text about the engine." in core
    assert "class Engine(Base, metaclass=ABCMeta)" in core
    assert "def __init__(self, name: str='e') -> None" in core
    assert "def run(self, steps: int=3, *, label: str | None=None) -> list[str]" in core
    assert "async def fetch(self, url: str) -> bytes" in core
    assert "Run the engine for ``steps`` steps." in core
    assert "def build(x: int, /, y: float=1.5, *args: str, flag: bool=False, **kw: object) -> Engine" in core
    assert "class Options" in core
    assert "def merge(self, other: 'Engine.Options') -> 'Engine.Options'" in core
    assert "_hidden" not in core
    assert "_private_helper" not in core
    # __all__ decides what a package exports: no classes or functions there.
    assert "*No public classes or functions.*" in _by_slug(_generate(demo_repo))["api/demo"].markdown


def test_generator_reads_modules_without_importing_them(demo_repo: Path) -> None:
    boom = _by_slug(_generate(demo_repo))["api/demo.boom"].markdown
    assert "def survives(a: int) -> int" in boom
    assert "Still documented." in boom
    assert not (demo_repo / "src/demo/boom.imported").exists()


def test_generator_lists_human_docs_on_guides_page(demo_repo: Path) -> None:
    pages = _generate(demo_repo)
    write_pages(demo_repo, pages)
    guides = _by_slug(_generate(demo_repo))["guides"].markdown
    assert "[User guide](guide.md) (`docs/guide.md`): How to use the demo." in guides
    assert "[Contributing](../CONTRIBUTING.md) (`CONTRIBUTING.md`): Open a pull request." in guides
    # Our own pages, now on disk in docs/, are not mistaken for guides.
    assert "docs/index.md" not in guides
    assert "api/index" not in guides.split("## Related pages")[0]


def test_generator_file_tree_skips_output_folder(demo_repo: Path) -> None:
    tree = _by_slug(_generate(demo_repo))["file-tree"].markdown
    assert "├── src/" in tree
    assert "core.py" in tree
    assert "app.js" in tree
    assert "guide.md" not in tree
    assert "docs/" not in tree
    assert "9 tracked files in 3 folders" in tree


def test_generator_cross_links_resolve(demo_repo: Path) -> None:
    pages = _generate(demo_repo)
    write_pages(demo_repo, pages)
    slugs = {p.slug for p in pages}
    link_re = re.compile(r"\]\(([^)\s]+)\)")
    for page in pages:
        assert page.related, page.slug
        assert all(r.slug in slugs for r in page.related)
        for target in link_re.findall(page.markdown):
            if "://" in target:
                continue
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(page.path), target))
            assert (demo_repo / resolved).is_file(), (page.slug, target)


def test_generator_is_deterministic(demo_repo: Path, tmp_path: Path) -> None:
    first = [(p.path, p.markdown) for p in _generate(demo_repo)]
    second = [(p.path, p.markdown) for p in _generate(demo_repo)]
    assert first == second
    # A second clone of the same content at another path gives the same bytes, too.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(demo_repo), str(clone))
    assert [(p.path, p.markdown) for p in _generate(clone)] == first


def test_generator_handles_plain_directories_and_rst_readme(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    (root / "pkg").mkdir(parents=True)
    (root / "README.rst").write_text("Plain\n=====\n\nText with ``rst``.\n")
    (root / "pkg" / "mod.py").write_text("def f() -> None:\n    pass\n")
    (root / "node_modules" / "x").mkdir(parents=True)
    (root / "node_modules" / "x" / "skip.py").write_text("def g(): pass\n")
    pages = _by_slug(generate_docs(root, project="plain", version="abc1234", updated=UPDATED, output_folder="site/"))
    assert pages["index"].path == "site/index.md"
    assert "```text\nPlain\n=====" in pages["index"].markdown
    assert "api/pkg.mod" in pages
    assert not any("skip" in s for s in pages)


def test_generator_rejects_bad_arguments(demo_repo: Path) -> None:
    with pytest.raises(ValueError, match="owners"):
        _generate(demo_repo, owners=[])
    with pytest.raises(ValueError, match="output_folder"):
        _generate(demo_repo, output_folder="../elsewhere")


def test_write_pages_removes_only_stale_generated_files(demo_repo: Path) -> None:
    pages = _generate(demo_repo)
    stale = pages[-1].model_copy(update={"slug": "api/old", "path": "docs/api/old/gone.md"})
    write_pages(demo_repo, [*pages, stale])
    assert (demo_repo / "docs/api/old/gone.md").is_file()
    human = demo_repo / "docs/api/notes.md"
    human.write_text("# Notes written by a person\n")

    written = write_pages(demo_repo, pages)
    assert written == [demo_repo.resolve() / p.path for p in pages]
    assert not (demo_repo / "docs/api/old").exists()
    assert human.read_text() == "# Notes written by a person\n"
    assert (demo_repo / "docs/guide.md").read_text() == DEMO_FILES["docs/guide.md"]
    assert [(demo_repo / p.path).read_text() for p in pages] == [p.markdown for p in pages]


def test_write_pages_refuses_to_overwrite_human_files(demo_repo: Path) -> None:
    (demo_repo / "docs/index.md").write_text("# Our own index\n")
    pages = _generate(demo_repo)
    with pytest.raises(OutputConflictError) as info:
        write_pages(demo_repo, pages)
    assert info.value.paths == ["docs/index.md"]
    assert (demo_repo / "docs/index.md").read_text() == "# Our own index\n"
    assert not (demo_repo / "docs/api").exists()


def test_write_pages_refuses_paths_outside_the_repository(demo_repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (demo_repo / "linked").symlink_to(outside)
    page = GeneratedPage(slug="x", path="linked/x.md", title="x", description="", markdown="---\n---\n")
    escaping = page.model_copy(update={"path": "../x.md"})
    with pytest.raises(OutputConflictError):
        write_pages(demo_repo, [page])
    with pytest.raises(OutputConflictError):
        write_pages(demo_repo, [escaping])
    assert list(outside.iterdir()) == []


def test_generator_lists_links_oversized_files_and_refused_front_matter_without_reading_them(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# Outside\n\nOUTSIDE-SECRET\n")
    laughs = "\n".join(['l0: &l0 "lol"'] + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)])
    repo = make_repo(
        tmp_path / "repo",
        {
            "README.md": "# Hostile\n\nA repository.\n",
            "big.py": '"""BIG-MODULE"""\n' + "x = 1\n" * 400,
            "docs/laughs.md": f"---\n{laughs}\n---\n# Laughs\n",
            "docs/ok.md": "# Fine\n\nA fine guide.\n",
        },
    )
    (repo / "NOTES.md").symlink_to(outside / "secret.md")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "link")
    pages = _by_slug(_generate(repo, max_file_bytes=1024))
    text = "\n".join(p.markdown for p in pages.values())
    assert "OUTSIDE-SECRET" not in text and "BIG-MODULE" not in text
    index = pages["index"].markdown
    assert "## Files not read" in index
    assert "- `NOTES.md`: symbolic link, not followed" in index
    assert "- `big.py`: larger than 1024 bytes, not read" in index
    assert "- `docs/laughs.md`: front matter refused: more than 64 YAML aliases" in index
    guides = pages["guides"].markdown
    assert "Fine" in guides and "laughs.md" not in guides and "NOTES.md" not in guides
    assert "NOTES.md" in pages["file-tree"].markdown  # tracked, so listed
    assert lint_pages(list(pages.values())) == []
