"""The git helpers against the real ``git`` command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from quantapilot.forges import gitops
from tests.forges.conftest import AUTHOR, show
from worker import wait_for_children_with_pidfds


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    return True


async def _wait_until(predicate: object, *, deadline_s: float = 5.0) -> bool:
    assert callable(predicate)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


async def test_gitops_commit_all_commits_changes_and_none_when_clean(worktree: Path) -> None:
    assert await gitops.commit_all(worktree, message="nothing", **AUTHOR) is None
    (worktree / "new.txt").write_text("hello\n")
    (worktree / "README.md").unlink()
    sha = await gitops.commit_all(worktree, message="add and delete", **AUTHOR)
    assert sha is not None
    assert sha == await gitops.current_sha(worktree)
    log = await gitops.git("log", "-1", "--format=%an <%ae>|%cn|%s", cwd=worktree)
    assert log.stdout.strip() == "QP Test <qp-test@localhost>|QP Test|add and delete"
    files = await gitops.git("ls-tree", "--name-only", "HEAD", cwd=worktree)
    assert files.stdout.split() == ["new.txt"]


async def test_gitops_branch_push_fetch_round_trip(tmp_path: Path, bare_repo: Path, worktree: Path) -> None:
    await gitops.checkout_new_branch(worktree, "feature/x")
    (worktree / "f.txt").write_text("x\n")
    sha = await gitops.commit_all(worktree, message="f", **AUTHOR)
    await gitops.push(worktree, remote="origin", branch="feature/x")
    await gitops.push(worktree, remote="origin", branch="feature/x")  # again: a no-op, not an error
    assert await gitops.current_sha(bare_repo, "feature/x") == sha
    other = await gitops.clone(str(bare_repo), tmp_path / "other", branch="feature/x", depth=1)
    assert (other / "f.txt").read_text() == "x\n"
    await gitops.fetch(other, branches=("main",))
    assert await gitops.current_sha(other, "refs/remotes/origin/main") == await gitops.current_sha(bare_repo, "main")
    assert await show(bare_repo, "feature/x:f.txt") == "x\n"


async def test_gitops_clone_copies_no_template_and_still_commits_and_pushes(tmp_path: Path, bare_repo: Path) -> None:
    clone = await gitops.clone(str(bare_repo), tmp_path / "fresh", branch="main")
    git_dir = clone / ".git"
    # No sample hooks, description or info/exclude: only what git itself needs.
    assert not (git_dir / "hooks").exists()
    assert not (git_dir / "description").exists()
    assert not (git_dir / "info" / "exclude").exists()
    (clone / "g.txt").write_text("g\n")
    sha = await gitops.commit_all(clone, message="g", **AUTHOR)
    await gitops.push(clone, remote="origin", branch="main")
    assert await gitops.current_sha(bare_repo, "main") == sha


async def test_gitops_error_has_returncode_and_no_credentials(tmp_path: Path) -> None:
    with pytest.raises(gitops.GitError) as info:
        await gitops.clone("http://someone:s3cr3t-token@127.0.0.1:9/nope.git", tmp_path / "x", timeout_s=30)
    err = info.value
    assert err.returncode not in (0, -1)
    assert "s3cr3t-token" not in str(err)
    assert "s3cr3t-token" not in err.stderr_tail
    assert all("s3cr3t-token" not in a for a in err.git_args)
    assert "127.0.0.1:9" in str(err) or "127.0.0.1" in err.stderr_tail


async def test_gitops_check_false_returns_failure(tmp_path: Path) -> None:
    result = await gitops.git("rev-parse", "--verify", "nope", cwd=tmp_path, check=False)
    assert result.returncode != 0


async def test_gitops_environment_is_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QP_GITHUB_TOKEN", "ghp_should_not_leak")
    result = await gitops.git("-c", "alias.envdump=!env", "envdump", cwd=tmp_path)
    env = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert "ghp_should_not_leak" not in result.stdout
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["HOME"] != os.environ.get("HOME")
    given = await gitops.git("-c", "alias.envdump=!env", "envdump", cwd=tmp_path, env={"HOME": str(tmp_path)})
    assert f"HOME={tmp_path}" in given.stdout.splitlines()


async def test_gitops_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    alias = f"alias.slow=!sh -c 'echo $$ > {pid_file}; exec sleep 30'"
    started = time.monotonic()
    with pytest.raises(gitops.GitError) as info:
        await gitops.git("-c", alias, "slow", cwd=tmp_path, timeout_s=0.5)
    assert info.value.timed_out
    assert time.monotonic() - started < 10
    pid = int(pid_file.read_text())
    assert await _wait_until(lambda: not _alive(pid))


async def test_gitops_cancel_kills_the_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    alias = f"alias.slow=!sh -c 'echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; exec sleep 30'"
    task = asyncio.create_task(gitops.git("-c", alias, "slow", cwd=tmp_path, timeout_s=60))
    assert await _wait_until(pid_file.exists)
    pid = int(pid_file.read_text())
    assert _alive(pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _wait_until(lambda: not _alive(pid))


def test_gitops_redact_strips_userinfo() -> None:
    text = "fatal: https://x-access-token:abc@github.com/o/r.git and ssh://git@host/o/r"
    assert gitops.redact(text) == "fatal: https://github.com/o/r.git and ssh://host/o/r"


def _waitpid_threads() -> set[str]:
    # Python 3.11's ThreadedChildWatcher names its thread for each child "asyncio-waitpid-<n>" (earlier tests' may
    # linger: compare before and after).
    return {t.name for t in threading.enumerate() if "waitpid" in t.name}


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="Python 3.12+ waits for children with pidfds by itself")
async def test_gitops_worker_waits_for_git_with_pidfds_not_a_thread_per_command(worktree: Path) -> None:
    previous = asyncio.get_child_watcher()
    try:
        # The default: a thread per child, blocked in waitpid while the child runs.
        before = _waitpid_threads()
        child = await asyncio.create_subprocess_exec("sleep", "0.2")
        assert _waitpid_threads() - before, "expected the default watcher's thread"
        assert await child.wait() == 0
        assert wait_for_children_with_pidfds()
        before = _waitpid_threads()
        child = await asyncio.create_subprocess_exec("sleep", "0.2")
        assert _waitpid_threads() - before == set()
        assert await child.wait() == 0
        # git commands in parallel are each reaped, with their exit status and output.
        results = await asyncio.gather(*(gitops.git("rev-parse", "HEAD", cwd=worktree) for _ in range(8)))
        assert {r.returncode for r in results} == {0} and len({r.stdout for r in results}) == 1
        failed = await gitops.git("rev-parse", "--verify", "no-such-ref", cwd=worktree, check=False)
        assert failed.returncode != 0
        assert _waitpid_threads() - before == set()
    finally:
        asyncio.set_child_watcher(previous)


def _children(trace: Path) -> list[list[str]]:
    # GIT_TRACE2_EVENT writes one JSON object a line; child_start names each process git starts.
    lines = trace.read_text().splitlines() if trace.exists() else []
    events = [json.loads(line) for line in lines]
    return [e["argv"] for e in events if e.get("event") == "child_start"]


async def test_gitops_commit_and_fetch_start_no_housekeeping_child(tmp_path: Path, worktree: Path) -> None:
    plain, ours = tmp_path / "plain.json", tmp_path / "ours.json"
    (worktree / "a.txt").write_text("a\n")
    await gitops.git("add", "--all", cwd=worktree)
    # The control: git on its own starts "git maintenance run --auto" after a commit.
    env = {**os.environ, "GIT_TRACE2_EVENT": str(plain), **gitops.identity_env("T", "t@example.com")}
    subprocess.run(["git", "commit", "--quiet", "--no-verify", "-m", "a"], cwd=worktree, env=env, check=True)
    assert any(argv[1:3] == ["maintenance", "run"] for argv in _children(plain)), _children(plain)
    (worktree / "b.txt").write_text("b\n")
    trace = {"GIT_TRACE2_EVENT": str(ours)}
    await gitops.git("add", "--all", cwd=worktree)
    ident = gitops.identity_env("T", "t@example.com")
    await gitops.git("commit", "--quiet", "--no-verify", "-m", "b", cwd=worktree, env={**ident, **trace})
    await gitops.git("fetch", "--quiet", "origin", cwd=worktree, env=trace)
    started = _children(ours)
    assert started, "the fetch starts its transport"
    assert not any("maintenance" in argv or "gc" in argv for argv in started), started
