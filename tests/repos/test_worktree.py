"""Reads, writes, walks and removals in a work tree: never through a link, never out of the tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quantapilot.repos.worktree import (
    UnsafePathError,
    read_worktree_head,
    remove_file,
    walk_worktree_files,
    write_file,
)


def test_worktree_writes_never_go_through_a_link(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    os.symlink(outside, root / "linked")
    os.symlink(outside / "planted.md", root / "dangling.md")
    (root / "file").write_text("a file, not a folder\n")
    (root / ".git").mkdir()
    for rel, reason in [
        ("linked/x.md", "symbolic link"),
        ("dangling.md", "symbolic link"),
        ("file/x.md", "not a folder"),
        ("../x.md", "leaves the repository"),
        ("/etc/x.md", "not a relative path"),
        (".git/hooks/x.md", "inside .git"),
    ]:
        with pytest.raises(UnsafePathError, match=reason):
            write_file(root, rel, b"data")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert not (tmp_path / "x.md").exists()

    assert write_file(root, "docs/api/page.md", b"one") is True
    assert write_file(root, "docs/api/page.md", b"one") is False  # unchanged: not rewritten
    assert write_file(root, "docs/api/page.md", b"two") is True
    assert (root / "docs/api/page.md").read_bytes() == b"two"
    assert read_worktree_head(root, "docs/api/page.md", 2) == b"tw"
    assert read_worktree_head(root, "docs/none.md", 2) is None
    with pytest.raises(UnsafePathError, match="symbolic link"):
        read_worktree_head(root, "linked/secret.txt", 100)


def test_worktree_walk_and_remove_leave_link_targets_alone(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "tree"
    write_file(root.parent, "tree/docs/a/page.md", b"page")
    os.symlink(outside, root / "docs" / "a" / "elsewhere")
    os.symlink(outside / "secret.txt", root / "docs" / "secret.md")
    assert walk_worktree_files(root, "docs") == ["docs/a/page.md"]
    remove_file(root, "docs/secret.md")  # the link goes, its target stays
    assert not os.path.lexists(root / "docs" / "secret.md")
    assert (outside / "secret.txt").read_text() == "outside secret\n"
    remove_file(root, "docs/a/page.md", prune_up_to="docs")
    assert (root / "docs" / "a").is_dir()  # not empty: the link to the outside folder is still in it
    os.unlink(root / "docs" / "a" / "elsewhere")
    write_file(root, "docs/b/c/page.md", b"page")
    remove_file(root, "docs/b/c/page.md", prune_up_to="docs")
    assert sorted(p.name for p in (root / "docs").iterdir()) == ["a"]
    with pytest.raises(UnsafePathError):
        walk_worktree_files(root, "docs/../..")
