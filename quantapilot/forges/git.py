"""The ``git`` forge: branches pushed to the repository's own remote, pull requests kept in our database.

Merging is a real merge made with ``git`` in a scratch worktree linked to the caller's worktree (so the
caller's checkout is never disturbed), then pushed to the base branch of ``origin``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from pathlib import Path

from sqlalchemy.engine import Engine

from quantapilot.db import session_scope
from quantapilot.forges import gitops
from quantapilot.forges.base import (
    ForgeError,
    MergeConflictError,
    MergeStrategy,
    PullRequest,
    PullRequestDraft,
    push_head,
)
from quantapilot.forges.store import (
    PullRequestRecord,
    add_comment,
    get_or_create_pull_request,
    get_pull_request,
    mark_merged,
)

REMOTE = "origin"
# How often a merge is redone on a freshly fetched base when pushing it was rejected because base moved.
PUSH_ATTEMPTS = 4


class _BaseMoved(Exception):
    """Pushing the merged base was rejected because the remote base moved meanwhile."""


class GitForge:
    """Pull requests on a plain git remote, with their records in our database.

    Args:
        engine: Database engine holding the ``pull_requests`` tables.
        author_name: Author and committer of merge and squash commits.
        author_email: Their e-mail address.
        workdir: Directory for scratch merge worktrees.
    """

    def __init__(self, engine: Engine, *, author_name: str, author_email: str, workdir: Path) -> None:
        self._engine = engine
        self._author_name = author_name
        self._author_email = author_email
        self._workdir = workdir

    async def open_pull_request(self, draft: PullRequestDraft, *, worktree: Path) -> PullRequest:
        """Push the draft's head to ``origin`` and record its pull request (or return the recorded one).

        Args:
            draft: The pull request; ``repo_url`` is ``origin`` of ``worktree``.
            worktree: A clone of the repository with the local branch ``draft.head``.

        Returns:
            The pull request.
        """
        # Pushing first and recording second: a crash in between leaves a pushed branch and no record, and the
        # retry pushes again (a no-op) and creates the one record.
        await push_head(worktree, draft.head, remote=REMOTE)
        record = await asyncio.to_thread(
            get_or_create_pull_request,
            self._engine,
            repo_url=draft.repo_url,
            head=draft.head,
            base=draft.base,
            title=draft.title,
            body=draft.body,
            run_id=draft.run_id,
        )
        return record.to_model()

    async def comment(self, *, repo_url: str, number: int, body: str) -> None:
        """Add a comment to pull request ``number``.

        Raises:
            ForgeError: No such pull request (not retryable).
        """

        def _add() -> None:
            with session_scope(self._engine) as session:
                record = get_pull_request(session=session, repo_url=repo_url, number=number)
                if record is None:
                    raise ForgeError(f"pull request #{number} not found", retryable=False, status=404)
                add_comment(session=session, record=record, body=body)

        await asyncio.to_thread(_add)

    async def get(self, *, repo_url: str, number: int) -> PullRequest:
        """Read pull request ``number``.

        Raises:
            ForgeError: No such pull request (not retryable).
        """
        return (await asyncio.to_thread(self._load, repo_url, number)).to_model()

    async def merge(self, *, repo_url: str, worktree: Path, number: int, strategy: MergeStrategy) -> PullRequest:
        """Merge pull request ``number`` into its base branch on ``origin``.

        Args:
            repo_url: The repository URL.
            worktree: A clone of ``repo_url``; left as it was (the merge runs in a linked scratch worktree).
            number: Pull request number.
            strategy: ``merge`` (``--no-ff``), ``squash`` (one commit) or ``rebase`` (head replayed on base,
                then base fast-forwarded).

        Returns:
            The merged pull request; the one recorded before when it was already merged.

        Raises:
            MergeConflictError: Head conflicts with base; nothing was pushed and the worktree is clean.
            ForgeError: The pull request is unknown or closed, or git failed.
        """
        record = await asyncio.to_thread(self._load, repo_url, number)
        if record.state == "merged":
            return record.to_model()
        if record.state != "open":
            raise ForgeError(f"pull request #{number} is {record.state}", retryable=False)
        for _ in range(PUSH_ATTEMPTS):
            try:
                sha = await self._merge_once(worktree, record, strategy)
            except _BaseMoved:
                continue
            except gitops.GitError as exc:
                raise ForgeError(f"merging #{number} failed: {exc}", retryable=exc.timed_out) from exc
            return (await asyncio.to_thread(self._record_merged, repo_url, number, sha)).to_model()
        raise ForgeError(f"{record.base} kept moving while merging #{number}", retryable=True)

    def _load(self, repo_url: str, number: int) -> PullRequestRecord:
        with session_scope(self._engine) as session:
            record = get_pull_request(session=session, repo_url=repo_url, number=number)
        if record is None:
            raise ForgeError(f"pull request #{number} not found", retryable=False, status=404)
        return record

    def _record_merged(self, repo_url: str, number: int, sha: str) -> PullRequestRecord:
        with session_scope(self._engine) as session:
            record = get_pull_request(session=session, repo_url=repo_url, number=number)
            assert record is not None
            if record.state != "merged":
                mark_merged(session=session, record=record, merge_sha=sha)
            return record

    async def _merge_once(self, worktree: Path, record: PullRequestRecord, strategy: MergeStrategy) -> str:
        base, head = record.base, record.head
        await gitops.fetch(worktree, remote=REMOTE, branches=(base, head))
        base_ref = f"refs/remotes/{REMOTE}/{base}"
        head_ref = f"refs/remotes/{REMOTE}/{head}"
        base_sha = await gitops.current_sha(worktree, base_ref)
        head_sha = await gitops.current_sha(worktree, head_ref)
        self._workdir.mkdir(parents=True, exist_ok=True)
        scratch = self._workdir / f"merge-{record.number}-{uuid.uuid4().hex[:10]}"
        await gitops.git("worktree", "add", "--quiet", "--detach", str(scratch), base_sha, cwd=worktree)
        try:
            sha = await self._combine(scratch, record, strategy, base_sha=base_sha, head_sha=head_sha)
            if sha == base_sha:
                # Base already holds the changes (a retry after a crash past the push): nothing to push.
                return sha
            pushed = await gitops.git(
                "push", "--quiet", "--porcelain", REMOTE, f"{sha}:refs/heads/{base}", cwd=scratch, check=False
            )
            if pushed.returncode != 0:
                # Tell "base moved" from other failures by looking at base, not by reading git's message.
                await gitops.fetch(worktree, remote=REMOTE, branches=(base,))
                if await gitops.current_sha(worktree, base_ref) != base_sha:
                    raise _BaseMoved
                raise gitops.GitError(("push",), returncode=pushed.returncode, stderr=pushed.stderr)
            return sha
        finally:
            await self._remove_scratch(worktree, scratch)

    async def _combine(
        self,
        scratch: Path,
        record: PullRequestRecord,
        strategy: MergeStrategy,
        *,
        base_sha: str,
        head_sha: str,
    ) -> str:
        """Combine head into base in ``scratch`` (detached at base); return the commit base should become."""
        ident = gitops.identity_env(self._author_name, self._author_email)
        if strategy in ("merge", "rebase"):
            merged = await gitops.git("merge-base", "--is-ancestor", head_sha, base_sha, cwd=scratch, check=False)
            if merged.returncode == 0:
                return base_sha
        if strategy == "merge":
            message = f"Merge pull request #{record.number} from {record.head}\n\n{record.title}"
            result = await gitops.git(
                "merge", "--no-ff", "--no-edit", "-m", message, head_sha, cwd=scratch, env=ident, check=False
            )
            if result.returncode != 0:
                await self._conflict(scratch, record, result, abort=("merge", "--abort"))
        elif strategy == "squash":
            result = await gitops.git("merge", "--squash", head_sha, cwd=scratch, env=ident, check=False)
            if result.returncode != 0:
                await self._conflict(scratch, record, result, abort=("reset", "--hard", "--quiet", base_sha))
            message = f"{record.title} (#{record.number})\n\n{record.body}".rstrip()
            committed = await gitops.commit_all(
                scratch, message=message, author_name=self._author_name, author_email=self._author_email
            )
            if committed is None:
                return base_sha
        else:
            await gitops.git("checkout", "--quiet", "--detach", head_sha, cwd=scratch)
            result = await gitops.git("rebase", "--quiet", base_sha, cwd=scratch, env=ident, check=False)
            if result.returncode != 0:
                await self._conflict(scratch, record, result, abort=("rebase", "--abort"))
        return await gitops.current_sha(scratch)

    async def _conflict(
        self, scratch: Path, record: PullRequestRecord, result: gitops.GitResult, *, abort: tuple[str, ...]
    ) -> None:
        unmerged = await gitops.git("diff", "--name-only", "--diff-filter=U", "-z", cwd=scratch, check=False)
        files = sorted({f for f in unmerged.stdout.split("\0") if f})
        await gitops.git(*abort, cwd=scratch, check=False)
        if not files:
            raise gitops.GitError(("merge",), returncode=result.returncode, stderr=result.stderr)
        raise MergeConflictError(
            f"pull request #{record.number} ({record.head} into {record.base}) conflicts in {len(files)} file(s)",
            files=files,
        )

    async def _remove_scratch(self, worktree: Path, scratch: Path) -> None:
        with contextlib.suppress(gitops.GitError):
            await gitops.git("worktree", "remove", "--force", str(scratch), cwd=worktree, check=False)
        # Normally gone already; rmtree tolerates that, and covers a scratch dir git no longer knows.
        await asyncio.to_thread(shutil.rmtree, scratch, True)
        with contextlib.suppress(gitops.GitError):
            await gitops.git("worktree", "prune", cwd=worktree, check=False)
