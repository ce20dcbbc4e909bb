"""Forges: where pull requests are opened and merged (plain git remote, GitHub, Gitea/Forgejo)."""

from __future__ import annotations

from typing import Literal

import aiohttp
from sqlalchemy.engine import Engine

from quantapilot.forges.base import (
    MERGE_STRATEGIES,
    Forge,
    ForgeError,
    MergeConflictError,
    MergeStrategy,
    PullRequest,
    PullRequestDraft,
    PullRequestState,
    parse_repo_slug,
)
from quantapilot.forges.git import GitForge
from quantapilot.forges.gitea import GiteaForge
from quantapilot.forges.github import GitHubForge
from quantapilot.settings import Settings

ForgeKind = Literal["git", "github", "gitea"]

__all__ = [
    "MERGE_STRATEGIES",
    "Forge",
    "ForgeError",
    "ForgeKind",
    "GitForge",
    "GitHubForge",
    "GiteaForge",
    "MergeConflictError",
    "MergeStrategy",
    "PullRequest",
    "PullRequestDraft",
    "PullRequestState",
    "make_forge",
    "parse_repo_slug",
]


def make_forge(
    kind: ForgeKind, *, settings: Settings, engine: Engine, http: aiohttp.ClientSession | None = None
) -> Forge:
    """Build the forge ``kind`` from the service settings.

    Args:
        kind: ``git``, ``github`` or ``gitea``.
        settings: Service settings (author identity, work directory, API URLs and tokens).
        engine: Database engine (the ``git`` forge keeps its pull requests there).
        http: HTTP session for the REST forges (owned by the caller).

    Returns:
        The forge.

    Raises:
        ForgeError: A REST forge lacks its session, URL or token (not retryable).
    """
    if kind == "git":
        return GitForge(
            engine,
            author_name=settings.git_author_name,
            author_email=settings.git_author_email,
            workdir=settings.run_workdir / "merges",
        )
    if http is None:
        raise ForgeError(f"the {kind} forge needs an HTTP session", retryable=False)
    if kind == "github":
        if not settings.github_token:
            raise ForgeError("QP_GITHUB_TOKEN is not set", retryable=False)
        return GitHubForge(http, api_url=settings.github_api_url, token=settings.github_token)
    if not settings.gitea_api_url or not settings.gitea_token:
        raise ForgeError("QP_GITEA_API_URL and QP_GITEA_TOKEN must be set", retryable=False)
    return GiteaForge(http, api_url=settings.gitea_api_url, token=settings.gitea_token)
