"""The repository run's Temporal contracts: activity names and their input/output models.

The names are what Temporal records in every history (tests/replay): they never change. Activities declare
themselves with them (``activities.repo``, ``activities.events``); workflows call those activities by reference.
"""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from quantapilot.bodies import ResponseBody
from quantapilot.models import RunKind, RunState, StepOutcome

# Activity names: readable in the Temporal Web UI, stable across refactors.
RECORD_EVENT = "record_event"
CLONE_REPOSITORY = "clone_repository"
LOAD_RUN_CONFIG = "load_run_config"
GENERATE_DOCUMENTATION = "generate_documentation"
OPEN_PULL_REQUEST = "open_pull_request"
MERGE_PULL_REQUEST = "merge_pull_request"
RUN_MILESTONE = "run_milestone"
CLEANUP_WORKTREE = "cleanup_worktree"


def project_name(repo_url: str) -> str:
    """A lowercase slug for the repository (last path component without ``.git``)."""
    tail = repo_url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1].removesuffix(".git").lower()
    return re.sub(r"[^a-z0-9._-]+", "-", tail).strip("-.") or "project"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RepoRef(_Model):
    """Which run and repository an activity works on; enough to rebuild the worktree on any worker."""

    run_id: str
    workspace: str
    repo_url: str
    branch: str
    commit_sha: str | None = None


class CloneResult(_Model):
    """Outcome of the clone."""

    commit_sha: str
    default_branch: str


class LoadConfigInput(_Model):
    """Where to read quantapilot.yml."""

    repo: RepoRef
    path: str
    # The run's QP_ALLOW_SELF_APPROVAL: false narrows every gate of the file (quantapilot.repos.policy
    # with_self_approval_floor). None (scheduled by a workflow predating the field): left to the workflow's check.
    allow_self_approval: bool | None = None


class DocsInput(_Model):
    """Generate documentation on the docs branch."""

    repo: RepoRef
    project: str
    output_folder: str
    docs_branch: str
    owners: list[str]
    lint: bool
    run_started_at: datetime


class DocsResult(_Model):
    """Outcome of documentation generation."""

    docs_branch: str
    commit_sha: str
    pages: int
    version: str
    changed: bool


class OpenPullRequestInput(_Model):
    """Open (or find) a pull request for a pushed branch."""

    repo: RepoRef
    head: str
    base: str
    title: str
    body: str
    forge: str | None = None


class MergePullRequestInput(_Model):
    """Merge a pull request with a strategy."""

    repo: RepoRef
    number: int
    strategy: str = "merge"
    forge: str | None = None


class PullRequestResult(_Model):
    """A pull request as the forge reports it."""

    number: int
    head: str
    base: str
    title: str
    state: str
    url: str
    merge_sha: str | None = None


class MilestoneStep(_Model):
    """One step (command) of a milestone."""

    name: str
    run: str | None = None
    timeout_s: float
    # Runs of the command before the milestone fails (retries + 1); each retry starts from the worktree as it was
    # before the step's first run.
    attempts: int = 1


class MilestoneInput(_Model):
    """Run a milestone's steps on its own branch."""

    repo: RepoRef
    milestone_id: str
    title: str
    criteria: list[str]
    branch: str
    steps: list[MilestoneStep]
    run_started_at: datetime
    # A model step's diff (quantapilot.yml `prompt:`), checked and applied before the steps run.
    patch: str | None = None


class MilestoneResult(_Model):
    """What a milestone's steps did."""

    branch: str
    commit_sha: str | None
    changed: bool
    steps: list[StepOutcome]
    failed_step: str | None = None


def _absent(value: object) -> bool:
    """An unknown value is left out of the answer, not sent as null."""
    return value is None


class RunListItem(ResponseBody):
    """One run of ``GET /v1/runs``: what visibility knows of it, with its first and latest event's times."""

    model_config = ConfigDict(extra="forbid", title="RunListItem", validate_by_name=True)

    run_id: str = Field(description="Run id (rr_ repository, lc_ lifecycle).")
    kind: RunKind
    state: RunState = Field(
        description="The run's state; a run Temporal ended without it (terminated, timed out) is failed."
    )
    repo_url: str | None = Field(default=None, exclude_if=_absent, description="Repository of a repository run.")
    branch: str | None = Field(default=None, exclude_if=_absent, description="Branch of a repository run.")
    account_id: str | None = Field(default=None, exclude_if=_absent, description="Account of a lifecycle run.")
    stage: str | None = Field(default=None, exclude_if=_absent, description="Lifecycle stage of a lifecycle run.")
    correlation_id: str | None = Field(
        default=None, exclude_if=_absent, description="The caller's id given at the trigger."
    )
    gate: str | None = Field(
        default=None, exclude_if=_absent, description="The gate the run waits at (also while paused there)."
    )
    created_at: datetime = Field(description="When the run started (its first event).")
    updated_at: datetime = Field(description="Its latest event, or when Temporal closed it.")


class RunList(ResponseBody):
    """The answer of ``GET /v1/runs``: a page of the workspace's runs and the token of the next one."""

    model_config = ConfigDict(extra="forbid", title="RunList", validate_by_name=True)

    runs: list[RunListItem] = Field(
        description="Open runs first, newest first; then finished runs, the latest finished first."
    )
    next_page_token: str | None = Field(
        default=None, exclude_if=_absent, description="Pass as page_token for the next page; absent on the last page."
    )
