"""The default documentation folder leaves a repository's own docs/ alone (docs/quantapilot/), never through links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quantapilot.docs.generate import generate_docs
from quantapilot.docs.write import (
    DEFAULT_OUTPUT_FOLDER,
    OWN_DOCS_OUTPUT_FOLDER,
    OutputConflictError,
    default_output_folder,
    write_pages,
)
from quantapilot.repos.config_loader import load_config
from quantapilot.repos.files import open_repo_files
from quantapilot.runs.checks import with_docs_folder
from tests.docs.repos import git, make_repo
from tests.support import Api, make_remote, remote_file

SPHINX = {
    "README.md": "# Sphinx project\n\nDocumented with Sphinx.\n",
    "docs/index.rst": "Welcome\n=======\n\n.. toctree::\n   usage\n",
    "docs/usage.rst": "Usage\n=====\n\nRun it.\n",
    "docs/conf.py": "project = 'sphinx-project'\n",
}
OUR_PAGE = "---\nid: x\ntitle: X\ngenerator: quantapilot-docgen\n---\n\n# X\n"


def head_sha(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD").strip()


def folder_of(repo: Path) -> str:
    with open_repo_files(repo, commit=head_sha(repo)) as files:
        return default_output_folder(files)


def test_docs_folder_default_moves_aside_for_a_sphinx_docs_folder(tmp_path: Path) -> None:
    assert folder_of(make_repo(tmp_path / "sphinx", SPHINX)) == OWN_DOCS_OUTPUT_FOLDER == "docs/quantapilot"
    assert folder_of(make_repo(tmp_path / "plain", {"README.md": "# Plain\n"})) == DEFAULT_OUTPUT_FOLDER == "docs"
    # docs/ with only our own pages (an earlier run's, merged) stays ours.
    ours = {"README.md": "# P\n", "docs/index.md": OUR_PAGE, "docs/api/x.md": OUR_PAGE}
    assert folder_of(make_repo(tmp_path / "ours", ours)) == "docs"
    # One file without the marker is enough: a Markdown guide written by people, or an image.
    mixed = {**ours, "docs/guide.md": "# Guide\n\nWritten by people.\n"}
    assert folder_of(make_repo(tmp_path / "mixed", mixed)) == "docs/quantapilot"
    assert folder_of(make_repo(tmp_path / "image", {**ours, "docs/logo.svg": "<svg/>"})) == "docs/quantapilot"
    # A file named docs is not a folder of ours either.
    assert folder_of(make_repo(tmp_path / "file", {"README.md": "# F\n", "docs": "not a folder\n"})) == (
        "docs/quantapilot"
    )


def test_docs_folder_named_in_quantapilot_yml_wins(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "sphinx", SPHINX)
    sha = head_sha(repo)
    assert with_docs_folder(load_config(None), repo, sha).docs.output_folder == "docs/quantapilot"
    no_folder = load_config("version: 1\ndocs:\n  owners: [docs-team]\n")
    assert with_docs_folder(no_folder, repo, sha).docs.output_folder == "docs/quantapilot"
    explicit = load_config("version: 1\ndocs:\n  output_folder: docs\n")
    assert with_docs_folder(explicit, repo, sha).docs.output_folder == "docs"
    other = load_config("version: 1\ndocs:\n  output_folder: site/reference\n")
    assert with_docs_folder(other, repo, sha).docs.output_folder == "site/reference"
    plain = make_repo(tmp_path / "plain", {"README.md": "# Plain\n"})
    assert with_docs_folder(load_config(None), plain, head_sha(plain)).docs.output_folder == "docs"


def test_docs_generated_into_docs_quantapilot_leave_the_sphinx_sources_untouched(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "sphinx", SPHINX)
    folder = folder_of(repo)
    pages = generate_docs(repo, output_folder=folder, project="sphinx-project", version="1", updated="2026-12-02")
    written = write_pages(repo, pages, output_folder=folder)
    assert written and all(p.relative_to(repo).as_posix().startswith("docs/quantapilot/") for p in written)
    for rel, text in SPHINX.items():
        assert (repo / rel).read_text(encoding="utf-8") == text
    assert not (repo / "docs" / "index.md").exists()


def test_docs_folder_that_is_a_link_out_of_the_worktree_is_never_followed(tmp_path: Path) -> None:
    # Outside the work tree: a folder that looks like ours (only marked pages), so following the link would
    # choose docs/ and write through it.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "index.md").write_text(OUR_PAGE, encoding="utf-8")
    repo = make_repo(tmp_path / "repo", {"README.md": "# Linked\n"})
    os.symlink(outside, repo / "docs")
    git(repo, "add", "docs")
    git(repo, "commit", "-q", "-m", "docs is a link")
    before = {p.name: p.read_bytes() for p in outside.iterdir()}

    folder = folder_of(repo)
    assert folder == "docs/quantapilot"  # a link is someone else's, whatever it points at
    pages = generate_docs(repo, output_folder=folder, project="linked", version="1", updated="2026-12-02")
    with pytest.raises(OutputConflictError):
        write_pages(repo, pages, output_folder=folder)
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before
    assert not (outside / "quantapilot").exists()


def bare_with_link(root: Path, target: Path) -> str:
    """A bare repository whose main branch tracks ``docs`` as a symbolic link to ``target``."""
    seed = make_repo(root / "seed", {"README.md": "# Linked\n\nA repository whose docs/ points away.\n"})
    os.symlink(target, seed / "docs")
    git(seed, "add", "docs")
    git(seed, "commit", "-q", "-m", "docs is a link")
    bare = root / "linked.git"
    git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    git(seed, "push", "-q", str(bare), "main:main")
    return f"file://{bare}"


@pytest.mark.usefixtures("worker")
async def test_docs_run_on_a_sphinx_repository_writes_docs_quantapilot(api: Api, tmp_path: Path) -> None:
    url = make_remote(tmp_path, SPHINX)
    _, body = await api.post("/v1/runs", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    status = await api.wait_gate(run_id, "anchor")
    branch = status["docs_branch"]
    index = remote_file(url, branch, "docs/quantapilot/index.md")
    assert index is not None and "generator: quantapilot-docgen" in index
    assert remote_file(url, branch, "docs/index.md") is None
    for rel, text in SPHINX.items():
        assert remote_file(url, branch, rel) == text


@pytest.mark.usefixtures("worker")
async def test_docs_run_on_a_repository_whose_docs_links_out_fails_and_writes_nothing_there(
    api: Api, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "index.md").write_text(OUR_PAGE, encoding="utf-8")
    url = bare_with_link(tmp_path, outside)
    _, body = await api.post("/v1/runs", {"repo_url": url, "branch": "main"})
    final = await api.wait_state(body["run_id"], "failed", "waiting_for_gate")
    assert final["state"] == "failed", final
    assert final["error"]["code"] == "PRECONDITION_FAILED" and "docs/quantapilot" in final["error"]["message"]
    assert sorted(p.name for p in outside.iterdir()) == ["index.md"]
    assert (outside / "index.md").read_text(encoding="utf-8") == OUR_PAGE
