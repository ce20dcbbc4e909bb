"""A repository run's worktrees on this worker: cloned on demand, capped in size, committed, pushed, removed.

Every step is idempotent: a worktree missing on this worker is cloned again from the remote, commits use the run's
start time as their date so a redo makes the same commit, and branches are force-pushed to that same commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from quantapilot.errors import ErrorCode
from quantapilot.forges import diskcap, gitops, remotes
from quantapilot.repos.policy import in_run_namespace
from quantapilot.runs.contracts import RepoRef
from quantapilot.runs.errors import StepError, permanent, transient
from quantapilot.settings import Settings
from quantapilot.webhooks.urlsafety import Resolver

T = TypeVar("T")

log = logging.getLogger("quantapilot.worktrees")

# What a caller learns about a repository host that is refused or does not answer: nothing about what answered.
HOST_REFUSED = "repository host not allowed"
UNREACHABLE = "repository unreachable or not found"


def unreachable(*, for_good: bool) -> StepError:
    """The repository did not answer: retried (a passing network fault), unless this was the last chance."""
    if for_good:
        return permanent(ErrorCode.REPO_CLONE_FAILED, UNREACHABLE)
    return transient(ErrorCode.TRANSIENT_NETWORK, UNREACHABLE)


def _date_env(when: datetime) -> dict[str, str]:
    stamp = f"{int(when.timestamp())} +0000"
    return {"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}


class Worktrees:
    """The worktrees of the runs this worker works on, under ``QP_RUN_WORKDIR/<workspace>/<run_id>/repo``.

    Args:
        settings: Service settings (work directory, clone depth and limits, git identity, private hosts).
        resolver: Resolves repository hosts before they are checked (tests point names at loopback);
            ``getaddrinfo`` when None.
    """

    def __init__(self, settings: Settings, *, resolver: Resolver | None = None) -> None:
        self._settings = settings
        self._resolver = resolver
        self._locks: dict[str, asyncio.Lock] = {}
        # Run folders set aside by remove() whose files are being deleted in the background.
        self._deleting: dict[Path, asyncio.Task[bool]] = {}

    def path(self, ref: RepoRef) -> Path:
        """Directory of the run's clone."""
        return self.run_dir(ref.workspace, ref.run_id) / "repo"

    def run_dir(self, workspace: str, run_id: str) -> Path:
        """Directory holding everything a run keeps on this worker (its worktree and a partial clone)."""
        return self._settings.run_workdir / workspace / run_id

    def lock(self, run_id: str) -> asyncio.Lock:
        """The run's lock: held by every step that touches its worktree."""
        # Activities of one run never overlap in the workflow, but a retry can start while a timed-out attempt is
        # still finishing on this worker: one lock per run keeps them off the same worktree.
        return self._locks.setdefault(run_id, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def network(self, ref: RepoRef, *, unreachable_for_good: bool = False) -> AsyncIterator[None]:
        """Check the repository's host and run the body's git commands pinned to the checked addresses.

        The host is resolved once here; a refused one fails the run (``REPO_URL_NOT_ALLOWED``), one that does
        not resolve is retried (``TRANSIENT_NETWORK``), or fails for good with ``unreachable_for_good`` (the
        caller's last attempt). Either way the message says nothing about what the name resolved to.
        """
        try:
            pin = await remotes.pin_remote(
                ref.repo_url, allow_private=self._settings.repo_allow_private, resolver=self._resolver
            )
        except remotes.RemoteRefused as exc:
            if exc.reason == "transport_not_allowed":
                message = "repository URL refused: transport not allowed"
                raise permanent(ErrorCode.REPO_URL_NOT_ALLOWED, message) from None
            log.warning(HOST_REFUSED)
            raise permanent(ErrorCode.REPO_URL_NOT_ALLOWED, HOST_REFUSED) from None
        except remotes.RemoteUnreachable:
            raise unreachable(for_good=unreachable_for_good) from None
        with gitops.pinned(pin):
            yield

    async def ensure(self, ref: RepoRef) -> Path:
        """Return the run's worktree, cloning it again when this worker does not have it."""
        path = self.path(ref)
        if (path / ".git").is_dir():
            return path
        if gitops.current_pin() is None:
            async with self.network(ref):
                return await self._clone(ref, path)
        return await self._clone(ref, path)

    async def _clone(self, ref: RepoRef, path: Path) -> Path:
        partial = path.with_name("repo.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        clone = gitops.clone(
            ref.repo_url,
            partial,
            branch=ref.branch,
            depth=self._settings.clone_depth or None,
            timeout_s=self._settings.clone_timeout_s,
        )
        try:
            await diskcap.within(partial, self._settings.clone_max_bytes, clone)
        except diskcap.TooLargeError:
            shutil.rmtree(partial, ignore_errors=True)
            raise self._too_large() from None
        except gitops.GitError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            # Neither git's stderr nor the address it reached: only how it ended.
            log.warning("git clone %s", "timed out" if exc.timed_out else f"exited with {exc.returncode}")
            raise transient(ErrorCode.REPO_CLONE_FAILED, UNREACHABLE) from None
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        # Rename last so a crash mid-clone never leaves a half-cloned worktree that looks complete.
        partial.rename(path)
        return path

    def _too_large(self) -> StepError:
        limit = self._settings.clone_max_bytes
        return permanent(ErrorCode.REPO_TOO_LARGE, f"repository is larger than the limit of {limit} bytes")

    async def capped(self, path: Path, work: Awaitable[T]) -> T:
        """Await a fetch (or a forge call that fetches) while the worktree stays within ``QP_CLONE_MAX_BYTES``."""
        try:
            return await diskcap.within(path, self._settings.clone_max_bytes, work)
        except diskcap.TooLargeError:
            # The worktree is over the cap now: the next attempt clones it again, which the cap refuses too.
            shutil.rmtree(path, ignore_errors=True)
            raise self._too_large() from None

    async def commit_and_push(
        self, path: Path, *, run_id: str, branch: str, message: str, when: datetime, pathspec: str = "."
    ) -> tuple[bool, str]:
        """Commit what changed under ``pathspec`` and push ``branch`` to it.

        The commit is dated ``when`` (the run's start), so a redo after a crash makes the very same commit. Inside
        the run's own namespace (``quantapilot/<run_id>/``) the branch is force-pushed; any other branch is only
        created, never rewritten (``CONFIG_INVALID`` when it already exists at another commit), so a
        ``quantapilot.yml`` cannot point the run at ``release`` or at another run's branch.

        Args:
            path: The worktree.
            run_id: The run (named in the commit message's last line, written here for every commit of a run).
            branch: The branch to push.
            message: The commit message's subject.
            when: The commit's date.
            pathspec: What to commit.

        Returns:
            Whether there was a change to commit, and the branch's sha.
        """
        await gitops.git("add", "--all", "--", pathspec, cwd=path)
        staged = await gitops.git("diff", "--cached", "--quiet", cwd=path, check=False)
        changed = staged.returncode != 0
        if changed:
            identity = gitops.identity_env(self._settings.git_author_name, self._settings.git_author_email)
            await gitops.git(
                "commit",
                "--quiet",
                "--no-verify",
                "-m",
                f"{message}\n\nQuantaPilot run {run_id}.",
                cwd=path,
                env=identity | _date_env(when),
            )
        sha = await gitops.current_sha(path)
        if in_run_namespace(branch, run_id):
            await gitops.push(path, branch=branch, force=True)
            return changed, sha
        try:
            await gitops.push_new_branch(path, branch=branch)
        except gitops.BranchExistsError:
            raise permanent(
                ErrorCode.CONFIG_INVALID,
                f"branch {branch} already exists outside the run's namespace: it is only created, never rewritten",
            ) from None
        return changed, sha

    async def remove(self, workspace: str, run_id: str) -> bool:
        """Take a run's folder away on this worker (its run has ended); a no-op when there is none.

        The folder is renamed aside at once (``.<run_id>.removing-<hex>`` next to it, on the same file system),
        so the run's path is gone when this returns, and its files are deleted in the background: the run that
        ends does not wait for its clone's files to be unlinked one by one. A set-aside folder left by a worker
        that stopped meanwhile is deleted by the next sweep (:meth:`sweep`). When the rename fails the folder is
        deleted in place, as before.

        Returns:
            Whether a folder was taken away (or, renaming failing, deleted).
        """
        run_dir = self.run_dir(workspace, run_id)
        async with self.lock(run_id):
            aside = await asyncio.to_thread(_set_aside, run_dir)
            if aside is None:
                removed = False
            elif aside == run_dir:
                removed = await asyncio.to_thread(_remove_tree, run_dir)
            else:
                self._delete_in_background(aside)
                removed = True
        self._locks.pop(run_id, None)
        return removed

    def _delete_in_background(self, path: Path) -> None:
        task = asyncio.create_task(asyncio.to_thread(_remove_tree, path))
        self._deleting[path] = task
        task.add_done_callback(lambda _: self._deleting.pop(path, None))

    async def drain(self) -> None:
        """Wait until the folders set aside by :meth:`remove` are deleted (the worker is shutting down)."""
        if self._deleting:
            await asyncio.gather(*self._deleting.values(), return_exceptions=True)

    async def sweep(self, is_closed: Callable[[str, str], Awaitable[bool | None]]) -> int:
        """Remove the worktrees on this worker whose run has closed.

        A run's steps can run on several workers (each clones on demand) but its cleanup step runs on one, and a
        terminated run runs none: every worker calls this now and then for what it holds.

        Args:
            is_closed: ``(workspace, run_id) -> closed?``; ``None`` when that cannot be told now (kept).

        Returns:
            How many worktrees were removed.
        """
        root = self._settings.run_workdir
        for leftover in await asyncio.to_thread(_set_aside_dirs, root):
            if leftover not in self._deleting:  # not this worker's deletion in progress: one a stopped worker left
                self._delete_in_background(leftover)
        found = await asyncio.to_thread(_run_dirs, root)
        removed = 0
        for workspace, run_id in found:
            if await is_closed(workspace, run_id) is not True:
                continue
            removed += await self.remove(workspace, run_id)
        return removed


# The name a run folder takes while its files are deleted (Worktrees.remove): a dot first, so never a run id.
_ASIDE_MARK = ".removing-"


def _set_aside(run_dir: Path) -> Path | None:
    """Rename a run folder aside for deletion; None when there is none, ``run_dir`` itself when renaming failed."""
    if not run_dir.exists():
        return None
    aside = run_dir.with_name(f".{run_dir.name}{_ASIDE_MARK}{uuid.uuid4().hex[:12]}")
    try:
        run_dir.rename(aside)
    except OSError as exc:
        log.warning("worktree %s not set aside (%s): deleting it in place", run_dir.name, type(exc).__name__)
        return run_dir
    return aside


def _set_aside_dirs(root: Path) -> list[Path]:
    """Run folders set aside for deletion under the work directory (``<workspace>/.<run_id>.removing-<hex>``)."""
    if not root.is_dir():
        return []
    return sorted(
        entry
        for ws in root.iterdir()
        if ws.is_dir() and not ws.is_symlink()
        for entry in ws.iterdir()
        if entry.name.startswith(".") and _ASIDE_MARK in entry.name and not entry.is_symlink()
    )


def _run_dirs(root: Path) -> list[tuple[str, str]]:
    """``(workspace, run_id)`` of every run folder under the work directory (not those set aside)."""
    if not root.is_dir():
        return []
    return sorted(
        (ws.name, run.name)
        for ws in root.iterdir()
        if ws.is_dir() and not ws.is_symlink()
        for run in ws.iterdir()
        if run.is_dir() and not run.is_symlink() and not run.name.startswith(".")
    )


def _remove_tree(path: Path) -> bool:
    """Delete a run folder; links inside are removed, never followed (shutil.rmtree's fd-based walk)."""
    if not path.exists():
        return False

    def _writable_and_retry(func: Callable[..., object], target: str, _exc: object) -> None:
        # A milestone command may have left read-only folders behind; make the parent writable and retry once.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)
            func(target)

    try:
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=_writable_and_retry)
        else:
            shutil.rmtree(path, onerror=_writable_and_retry)
    except OSError as exc:
        log.warning("worktree %s not removed: %s", path.name, type(exc).__name__)
    return not path.exists()


async def snapshot(path: Path) -> str:
    """The worktree's content (tracked and untracked files) as a git tree object; nothing is committed."""
    await gitops.git("add", "--all", cwd=path)
    return (await gitops.git("write-tree", cwd=path)).stdout.strip()


async def restore(path: Path, tree: str) -> None:
    """Put the worktree back to a :func:`snapshot`: its files as they were, files added since removed."""
    await gitops.git("read-tree", "--reset", "-u", tree, cwd=path)
    await gitops.git("clean", "-fdq", cwd=path)
