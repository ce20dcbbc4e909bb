"""Activities of the repository run: clone, configuration, documentation, pull requests, milestones.

An adapter: the work is in :mod:`quantapilot.runs` (worktrees, checks, documentation, milestones, commands) and
:mod:`quantapilot.forges`; here it gets its Temporal shape - heartbeats, attempts, and failures as
``ApplicationError`` of a stable type. Every activity is idempotent: it can run again on any worker after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import aiohttp
from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeats import heartbeating
from quantapilot.errors import ErrorCode
from quantapilot.forges import gitops, make_forge
from quantapilot.forges.base import Forge, ForgeError, MergeConflictError, PullRequest, PullRequestDraft
from quantapilot.models import StepOutcome
from quantapilot.repos.config import QuantapilotConfig
from quantapilot.runs import documentation, milestone
from quantapilot.runs.budget import price_problem
from quantapilot.runs.checks import read_config_text, repo_url_problem, run_config, with_docs_folder
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
from quantapilot.runs.errors import StepError, permanent
from quantapilot.runs.model_contracts import GENERATE_DOCUMENTATION_WITH_MODELS, ModelDocPage, ModelDocsInput
from quantapilot.runs.worktree import Worktrees, unreachable
from quantapilot.sandbox import (
    SandboxPolicy,
    SandboxUnavailable,
    ensure_available,
)
from quantapilot.settings import Settings
from quantapilot.webhooks.urlsafety import Resolver


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Report a :class:`StepError` as Temporal's failure of the same type (permanent ones are not retried)."""
    try:
        yield
    except StepError as exc:
        raise ApplicationError(exc.message, type=exc.code, non_retryable=not exc.retryable) from None


def _last_attempt() -> bool:
    info = activity.info()
    return info.retry_policy is not None and 0 < info.retry_policy.maximum_attempts <= info.attempt


def _pr_result(pr: PullRequest) -> PullRequestResult:
    # The contract's model has the forge model's fields: the activity's answer is the forge's, field for field.
    return PullRequestResult.model_validate(pr.model_dump())


def _forge_failure(exc: ForgeError) -> ApplicationError:
    return ApplicationError(str(exc), type=ErrorCode.FORGE_ERROR, non_retryable=not exc.retryable)


async def _answered(call: Awaitable[PullRequest]) -> PullRequestResult:
    # A pull request activity's answer: the forge's pull request, or its failure as Temporal's FORGE_ERROR.
    try:
        return _pr_result(await call)
    except ForgeError as exc:
        raise _forge_failure(exc) from None


@contextlib.asynccontextmanager
async def networked_worktree(
    worktrees: Worktrees, repo: RepoRef, step: str, *, protocols: Iterable[str]
) -> AsyncIterator[Path]:
    """The run's worktree for a step that fetches or pushes: locked, heartbeating, its network checked.

    Every activity that works in the run's worktree with the network (the repository steps, the model calls that
    read the repository) enters it so. A :class:`StepError` raised inside is reported as Temporal's failure of the
    same type (:func:`reported`).

    Args:
        worktrees: The worker's worktrees.
        repo: The run's repository.
        step: The heartbeat's detail.
        protocols: The git transports the step may use (:func:`~quantapilot.forges.gitops.protocols_for`).
    """
    gitops.restrict_protocols(protocols)
    with reported():
        async with worktrees.lock(repo.run_id), heartbeating(step), worktrees.network(repo):
            yield await worktrees.ensure(repo)


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
        self._worktrees = Worktrees(settings, resolver=resolver)
        self._http: aiohttp.ClientSession | None = None
        # Transports the worker's git may use in this worker's activities: what the allowed URLs need.
        self._git_protocols = gitops.protocols_for(settings.allowed_repo_patterns)

    @property
    def worktrees(self) -> Worktrees:
        """The worker's worktrees (model steps share them, and so their per-run locks)."""
        return self._worktrees

    def worktree_path(self, ref: RepoRef) -> Path:
        """Directory of the run's clone."""
        return self._worktrees.path(ref)

    def _forge(self, name: str | None) -> Forge:
        kind = name or self._settings.default_forge
        if kind not in ("git", "github", "gitea"):
            raise permanent(ErrorCode.PRECONDITION_FAILED, f"unknown forge {kind}")
        if kind != "git" and (self._http is None or self._http.closed):
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        try:
            return make_forge(kind, settings=self._settings, engine=self._engine, http=self._http)  # type: ignore[arg-type]
        except ForgeError as exc:
            raise _forge_failure(exc) from None

    async def close(self) -> None:
        """Release the HTTP session used by REST forges; finish deleting the worktrees of runs that ended."""
        if self._http is not None:
            await self._http.close()
        await self._worktrees.drain()

    def _sandbox(self, repo_url: str) -> SandboxPolicy:
        return SandboxPolicy.from_settings(self._settings, repo_url)

    @staticmethod
    async def _require_sandbox(policy: SandboxPolicy) -> None:
        try:
            await asyncio.to_thread(ensure_available, policy)
        except SandboxUnavailable as exc:
            raise permanent(ErrorCode.COMMANDS_SANDBOX_UNAVAILABLE, str(exc)) from None

    def _networked_worktree(self, repo: RepoRef, step: str) -> AbstractAsyncContextManager[Path]:
        return networked_worktree(self._worktrees, repo, step, protocols=self._git_protocols)

    # ----- activities --------------------------------------------------------------------------------------

    @activity.defn(name=CLONE_REPOSITORY)
    async def clone_repository(self, ref: RepoRef) -> CloneResult:
        """Check the URL is allowed and the branch exists, then clone the repository into the run's worktree."""
        gitops.restrict_protocols(self._git_protocols)
        with reported():
            problem = repo_url_problem(ref.repo_url, self._settings.allowed_repo_patterns)
            if problem:
                raise permanent(ErrorCode.REPO_URL_NOT_ALLOWED, f"repository URL refused: {problem}")
            async with self._worktrees.network(ref, unreachable_for_good=_last_attempt()):
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
                    # git documents exit status 2 for "no matching refs": the repository answered, the branch not.
                    raise permanent(ErrorCode.BRANCH_NOT_FOUND, f"branch {ref.branch} not found in the repository")
                if probe.returncode != 0:
                    activity.logger.warning("git ls-remote exited with %s", probe.returncode)
                    raise unreachable(for_good=_last_attempt())
                async with self._worktrees.lock(ref.run_id), heartbeating("clone"):
                    path = await self._worktrees.ensure(ref)
                    sha = await gitops.current_sha(path)
        activity.logger.info("cloned %s at %s", ref.branch, sha[:12], extra={"commit_sha": sha})
        return CloneResult(commit_sha=sha, default_branch=ref.branch)

    @activity.defn(name=LOAD_RUN_CONFIG)
    async def load_run_config(self, inp: LoadConfigInput) -> QuantapilotConfig:
        """Read and validate quantapilot.yml (documented defaults when the file is absent)."""
        gitops.restrict_protocols(self._git_protocols)
        with reported():
            async with self._worktrees.lock(inp.repo.run_id), heartbeating("read_config"):
                root = await self._worktrees.ensure(inp.repo)
                text = await asyncio.to_thread(read_config_text, root, inp.repo.commit_sha, inp.path)
                config, has_commands = run_config(
                    text,
                    source=inp.path,
                    run_id=inp.repo.run_id,
                    repo_url=inp.repo.repo_url,
                    allow_self_approval=inp.allow_self_approval,
                    command_repo_patterns=self._settings.command_repo_patterns,
                )
                # Settled here, while the file's own words are known: a repository's docs/ of its own is left
                # alone unless quantapilot.yml names the folder.
                config = await asyncio.to_thread(with_docs_folder, config, root, inp.repo.commit_sha)
            problem = price_problem(config, self._settings.model_prices)
            if problem:
                raise permanent(ErrorCode.CONFIG_INVALID, problem)
            if has_commands:
                # Fail now rather than after the documentation and the first gates: no command would run anyway.
                await self._require_sandbox(self._sandbox(inp.repo.repo_url))
        return config

    @activity.defn(name=GENERATE_DOCUMENTATION)
    async def generate_documentation(self, inp: DocsInput) -> DocsResult:
        """Generate, lint, commit and push the documentation on the docs branch, and store its pages."""
        return await self._document(inp)

    @activity.defn(name=GENERATE_DOCUMENTATION_WITH_MODELS)
    async def generate_documentation_with_models(self, inp: ModelDocsInput) -> DocsResult:
        """As :meth:`generate_documentation`, with the model-written pages (``models.arch``) in the same commit.

        The models' answers come from the workflow's history (``call_docs_model``), so a retry writes the very
        same pages without asking a model again.
        """
        return await self._document(inp.docs, inp.pages)

    async def _document(self, inp: DocsInput, answers: Sequence[ModelDocPage] = ()) -> DocsResult:
        assert inp.repo.commit_sha is not None
        version = f"git-{inp.repo.commit_sha[:12]}"
        async with self._networked_worktree(inp.repo, "generate_docs") as path:
            await gitops.git("checkout", "--quiet", "--force", "-B", inp.docs_branch, inp.repo.commit_sha, cwd=path)
            await gitops.git("clean", "-fdq", cwd=path)
            pages = await documentation.generate(
                path, inp, version=version, max_file_bytes=self._settings.repo_max_file_bytes, answers=answers
            )
            changed, sha = await self._worktrees.commit_and_push(
                path,
                run_id=inp.repo.run_id,
                branch=inp.docs_branch,
                message=f"docs: generate documentation for {inp.project}",
                when=inp.run_started_at,
                pathspec=inp.output_folder,
            )
        await documentation.store(self._engine, inp, version=version, pages=pages)
        activity.logger.info("documentation generated: %d pages on %s", len(pages), inp.docs_branch)
        return DocsResult(
            docs_branch=inp.docs_branch, commit_sha=sha, pages=len(pages), version=version, changed=changed
        )

    @activity.defn(name=OPEN_PULL_REQUEST)
    async def open_pull_request(self, inp: OpenPullRequestInput) -> PullRequestResult:
        """Push the head branch and open its pull request, or return the one already open for this run."""
        async with self._networked_worktree(inp.repo, "open_pull_request") as path:
            return await _answered(
                self._forge(inp.forge).open_pull_request(
                    PullRequestDraft(
                        repo_url=inp.repo.repo_url,
                        head=inp.head,
                        base=inp.base,
                        title=inp.title,
                        body=inp.body,
                        run_id=inp.repo.run_id,
                    ),
                    worktree=path,
                )
            )

    @activity.defn(name=MERGE_PULL_REQUEST)
    async def merge_pull_request(self, inp: MergePullRequestInput) -> PullRequestResult:
        """Merge a pull request with the configured strategy (a no-op when it is already merged)."""
        async with self._networked_worktree(inp.repo, "merge") as path:
            merge = self._forge(inp.forge).merge(
                repo_url=inp.repo.repo_url,
                worktree=path,
                number=inp.number,
                strategy=inp.strategy,  # type: ignore[arg-type]
            )
            try:
                # The merge fetches base and head into the worktree: the cap holds for that fetch too.
                return await _answered(self._worktrees.capped(path, merge))
            except MergeConflictError as exc:
                raise permanent(ErrorCode.MERGE_CONFLICT, str(exc)) from None

    @activity.defn(name=RUN_MILESTONE)
    async def run_milestone(self, inp: MilestoneInput) -> MilestoneResult:
        """Run a milestone's commands on its own branch, commit what they changed and push the branch."""
        async with self._networked_worktree(inp.repo, "milestone") as path:
            await self._worktrees.capped(path, gitops.fetch(path, branches=(inp.repo.branch,)))
            base = f"origin/{inp.repo.branch}"
            await gitops.git("checkout", "--quiet", "--force", "-B", inp.branch, base, cwd=path)
            await gitops.git("clean", "-fdq", cwd=path)
            policy = self._sandbox(inp.repo.repo_url)
            if any(step.run for step in inp.steps):
                await self._require_sandbox(policy)
            applied: list[StepOutcome] = []
            if inp.patch is not None:
                applied = await milestone.apply_model_diff(path, inp.patch, self._settings)
                if applied[-1].exit_code != 0:
                    return MilestoneResult(
                        branch=inp.branch, commit_sha=None, changed=False, steps=applied, failed_step="impl"
                    )
            outcomes, failed = await milestone.run_steps(path, inp, policy)
            outcomes = applied + outcomes
            if failed is not None:
                return MilestoneResult(
                    branch=inp.branch, commit_sha=None, changed=False, steps=outcomes, failed_step=failed
                )
            if not any(s.run for s in inp.steps) and inp.patch is None:
                await milestone.write_record(path, inp)
            changed, sha = await self._worktrees.commit_and_push(
                path,
                run_id=inp.repo.run_id,
                branch=inp.branch,
                message=f"{inp.milestone_id}: {inp.title}",
                when=inp.run_started_at,
            )
        return MilestoneResult(branch=inp.branch, commit_sha=sha, changed=changed, steps=outcomes)

    @activity.defn(name=CLEANUP_WORKTREE)
    async def cleanup_worktree(self, ref: RepoRef) -> bool:
        """Remove the run's worktree on this worker (the run has ended); a no-op when there is none.

        Best effort: a failure is logged, never raised, so a full disk or a stubborn file never keeps a run
        from closing; the worker-side sweep (:meth:`sweep_worktrees`) retries later. The run's folder is gone when
        this returns; its files are deleted right after, in the background (:meth:`Worktrees.remove`).

        Returns:
            Whether a worktree was removed.
        """
        removed = await self._worktrees.remove(ref.workspace, ref.run_id)
        if removed:
            activity.logger.info("worktree removed")
        return removed

    async def sweep_worktrees(self, is_closed: Callable[[str, str], Awaitable[bool | None]]) -> int:
        """Remove the worktrees on this worker whose run has closed (see :meth:`Worktrees.sweep`).

        Returns:
            How many worktrees were removed.
        """
        return await self._worktrees.sweep(is_closed)
