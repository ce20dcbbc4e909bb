"""Activities of the repository run: clone, configuration, documentation, pull requests, milestones.

Every activity is idempotent: it can run again on any worker after a crash. Work that lives on disk (the run's
worktree) is rebuilt from the remote when missing, commits use the run's start time as their date so a redo makes
the same commit, and branches are force-pushed to that same commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from quantapilot.config import (
    MAX_CONFIG_BYTES,
    ConfigError,
    QuantapilotConfig,
    docs_branch_problem,
    in_run_namespace,
    load_config,
    with_self_approval_floor,
)
from quantapilot.db import session_scope
from quantapilot.docgen.generator import OutputConflictError, generate_docs, write_pages
from quantapilot.docgen.lint import lint_pages
from quantapilot.docs_store import PageInput, upsert_pages
from quantapilot.errors import ErrorCode
from quantapilot.forges import diskcap, gitops, make_forge, remotes
from quantapilot.forges.base import Forge, ForgeError, MergeConflictError, PullRequest
from quantapilot.models import StepOutcome
from quantapilot.repofiles import (
    FileRefusedError,
    RepoReadError,
    UnsafePathError,
    normalise_path,
    open_repo_files,
    write_file,
)
from quantapilot.runs.contracts import (
    CLEANUP_WORKTREE,
    CLONE_REPOSITORY,
    GENERATE_DOCUMENTATION,
    LOAD_RUN_CONFIG,
    MERGE_PULL_REQUEST,
    OPEN_PULL_REQUEST,
    RUN_MILESTONE,
    CloneResult,
    DocsInput,
    DocsResult,
    LoadConfigInput,
    MergePullRequestInput,
    MilestoneInput,
    MilestoneResult,
    OpenPullRequestInput,
    PullRequestResult,
    RepoRef,
)
from quantapilot.sandbox import (
    Launch,
    SandboxPolicy,
    SandboxUnavailable,
    command_env,
    ensure_available,
    launch,
    prepare_worktree,
)
from quantapilot.settings import Settings
from quantapilot.webhooks.urlsafety import Resolver

T = TypeVar("T")

log = logging.getLogger("quantapilot.worktrees")

OUTPUT_TAIL_CHARS = 4000
# What a caller learns about a repository host that is refused or does not answer: nothing about what answered.
HOST_REFUSED = "repository host not allowed"
UNREACHABLE = "repository unreachable or not found"
# After a command is killed (or exited), its output is read for at most this long: a process that escaped the
# kill (possible only without the sandbox) may hold the pipe open forever.
OUTPUT_DRAIN_S = 5.0


def permanent(code: ErrorCode, message: str) -> ApplicationError:
    """A non-retryable failure with a stable error code (the workflow turns it into ``run.failed``)."""
    return ApplicationError(message, type=code, non_retryable=True)


def repo_url_problem(url: str, patterns: list[str]) -> str | None:
    """Tell why a repository URL is refused, or None when it is allowed.

    Credentials in the URL and git's ``ext::`` transport are always refused; anything else must match one of the
    operator's fnmatch patterns (so ``file://`` and local paths only work when a pattern admits them).
    """
    if url.startswith("-") or "::" in url.split("/", 1)[0]:
        return "transport not allowed"
    parts = urlsplit(url)
    # A password anywhere, or any user name on http(s) (where it is often a token), is a credential; the
    # user name of ssh://git@host/... is not.
    if parts.password or (parts.username and parts.scheme.lower() in ("http", "https", "ftp", "ftps")):
        return "credentials in the URL are not allowed"
    if any(ch in url for ch in "\r\n\t ") or len(url) > 2000:
        return "malformed URL"
    if not any(fnmatch.fnmatchcase(url, pattern) for pattern in patterns):
        return "URL does not match the allowed repository patterns"
    return None


@contextlib.asynccontextmanager
async def heartbeating(detail: str) -> AsyncIterator[None]:
    """Heartbeat in the background while the body runs, so a dead worker is noticed within the heartbeat timeout.

    The interval is a third of the activity's heartbeat timeout (nothing is sent when it has none).
    """
    timeout = activity.info().heartbeat_timeout if activity.in_activity() else None
    if not timeout:
        yield
        return
    interval = max(timeout.total_seconds() / 3, 0.2)

    async def _beat() -> None:
        while True:
            activity.heartbeat(detail)
            await asyncio.sleep(interval)

    task = asyncio.create_task(_beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _date_env(when: datetime) -> dict[str, str]:
    stamp = f"{int(when.timestamp())} +0000"
    return {"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}


class RepoActivities:
    """The repository run's activities, built with their dependencies.

    Args:
        settings: Service settings (work directory, allowed repositories, git identity, forges).
        engine: Database engine (documentation pages, pull request records).
        resolver: Resolves repository hosts before they are checked (tests point names at loopback);
            ``getaddrinfo`` when None.
    """

    def __init__(self, settings: Settings, engine: Engine, *, resolver: Resolver | None = None) -> None:
        self._settings = settings
        self._engine = engine
        self._resolver = resolver
        self._locks: dict[str, asyncio.Lock] = {}
        self._http: aiohttp.ClientSession | None = None
        # Transports the worker's git may use in this worker's activities: what the allowed URLs need.
        self._git_protocols = gitops.protocols_for(settings.allowed_repo_patterns)

    # ----- helpers -----------------------------------------------------------------------------------------

    def worktree_path(self, ref: RepoRef) -> Path:
        """Directory of the run's clone."""
        return self._settings.run_workdir / ref.workspace / ref.run_id / "repo"

    def _lock(self, run_id: str) -> asyncio.Lock:
        # Activities of one run never overlap in the workflow, but a retry can start while a timed-out attempt is
        # still finishing on this worker: one lock per run keeps them off the same worktree.
        return self._locks.setdefault(run_id, asyncio.Lock())

    def _identity(self, when: datetime) -> dict[str, str]:
        return gitops.identity_env(self._settings.git_author_name, self._settings.git_author_email) | _date_env(when)

    @contextlib.asynccontextmanager
    async def _network(self, ref: RepoRef, *, last_attempt_fails: bool = False) -> AsyncIterator[None]:
        """Check the repository's host and run the body's git commands pinned to the checked addresses.

        The host is resolved once here; a refused one fails the run (``REPO_URL_NOT_ALLOWED``), one that does
        not resolve is retried (``TRANSIENT_NETWORK``), for good on the last attempt when ``last_attempt_fails``.
        Either way the message says nothing about what the name resolved to.
        """
        try:
            pin = await remotes.pin_remote(
                ref.repo_url, allow_private=self._settings.repo_allow_private, resolver=self._resolver
            )
        except remotes.RemoteRefused as exc:
            if exc.reason == "transport_not_allowed":
                message = "repository URL refused: transport not allowed"
                raise permanent(ErrorCode.REPO_URL_NOT_ALLOWED, message) from None
            activity.logger.warning(HOST_REFUSED)
            raise permanent(ErrorCode.REPO_URL_NOT_ALLOWED, HOST_REFUSED) from None
        except remotes.RemoteUnreachable:
            raise self._unreachable(last_attempt_fails=last_attempt_fails) from None
        with gitops.pinned(pin):
            yield

    @staticmethod
    def _unreachable(*, last_attempt_fails: bool) -> ApplicationError:
        info = activity.info()
        last = info.retry_policy is not None and 0 < info.retry_policy.maximum_attempts <= info.attempt
        # Unreachable may be a passing network fault: retry, but fail for good on the last attempt.
        if last and last_attempt_fails:
            return permanent(ErrorCode.REPO_CLONE_FAILED, UNREACHABLE)
        return ApplicationError(UNREACHABLE, type=ErrorCode.TRANSIENT_NETWORK)

    async def _ensure_worktree(self, ref: RepoRef) -> Path:
        """Return the run's worktree, cloning it again when this worker does not have it."""
        path = self.worktree_path(ref)
        if (path / ".git").is_dir():
            return path
        if gitops.current_pin() is None:
            async with self._network(ref):
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
            activity.logger.warning("git clone %s", "timed out" if exc.timed_out else f"exited with {exc.returncode}")
            raise ApplicationError(UNREACHABLE, type=ErrorCode.REPO_CLONE_FAILED) from None
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        # Rename last so a crash mid-clone never leaves a half-cloned worktree that looks complete.
        partial.rename(path)
        return path

    def _too_large(self) -> ApplicationError:
        limit = self._settings.clone_max_bytes
        return permanent(ErrorCode.REPO_TOO_LARGE, f"repository is larger than the limit of {limit} bytes")

    async def _capped(self, path: Path, work: Awaitable[T]) -> T:
        """Await a fetch (or a forge call that fetches) while the worktree stays within ``QP_CLONE_MAX_BYTES``."""
        try:
            return await diskcap.within(path, self._settings.clone_max_bytes, work)
        except diskcap.TooLargeError:
            # The worktree is over the cap now: the next attempt clones it again, which the cap refuses too.
            shutil.rmtree(path, ignore_errors=True)
            raise self._too_large() from None

    async def _commit_and_push(
        self, path: Path, *, run_id: str, branch: str, message: str, when: datetime, pathspec: str = "."
    ) -> tuple[bool, str]:
        """Commit what changed under ``pathspec`` and push ``branch`` to it.

        The commit is dated ``when`` (the run's start), so a redo after a crash makes the very same commit. Inside
        the run's own namespace (``quantapilot/<run_id>/``) the branch is force-pushed; any other branch is only
        created, never rewritten (``CONFIG_INVALID`` when it already exists at another commit), so a
        ``quantapilot.yml`` cannot point the run at ``release`` or at another run's branch.

        Returns:
            Whether there was a change to commit, and the branch's sha.
        """
        await gitops.git("add", "--all", "--", pathspec, cwd=path)
        staged = await gitops.git("diff", "--cached", "--quiet", cwd=path, check=False)
        changed = staged.returncode != 0
        if changed:
            await gitops.git("commit", "--quiet", "--no-verify", "-m", message, cwd=path, env=self._identity(when))
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

    def _forge(self, name: str | None) -> Forge:
        kind = name or self._settings.default_forge
        if kind not in ("git", "github", "gitea"):
            raise permanent(ErrorCode.PRECONDITION_FAILED, f"unknown forge {kind}")
        if kind != "git" and (self._http is None or self._http.closed):
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        try:
            return make_forge(kind, settings=self._settings, engine=self._engine, http=self._http)  # type: ignore[arg-type]
        except ForgeError as exc:
            raise self._forge_failure(exc) from None

    async def close(self) -> None:
        """Release the HTTP session used by REST forges."""
        if self._http is not None:
            await self._http.close()

    # ----- activities --------------------------------------------------------------------------------------

    @activity.defn(name=CLONE_REPOSITORY)
    async def clone_repository(self, ref: RepoRef) -> CloneResult:
        """Check the URL is allowed and the branch exists, then clone the repository into the run's worktree."""
        gitops.restrict_protocols(self._git_protocols)
        problem = repo_url_problem(ref.repo_url, self._settings.allowed_repo_patterns)
        if problem:
            raise permanent(ErrorCode.REPO_URL_NOT_ALLOWED, f"repository URL refused: {problem}")
        async with self._network(ref, last_attempt_fails=True):
            probe = await gitops.git(
                "ls-remote",
                "--exit-code",
                "--heads",
                "--",
                ref.repo_url,
                f"refs/heads/{ref.branch}",
                cwd=self._settings.run_workdir if self._settings.run_workdir.is_dir() else Path.cwd(),
                timeout_s=60,
                check=False,
            )
            if probe.returncode == 2:
                # git documents exit status 2 for "no matching refs": the repository answered, the branch is missing.
                raise permanent(ErrorCode.BRANCH_NOT_FOUND, f"branch {ref.branch} not found in the repository")
            if probe.returncode != 0:
                activity.logger.warning("git ls-remote exited with %s", probe.returncode)
                raise self._unreachable(last_attempt_fails=True)
            async with self._lock(ref.run_id), heartbeating("clone"):
                path = await self._ensure_worktree(ref)
                sha = await gitops.current_sha(path)
        activity.logger.info("cloned %s at %s", ref.branch, sha[:12], extra={"commit_sha": sha})
        return CloneResult(commit_sha=sha, default_branch=ref.branch)

    @activity.defn(name=LOAD_RUN_CONFIG)
    async def load_run_config(self, inp: LoadConfigInput) -> QuantapilotConfig:
        """Read and validate quantapilot.yml (documented defaults when the file is absent)."""
        gitops.restrict_protocols(self._git_protocols)
        async with self._lock(inp.repo.run_id), heartbeating("read_config"):
            root = await self._ensure_worktree(inp.repo)
            text = await asyncio.to_thread(_read_config_text, root, inp.repo.commit_sha, inp.path)
        try:
            config = load_config(text, source=inp.path)
        except ConfigError as exc:
            raise permanent(ErrorCode.CONFIG_INVALID, str(exc)) from None
        if config.gates.tests_required:
            untested = [m.id for m in config.milestones if not any(s.name == "test" and s.run for s in m.steps)]
            if untested:
                raise permanent(
                    ErrorCode.CONFIG_INVALID,
                    f"gates.tests_required is on but milestones {', '.join(untested)} have no `test` step",
                )
        branch_problem = docs_branch_problem(config, inp.repo.run_id)
        if branch_problem:
            raise permanent(ErrorCode.CONFIG_INVALID, branch_problem)
        if inp.allow_self_approval is not None:
            config = with_self_approval_floor(config, allowed=inp.allow_self_approval)
        has_commands = any(step.run for m in config.milestones for step in m.steps)
        allowed = any(fnmatch.fnmatchcase(inp.repo.repo_url, p) for p in self._settings.command_repo_patterns)
        if has_commands and not allowed:
            raise permanent(
                ErrorCode.COMMANDS_NOT_ALLOWED,
                "quantapilot.yml has milestone commands but this repository is not allowed to run commands",
            )
        if has_commands:
            # Fail now rather than after the documentation and the first gates: no command would run anyway.
            await self._require_sandbox(self._sandbox(inp.repo.repo_url))
        return config

    @activity.defn(name=GENERATE_DOCUMENTATION)
    async def generate_documentation(self, inp: DocsInput) -> DocsResult:
        """Generate, lint, commit and push the documentation on the docs branch, and store its pages."""
        gitops.restrict_protocols(self._git_protocols)
        assert inp.repo.commit_sha is not None
        async with self._lock(inp.repo.run_id), heartbeating("generate_docs"), self._network(inp.repo):
            path = await self._ensure_worktree(inp.repo)
            await gitops.git("checkout", "--quiet", "--force", "-B", inp.docs_branch, inp.repo.commit_sha, cwd=path)
            await gitops.git("clean", "-fdq", cwd=path)
            version = f"git-{inp.repo.commit_sha[:12]}"
            pages = await asyncio.to_thread(
                generate_docs,
                path,
                output_folder=inp.output_folder,
                project=inp.project,
                version=version,
                updated=inp.run_started_at.date().isoformat(),
                owners=inp.owners,
                commit=inp.repo.commit_sha,
                max_file_bytes=self._settings.repo_max_file_bytes,
            )
            if inp.lint:
                # In a thread: thousands of pages must not hold up the worker's other runs.
                issues = await asyncio.to_thread(lint_pages, pages)
                if issues:
                    first = issues[0]
                    raise permanent(
                        ErrorCode.DOCS_LINT_FAILED,
                        f"{len(issues)} lint issue(s); first: page {first.page} field {first.field}: {first.message}",
                    )
            try:
                await asyncio.to_thread(write_pages, path, pages, output_folder=inp.output_folder)
            except OutputConflictError as exc:
                raise permanent(ErrorCode.PRECONDITION_FAILED, str(exc)) from None
            changed, sha = await self._commit_and_push(
                path,
                run_id=inp.repo.run_id,
                branch=inp.docs_branch,
                message=f"docs: generate documentation for {inp.project}\n\nQuantaPilot run {inp.repo.run_id}.",
                when=inp.run_started_at,
                pathspec=inp.output_folder,
            )

        def _store() -> None:
            with session_scope(self._engine) as session:
                upsert_pages(
                    session=session,
                    workspace=inp.repo.workspace,
                    project=inp.project,
                    version=version,
                    commit_sha=inp.repo.commit_sha,
                    pages=[PageInput.from_generated(p, slug_prefix=inp.project) for p in pages],
                )

        await asyncio.to_thread(_store)
        activity.logger.info("documentation generated: %d pages on %s", len(pages), inp.docs_branch)
        return DocsResult(
            docs_branch=inp.docs_branch, commit_sha=sha, pages=len(pages), version=version, changed=changed
        )

    @activity.defn(name=OPEN_PULL_REQUEST)
    async def open_pull_request(self, inp: OpenPullRequestInput) -> PullRequestResult:
        """Push the head branch and open its pull request, or return the one already open for this run."""
        gitops.restrict_protocols(self._git_protocols)
        async with self._lock(inp.repo.run_id), heartbeating("open_pull_request"), self._network(inp.repo):
            path = await self._ensure_worktree(inp.repo)
            try:
                pr = await self._forge(inp.forge).open_pull_request(
                    repo_url=inp.repo.repo_url,
                    worktree=path,
                    head=inp.head,
                    base=inp.base,
                    title=inp.title,
                    body=inp.body,
                    run_id=inp.repo.run_id,
                )
            except ForgeError as exc:
                raise self._forge_failure(exc) from None
        return _pr_result(pr)

    @activity.defn(name=MERGE_PULL_REQUEST)
    async def merge_pull_request(self, inp: MergePullRequestInput) -> PullRequestResult:
        """Merge a pull request with the configured strategy (a no-op when it is already merged)."""
        gitops.restrict_protocols(self._git_protocols)
        async with self._lock(inp.repo.run_id), heartbeating("merge"), self._network(inp.repo):
            path = await self._ensure_worktree(inp.repo)
            try:
                # The merge fetches base and head into the worktree: the cap holds for that fetch too.
                pr = await self._capped(
                    path,
                    self._forge(inp.forge).merge(
                        repo_url=inp.repo.repo_url,
                        worktree=path,
                        number=inp.number,
                        strategy=inp.strategy,  # type: ignore[arg-type]
                    ),
                )
            except MergeConflictError as exc:
                raise permanent(ErrorCode.MERGE_CONFLICT, str(exc)) from None
            except ForgeError as exc:
                raise self._forge_failure(exc) from None
        return _pr_result(pr)

    def _sandbox(self, repo_url: str) -> SandboxPolicy:
        return SandboxPolicy.from_settings(self._settings, repo_url)

    @staticmethod
    async def _require_sandbox(policy: SandboxPolicy) -> None:
        try:
            await asyncio.to_thread(ensure_available, policy)
        except SandboxUnavailable as exc:
            raise permanent(ErrorCode.COMMANDS_SANDBOX_UNAVAILABLE, str(exc)) from None

    @staticmethod
    def _forge_failure(exc: ForgeError) -> ApplicationError:
        return ApplicationError(str(exc), type=ErrorCode.FORGE_ERROR, non_retryable=not exc.retryable)

    @activity.defn(name=RUN_MILESTONE)
    async def run_milestone(self, inp: MilestoneInput) -> MilestoneResult:
        """Run a milestone's commands on its own branch, commit what they changed and push the branch."""
        gitops.restrict_protocols(self._git_protocols)
        async with self._lock(inp.repo.run_id), heartbeating("milestone"), self._network(inp.repo):
            path = await self._ensure_worktree(inp.repo)
            await self._capped(path, gitops.fetch(path, branches=(inp.repo.branch,)))
            await gitops.git("checkout", "--quiet", "--force", "-B", inp.branch, f"origin/{inp.repo.branch}", cwd=path)
            await gitops.git("clean", "-fdq", cwd=path)
            outcomes: list[StepOutcome] = []
            failed: str | None = None
            policy = self._sandbox(inp.repo.repo_url)
            if any(step.run for step in inp.steps):
                await self._require_sandbox(policy)
            for step in inp.steps:
                if not step.run:
                    continue
                before = await _snapshot(path) if step.attempts > 1 else None
                for attempt in range(1, step.attempts + 1):
                    if before is not None and attempt > 1:
                        # A retry starts from the worktree as the step found it, so a command that half-wrote
                        # files (or appends) does not see its own leftovers.
                        await _restore(path, before)
                    try:
                        outcome = await run_command(
                            step.name, step.run, cwd=path, timeout_s=step.timeout_s, sandbox=policy
                        )
                    except SandboxUnavailable as exc:
                        raise permanent(ErrorCode.COMMANDS_SANDBOX_UNAVAILABLE, str(exc)) from None
                    outcomes.append(outcome.model_copy(update={"attempt": attempt}))
                    if outcome.exit_code == 0:
                        break
                if outcomes[-1].exit_code != 0:
                    failed = step.name
                    break
            if failed is not None:
                return MilestoneResult(
                    branch=inp.branch, commit_sha=None, changed=False, steps=outcomes, failed_step=failed
                )
            if not any(s.run for s in inp.steps):
                # A milestone without commands still leaves a reviewable record of its criteria.
                criteria = "".join(f"- [ ] {c}\n" for c in inp.criteria) or "- (no criteria)\n"
                record = f"# {inp.milestone_id}: {inp.title}\n\n## Criteria\n\n{criteria}"
                try:
                    # Never through a tracked link (.quantapilot/milestones -> /tmp/x): refused, nothing written.
                    await asyncio.to_thread(
                        write_file, path, f".quantapilot/milestones/{inp.milestone_id}.md", record.encode("utf-8")
                    )
                except UnsafePathError as exc:
                    raise permanent(ErrorCode.PRECONDITION_FAILED, f"milestone record not written: {exc}") from None
            changed, sha = await self._commit_and_push(
                path,
                run_id=inp.repo.run_id,
                branch=inp.branch,
                message=f"{inp.milestone_id}: {inp.title}\n\nQuantaPilot run {inp.repo.run_id}.",
                when=inp.run_started_at,
            )
        return MilestoneResult(branch=inp.branch, commit_sha=sha, changed=changed, steps=outcomes)

    @activity.defn(name=CLEANUP_WORKTREE)
    async def cleanup_worktree(self, ref: RepoRef) -> bool:
        """Remove the run's worktree on this worker (the run has ended); a no-op when there is none.

        Best effort: a failure is logged, never raised, so a full disk or a stubborn file never keeps a run
        from closing; the worker-side sweep (:meth:`sweep_worktrees`) retries later.

        Returns:
            Whether a worktree was removed.
        """
        async with self._lock(ref.run_id):
            removed = await asyncio.to_thread(_remove_tree, self.run_dir(ref.workspace, ref.run_id))
        self._locks.pop(ref.run_id, None)
        if removed:
            activity.logger.info("worktree removed")
        return removed

    def run_dir(self, workspace: str, run_id: str) -> Path:
        """Directory holding everything a run keeps on this worker (its worktree and a partial clone)."""
        return self._settings.run_workdir / workspace / run_id

    async def sweep_worktrees(self, is_closed: Callable[[str, str], Awaitable[bool | None]]) -> int:
        """Remove the worktrees on this worker whose run has closed.

        A run's steps can run on several workers (each clones on demand) but its cleanup step runs on one, and a
        terminated run runs none: every worker calls this now and then for what it holds.

        Args:
            is_closed: ``(workspace, run_id) -> closed?``; ``None`` when that cannot be told now (kept).

        Returns:
            How many worktrees were removed.
        """
        root = self._settings.run_workdir
        found = await asyncio.to_thread(_run_dirs, root)
        removed = 0
        for workspace, run_id in found:
            if await is_closed(workspace, run_id) is not True:
                continue
            async with self._lock(run_id):
                if await asyncio.to_thread(_remove_tree, self.run_dir(workspace, run_id)):
                    removed += 1
            self._locks.pop(run_id, None)
        return removed


def _read_config_text(root: Path, commit: str | None, path: str) -> str | None:
    """The text of quantapilot.yml from the commit's objects; ``None`` when the repository has no such file.

    A link (the file, or a folder on its path), a submodule, a file over the size limit or a path leaving the
    repository ends the run with ``CONFIG_INVALID``: the file is never read through a link.
    """
    try:
        rel = normalise_path(path)
        with open_repo_files(root, commit=commit, paths=[rel], max_file_bytes=MAX_CONFIG_BYTES) as repo:
            if rel not in repo.entries and repo.link_on_path(rel) is None:
                return None
            return repo.read_text(rel)
    except (UnsafePathError, FileRefusedError) as exc:
        raise permanent(ErrorCode.CONFIG_INVALID, f"{path}: {exc.reason}") from None
    except RepoReadError as exc:
        raise ApplicationError(str(exc), type=ErrorCode.TOOL_FAILURE) from None


def _run_dirs(root: Path) -> list[tuple[str, str]]:
    """``(workspace, run_id)`` of every run folder under the work directory."""
    if not root.is_dir():
        return []
    return sorted(
        (ws.name, run.name)
        for ws in root.iterdir()
        if ws.is_dir() and not ws.is_symlink()
        for run in ws.iterdir()
        if run.is_dir() and not run.is_symlink()
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


async def _snapshot(path: Path) -> str:
    """The worktree's content (tracked and untracked files) as a git tree object; nothing is committed."""
    await gitops.git("add", "--all", cwd=path)
    return (await gitops.git("write-tree", cwd=path)).stdout.strip()


async def _restore(path: Path, tree: str) -> None:
    """Put the worktree back to a :func:`_snapshot`: its files as they were, files added since removed."""
    await gitops.git("read-tree", "--reset", "-u", tree, cwd=path)
    await gitops.git("clean", "-fdq", cwd=path)


def _pr_result(pr: PullRequest) -> PullRequestResult:
    return PullRequestResult(
        number=pr.number,
        head=pr.head,
        base=pr.base,
        title=pr.title,
        state=pr.state,
        url=pr.url,
        merge_sha=pr.merge_sha,
    )


async def run_command(
    name: str, command: str, *, cwd: Path, timeout_s: float, sandbox: SandboxPolicy | None = None
) -> StepOutcome:
    """Run one milestone command in the worktree (the caller heartbeats).

    The command runs in the sandbox of ``sandbox`` (default: the settings' defaults, so bubblewrap), with a
    scrubbed environment. It must exit within ``timeout_s``; on timeout, on cancellation and after it exited,
    everything it started is killed (the sandbox's PID namespace, or without the sandbox its process group), so
    nothing outlives the step.

    Raises:
        SandboxUnavailable: The sandbox cannot be built on this host.
    """
    policy = sandbox or SandboxPolicy.defaults()
    cwd = await asyncio.to_thread(cwd.resolve)
    sandboxed = policy.mode == "bwrap"
    env = command_env(cwd, sandboxed=sandboxed)
    if sandboxed:
        await asyncio.to_thread(ensure_available, policy)
        await asyncio.to_thread(prepare_worktree, policy, cwd)
    info_r, info_w = os.pipe() if sandboxed else (-1, -1)
    try:
        with (
            launch(policy, command, cwd=cwd, env=env, info_fd=info_w)
            if sandboxed
            else contextlib.nullcontext(Launch(argv=["/bin/sh", "-c", command], pass_fds=()))
        ) as start:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *start.argv,
                cwd=cwd,
                # bwrap sets the command's environment itself (--clearenv, --setenv), and starts with PATH only.
                env={"PATH": env["PATH"]} if sandboxed else env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                pass_fds=start.pass_fds,
            )
    except BaseException:
        if sandboxed:
            os.close(info_r)
        raise
    finally:
        if sandboxed:
            os.close(info_w)
    output = bytearray()
    timed_out = False

    async def _read() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            output.extend(chunk)
            del output[: max(0, len(output) - OUTPUT_TAIL_CHARS * 4)]

    reader = asyncio.ensure_future(_read())
    sandbox_init = asyncio.ensure_future(_sandbox_init(info_r)) if sandboxed else None
    try:
        await asyncio.wait_for(proc.wait(), timeout=timeout_s)
    except TimeoutError:
        timed_out = True
    finally:
        # Every way out (exit, timeout, cancellation) ends everything the command started.
        await _stop(proc, sandbox_init)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(reader, timeout=OUTPUT_DRAIN_S)
    tail = output.decode("utf-8", "replace")[-OUTPUT_TAIL_CHARS:]
    return StepOutcome(
        name=name,
        command=command,
        exit_code=None if timed_out else proc.returncode,
        output_tail=tail,
        duration_s=round(time.monotonic() - started, 3),
        timed_out=timed_out,
    )


async def _sandbox_init(info_fd: int) -> int | None:
    """A pidfd of the sandbox's PID 1, from the JSON bwrap writes to ``--info-fd`` (and then closes).

    The pid is checked to be the init of the sandbox's own PID namespace before it is trusted (not a reused pid
    of some other process). ``None`` when bwrap wrote nothing, or PID 1 has exited already.
    """
    stream = asyncio.StreamReader()
    pipe = os.fdopen(info_fd, "rb", buffering=0)
    try:
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream), pipe
        )
    except BaseException:
        pipe.close()
        raise
    try:
        data = await stream.read()
    finally:
        transport.close()
    try:
        info = json.loads(data)
        pid, namespace = int(info["child-pid"]), int(info["pid-namespace"])
    except (ValueError, KeyError, TypeError):
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        same = os.readlink(f"/proc/{pid}/ns/pid") == f"pid:[{namespace}]"
    except OSError:
        same = False  # gone, or a zombie: its namespace is empty already
    if not same:
        os.close(pidfd)
        return None
    return pidfd


async def _stop(proc: asyncio.subprocess.Process, sandbox_init: asyncio.Future[int | None] | None) -> None:
    """End whatever the command left running, and wait (bounded) until it is gone.

    In the sandbox, PID 1 is killed through its pidfd and awaited: the kernel kills every process of a PID
    namespace whose init dies, before that init counts as exited, so when this returns nothing of the command
    runs any more (also when it exited by itself and left children behind). Without the sandbox the command's
    process group is killed; a child that left the group escapes (one of the reasons for the sandbox).
    """
    init = _pidfd_of(sandbox_init)
    if proc.returncode is None:
        if init is not None:
            _kill_init(init)
        else:
            # Without the sandbox; or bwrap still setting up, whose child then dies with it (--die-with-parent).
            _kill_group(proc.pid)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=OUTPUT_DRAIN_S)
        except TimeoutError:
            _kill_group(proc.pid)
            await asyncio.shield(proc.wait())
    if sandbox_init is None:
        # The shell is gone: its background children in the group go too.
        _kill_group(proc.pid)
        return
    if init is None and not sandbox_init.done():
        # bwrap has exited, so its info pipe is closed: the pidfd (if PID 1 still lives) comes at once.
        await asyncio.wait([sandbox_init], timeout=OUTPUT_DRAIN_S)
        sandbox_init.cancel()  # no-op when done; else it never opens a pidfd nobody would close
        init = _pidfd_of(sandbox_init)
    if init is not None:
        try:
            _kill_init(init)
            await _exited(init, timeout_s=OUTPUT_DRAIN_S)
        finally:
            os.close(init)


def _pidfd_of(sandbox_init: asyncio.Future[int | None] | None) -> int | None:
    if sandbox_init is None or not sandbox_init.done() or sandbox_init.cancelled():
        return None
    if sandbox_init.exception() is not None:
        return None  # no pidfd: killing bwrap's process group is then what reaches the sandbox
    return sandbox_init.result()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _kill_init(pidfd: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)


async def _exited(pidfd: int, *, timeout_s: float) -> None:
    """Wait until the process of ``pidfd`` has exited (a pidfd turns readable then), for at most ``timeout_s``."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def _readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, _readable)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done, timeout=timeout_s)
    finally:
        loop.remove_reader(pidfd)
