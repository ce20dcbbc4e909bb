"""The repository run's Temporal contracts: activity names and their input/output models.

The names are what Temporal records in every history (tests/replay): they never change. Activities declare
themselves with them (``activities.repo``, ``activities.events``); workflows call those activities by reference.
"""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from quantapilot.models import StepOutcome

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
