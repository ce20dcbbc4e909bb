"""The ``git`` forge: branches pushed to the repository's own remote, pull requests kept in our database.

Merging is a real merge made with ``git``, then pushed to the base branch of ``origin``; the caller's checkout is
never disturbed. ``merge`` and ``squash`` are made in the object database alone (``git merge-tree --write-tree``
and ``git commit-tree``: no checkout, no index); ``rebase`` runs in a scratch worktree linked to the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
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
# A full object name (SHA-1 or SHA-256), as rev-parse, merge-tree and commit-tree print them.
_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# The empty tree of each hash function (git knows it without storing it), by the length of an object name.
_EMPTY_TREE = {
    40: "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
    64: "6ef19b41225c5369f1c104d45d8d85efa9b057b53b14b4b9b939dd74decc5321",
}
# Every .gitattributes file of a tree, at any depth (the root one included).
_ATTRIBUTES_FILES = ":(top,glob)**/.gitattributes"


class _BaseMoved(Exception):
    """Pushing the merged base was rejected because the remote base moved meanwhile."""


@dataclass(frozen=True, slots=True)
class _Resolved:
    """What one merge attempt starts from: the caller's git directory, base and head as fetched."""

    git_dir: str
    base_sha: str
    head_sha: str
    base_tree: str


async def _resolve(worktree: Path, *, base_ref: str, head_ref: str) -> _Resolved:
    # One rev-parse for everything. The closing "--" makes git take every name before it as a revision: without
    # it, a file of the checkout named like one of them would be echoed back as a path instead of failing.
    result = await gitops.git(
        "rev-parse",
        "--absolute-git-dir",
        f"{base_ref}^{{commit}}",
        f"{head_ref}^{{commit}}",
        f"{base_ref}^{{tree}}",
        "--",
        cwd=worktree,
    )
    git_dir, *names = result.stdout.splitlines()
    if names[-1:] == ["--"]:
        names.pop()
    if len(names) != 3 or not all(_OBJECT_ID.fullmatch(name) for name in names):
        raise gitops.GitError(("rev-parse",), returncode=0, stderr=f"unexpected output: {result.stdout!r}")
    base_sha, head_sha, base_tree = names
    return _Resolved(git_dir=git_dir, base_sha=base_sha, head_sha=head_sha, base_tree=base_tree)


def _conflict_error(record: PullRequestRecord, files: list[str]) -> MergeConflictError:
    return MergeConflictError(
        f"pull request #{record.number} ({record.head} into {record.base}) conflicts in {len(files)} file(s)",
        files=files,
    )


async def _is_ancestor(cwd: Path, ancestor: str, descendant: str) -> bool:
    result = await gitops.git("merge-base", "--is-ancestor", ancestor, descendant, cwd=cwd, check=False)
    return result.returncode == 0


class GitForge:
    """Pull requests on a plain git remote, with their records in our database.

    Args:
        engine: Database engine holding the ``pull_requests`` tables.
        author_name: Author and committer of merge and squash commits.
        author_email: Their e-mail address.
        workdir: Directory for scratch merge worktrees (``rebase``) and the base's attributes (``merge``,
            ``squash``).
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
            worktree: A clone of ``repo_url``; left as it was (its index and checkout are never used; a rebase
                runs in a linked scratch worktree).
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
        resolved = await _resolve(worktree, base_ref=base_ref, head_ref=head_ref)
        if strategy == "rebase":
            sha = await self._rebase(worktree, record, base_sha=resolved.base_sha, head_sha=resolved.head_sha)
        else:
            sha = await self._combine_trees(worktree, record, strategy, resolved)
        if sha == resolved.base_sha:
            # Base already holds the changes (a retry after a crash past the push): nothing to push.
            return sha
        pushed = await gitops.git(
            "push", "--quiet", "--porcelain", REMOTE, f"{sha}:refs/heads/{base}", cwd=worktree, check=False
        )
        if pushed.returncode != 0:
            # Tell "base moved" from other failures by looking at base, not by reading git's message.
            await gitops.fetch(worktree, remote=REMOTE, branches=(base,))
            if await gitops.current_sha(worktree, base_ref) != resolved.base_sha:
                raise _BaseMoved
            raise gitops.GitError(("push",), returncode=pushed.returncode, stderr=pushed.stderr)
        return sha

    async def _combine_trees(
        self, worktree: Path, record: PullRequestRecord, strategy: MergeStrategy, resolved: _Resolved
    ) -> str:
        """Merge or squash head into base in the object database alone; return the commit base should become.

        ``git merge-tree --write-tree`` computes the merged tree (the ``ort`` merge ``git merge`` makes) without
        an index or a checkout, and ``git commit-tree`` makes the commit: no file of the repository is written
        except its ``.gitattributes`` files (see :meth:`_base_attributes`).
        """
        base_sha, head_sha = resolved.base_sha, resolved.head_sha
        self._workdir.mkdir(parents=True, exist_ok=True)
        scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, f"-{record.number}", "attrs-", self._workdir))
        try:
            attributes = await self._base_attributes(worktree, scratch, resolved)
            # merge-tree reads .gitattributes from its working directory (it never changes to the work tree):
            # run it in the directory holding base's, so the attributes are base's as in a merge checked out at
            # base, never those of the caller's checkout (usually head, which must not choose how it is merged).
            result = await gitops.git(
                "merge-tree",
                "--write-tree",
                "--name-only",
                "-z",
                "--no-messages",
                base_sha,
                head_sha,
                cwd=attributes,
                env={"GIT_DIR": resolved.git_dir, "GIT_WORK_TREE": str(attributes)},
                check=False,
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)
        tree, *listed = result.stdout.split("\0")
        if result.returncode != 0 or not _OBJECT_ID.fullmatch(tree):
            files = sorted({f for f in listed if f}) if result.returncode == 1 else []
            if not files:
                raise gitops.GitError(("merge-tree",), returncode=result.returncode, stderr=result.stderr)
            raise _conflict_error(record, files)
        if strategy == "merge":
            # Only a merge that changes nothing can be one already made (head in base's history): ask git then.
            if tree == resolved.base_tree and await _is_ancestor(worktree, head_sha, base_sha):
                return base_sha
            message = f"Merge pull request #{record.number} from {record.head}\n\n{record.title}"
            parents: tuple[str, ...] = (base_sha, head_sha)
        else:
            if tree == resolved.base_tree:
                return base_sha  # nothing to squash (as ``git commit`` with nothing staged)
            message = f"{record.title} (#{record.number})\n\n{record.body}".rstrip()
            parents = (base_sha,)
        committed = await gitops.git(
            "commit-tree",
            "--no-gpg-sign",
            *(arg for parent in parents for arg in ("-p", parent)),
            "-m",
            gitops.stripspace(message),
            tree,
            cwd=worktree,
            env=gitops.identity_env(self._author_name, self._author_email),
        )
        return committed.stdout.strip()

    async def _base_attributes(self, worktree: Path, scratch: Path, resolved: _Resolved) -> Path:
        """Write base's ``.gitattributes`` files (and nothing else) under ``scratch``; return their work tree.

        git itself writes them (a path checkout into a work tree of their own with a throwaway index), so git
        checks their paths as any checkout does; the caller's index and checkout are never touched.
        """
        tree_dir = scratch / "tree"
        tree_dir.mkdir()
        empty_tree = _EMPTY_TREE[len(resolved.base_tree)]
        listed = await gitops.git(
            "diff-tree",
            "--quiet",
            "-r",
            "--no-renames",
            empty_tree,
            resolved.base_tree,
            "--",
            _ATTRIBUTES_FILES,
            cwd=worktree,
            check=False,
        )
        if listed.returncode == 0:
            return tree_dir  # base has none (a path checkout matching nothing would fail)
        if listed.returncode != 1:
            raise gitops.GitError(("diff-tree",), returncode=listed.returncode, stderr=listed.stderr)
        await gitops.git(
            "checkout",
            "--quiet",
            resolved.base_sha,
            "--",
            _ATTRIBUTES_FILES,
            cwd=tree_dir,
            env={
                "GIT_DIR": resolved.git_dir,
                "GIT_WORK_TREE": str(tree_dir),
                "GIT_INDEX_FILE": str(scratch / "index"),
            },
        )
        return tree_dir

    async def _rebase(self, worktree: Path, record: PullRequestRecord, *, base_sha: str, head_sha: str) -> str:
        """Replay head on base in a scratch worktree linked to ``worktree``; return the commit base should become.

        git 2.39 has no way to rebase without a work tree (``git replay`` came later), so this one checks out.
        """
        if await _is_ancestor(worktree, head_sha, base_sha):
            return base_sha
        self._workdir.mkdir(parents=True, exist_ok=True)
        scratch = self._workdir / f"merge-{record.number}-{uuid.uuid4().hex[:10]}"
        # Detached at head, which the rebase replays on base.
        await gitops.git("worktree", "add", "--quiet", "--detach", str(scratch), head_sha, cwd=worktree)
        try:
            ident = gitops.identity_env(self._author_name, self._author_email)
            result = await gitops.git("rebase", "--quiet", base_sha, cwd=scratch, env=ident, check=False)
            if result.returncode != 0:
                await self._conflict(scratch, record, result, abort=("rebase", "--abort"))
            return await gitops.current_sha(scratch)
        finally:
            await self._remove_scratch(worktree, scratch)

    async def _conflict(
        self, scratch: Path, record: PullRequestRecord, result: gitops.GitResult, *, abort: tuple[str, ...]
    ) -> None:
        unmerged = await gitops.git("diff", "--name-only", "--diff-filter=U", "-z", cwd=scratch, check=False)
        files = sorted({f for f in unmerged.stdout.split("\0") if f})
        await gitops.git(*abort, cwd=scratch, check=False)
        if not files:
            raise gitops.GitError(("merge",), returncode=result.returncode, stderr=result.stderr)
        raise _conflict_error(record, files)

    async def _remove_scratch(self, worktree: Path, scratch: Path) -> None:
        with contextlib.suppress(gitops.GitError):
            await gitops.git("worktree", "remove", "--force", str(scratch), cwd=worktree, check=False)
        # Normally gone already; rmtree tolerates that, and covers a scratch dir git no longer knows.
        await asyncio.to_thread(shutil.rmtree, scratch, True)
        with contextlib.suppress(gitops.GitError):
            await gitops.git("worktree", "prune", cwd=worktree, check=False)
