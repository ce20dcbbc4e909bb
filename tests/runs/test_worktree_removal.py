"""A run's folder on the worker when the run ends: gone at once, its files deleted right after, leftovers swept.

Real clones (``git clone`` of a local bare repository) in a temporary work directory; no Temporal needed.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from quantapilot.forges import gitops
from quantapilot.runs import worktree as worktree_module
from quantapilot.runs.worktree import Worktrees
from quantapilot.settings import Settings
from tests.support import eventually, make_remote


@pytest.fixture
def worktrees(tmp_path: Path) -> Worktrees:
    return Worktrees(Settings(environment="test", state_dir=tmp_path / "state"))


async def clone_for(worktrees: Worktrees, url: str, run_id: str) -> Path:
    run_dir = worktrees.run_dir("default", run_id)
    run_dir.mkdir(parents=True)
    await gitops.clone(url, run_dir / "repo", branch="main")
    return run_dir


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_worktree_removal_returns_before_the_files_are_deleted(
    worktrees: Worktrees, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = make_remote(tmp_path, {"README.md": "# Slow disk\n"})
    run_dir = await clone_for(worktrees, url, "rr_slow")
    # Deleting the files blocks until the test lets it go: the run's cleanup must not wait for it.
    release = threading.Event()
    delete = worktree_module._remove_tree

    def held(path: Path) -> bool:
        release.wait(30)
        return delete(path)

    monkeypatch.setattr(worktree_module, "_remove_tree", held)
    try:
        assert await asyncio.wait_for(worktrees.remove("default", "rr_slow"), 5)
        assert not run_dir.exists()
        (aside,) = run_dir.parent.iterdir()
        assert aside.name.startswith(".rr_slow.removing-") and (aside / "repo" / ".git").is_dir()
    finally:
        release.set()
    await worktrees.drain()
    assert entries(run_dir.parent) == []


async def test_worktree_removal_takes_the_folder_away_at_once_and_deletes_its_files_after(
    worktrees: Worktrees, tmp_path: Path
) -> None:
    url = make_remote(tmp_path, {"README.md": "# Removed\n"})
    ended = await clone_for(worktrees, url, "rr_ended")
    still = await clone_for(worktrees, url, "rr_open")
    # A folder a milestone command left read-only still goes.
    locked = ended / "repo" / "locked"
    locked.mkdir()
    (locked / "f.txt").write_text("x\n")
    locked.chmod(0o500)
    assert await worktrees.remove("default", "rr_ended")
    # The run's path is gone when remove returns; what is left is its folder set aside, being deleted.
    assert not ended.exists()
    workspace = ended.parent
    names = await eventually(
        lambda: asyncio.to_thread(entries, workspace), lambda n: n == ["rr_open"], timeout=30, what="deleted"
    )
    assert names == ["rr_open"]
    assert (still / "repo" / ".git").is_dir()  # another run's clone is untouched
    assert not await worktrees.remove("default", "rr_ended")  # nothing left to remove


async def test_worktree_removal_drain_waits_for_the_deletions_in_progress(worktrees: Worktrees, tmp_path: Path) -> None:
    url = make_remote(tmp_path, {"README.md": "# Drained\n"})
    for i in range(3):
        await clone_for(worktrees, url, f"rr_{i}")
    for i in range(3):
        assert await worktrees.remove("default", f"rr_{i}")
    await worktrees.drain()
    assert entries(worktrees.run_dir("default", "rr_0").parent) == []


async def test_worktree_removal_sweep_deletes_folders_a_stopped_worker_set_aside_and_asks_nothing_of_them(
    worktrees: Worktrees, tmp_path: Path
) -> None:
    url = make_remote(tmp_path, {"README.md": "# Left over\n"})
    open_run = await clone_for(worktrees, url, "rr_open")
    # What a worker that stopped mid-deletion leaves: a set-aside folder, partly deleted or not at all.
    leftover = await clone_for(worktrees, url, "rr_gone")
    aside = leftover.with_name(".rr_gone.removing-0123456789ab")
    leftover.rename(aside)
    asked: list[tuple[str, str]] = []

    async def is_closed(workspace: str, run_id: str) -> bool:
        asked.append((workspace, run_id))
        return False  # every run still open: only the leftover may go

    assert await worktrees.sweep(is_closed) == 0
    await worktrees.drain()
    assert asked == [("default", "rr_open")]  # a set-aside folder is no run
    assert not aside.exists()
    assert (open_run / "repo" / ".git").is_dir()
