"""Reading a repository as data, on real git repositories and plain directories: links are never followed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quantapilot.repos.files import EntryKind, FileRefusedError, open_repo_files
from tests.docs.repos import git, make_repo


def test_files_reads_the_commit_and_sees_links_and_submodules(tmp_path: Path, outside: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a/b.txt": "committed\n", "big.bin": "x" * 5000})
    os.symlink(outside / "secret.txt", repo / "leak.txt")
    os.symlink(outside, repo / "linked")
    git(repo, "add", "-A")
    head = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{head},sub")
    git(repo, "commit", "-q", "-m", "links")
    # The work tree says something else than the commit: the commit is what is read.
    (repo / "a/b.txt").write_text("changed in the work tree\n")

    with open_repo_files(repo, max_file_bytes=4096) as files:
        kinds = {path: entry.kind for path, entry in files.entries.items()}
        assert kinds == {
            "a/b.txt": EntryKind.FILE,
            "big.bin": EntryKind.FILE,
            "leak.txt": EntryKind.SYMLINK,
            "linked": EntryKind.SYMLINK,
            "sub": EntryKind.SUBMODULE,
        }
        assert files.read_text("a/b.txt") == "committed\n"
        refusals = {}
        for rel in ("leak.txt", "linked/secret.txt", "sub", "big.bin", "missing.txt"):
            with pytest.raises(FileRefusedError) as info:
                files.read_bytes(rel)
            refusals[rel] = info.value.reason
    assert refusals == {
        "leak.txt": "symbolic link, not followed",
        "linked/secret.txt": "symbolic link, not followed (linked is a symbolic link)",
        "sub": "submodule, not followed",
        "big.bin": "larger than 4096 bytes, not read",
        "missing.txt": "not in the repository",
    }


def test_files_reads_only_the_paths_asked_for(tmp_path: Path, outside: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"quantapilot.yml": "version: 1\n", "other.txt": "x\n"})
    os.symlink(outside, repo / "conf")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "conf")
    with open_repo_files(repo, paths=["conf/quantapilot.yml", "quantapilot.yml"]) as files:
        assert sorted(files.entries) == ["conf", "quantapilot.yml"]
        assert files.link_on_path("conf/quantapilot.yml") == files.entries["conf"]
        assert files.read_text("quantapilot.yml") == "version: 1\n"


def test_files_plain_directory_never_follows_links(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "plain"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("x = 1\n")
    os.symlink(outside / "secret.txt", root / "README.md")
    os.symlink(outside, root / "docs")
    with open_repo_files(root) as files:
        assert files.paths(EntryKind.FILE) == ["pkg/mod.py"]
        assert files.paths(EntryKind.SYMLINK) == ["README.md", "docs"]
        assert files.read_text("pkg/mod.py") == "x = 1\n"
        for rel in ("README.md", "docs/secret.txt"):
            with pytest.raises(FileRefusedError, match="symbolic link"):
                files.read_bytes(rel)
