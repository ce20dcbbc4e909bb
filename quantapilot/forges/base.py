"""The forge interface: pull requests opened, commented on, merged and read, whatever hosts the repository."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel

from quantapilot.errors import ErrorCode
from quantapilot.forges import gitops

PullRequestState = Literal["open", "merged", "closed"]
MergeStrategy = Literal["merge", "squash", "rebase"]
MERGE_STRATEGIES: tuple[MergeStrategy, ...] = ("merge", "squash", "rebase")


class PullRequest(BaseModel):
    """A pull request as every forge reports it."""

    number: int
    head: str
    base: str
    title: str
    state: PullRequestState
    url: str
    merge_sha: str | None = None


@dataclass(frozen=True, slots=True)
class PullRequestDraft:
    """A pull request to open (:meth:`Forge.open_pull_request`).

    Attributes:
        repo_url: The repository URL (``origin`` of the worktree it is pushed from).
        head: Source branch.
        base: Target branch.
        title: Title.
        body: Description.
        run_id: The run opening it; with head and base it identifies the pull request.
    """

    repo_url: str
    head: str
    base: str
    title: str
    body: str
    run_id: str


class ForgeError(Exception):
    """A forge call failed.

    Args:
        message: What failed; never contains tokens or URL credentials.
        retryable: Whether trying again later may succeed (network, 5xx, rate limits).
        status: The HTTP status of the failed call, when there was one.
    """

    code = ErrorCode.FORGE_ERROR

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class MergeConflictError(Exception):
    """The pull request cannot be merged because its changes conflict with the base branch.

    Args:
        message: What conflicted.
        files: Paths in conflict, when the forge tells them (REST forges usually do not).
    """

    code = ErrorCode.MERGE_CONFLICT

    def __init__(self, message: str, *, files: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.files = list(files)


@runtime_checkable
class Forge(Protocol):
    """What the run's activities need from wherever the repository lives."""

    async def open_pull_request(self, draft: PullRequestDraft, *, worktree: Path) -> PullRequest:
        """Push the draft's head from ``worktree`` and open its pull request into its base.

        Idempotent: for the same run, head and base it returns the pull request opened before, so a retry
        after a crash between the push and the creation never makes a second one.
        """
        ...

    async def comment(self, *, repo_url: str, number: int, body: str) -> None:
        """Add a comment to pull request ``number``."""
        ...

    async def merge(self, *, repo_url: str, worktree: Path, number: int, strategy: MergeStrategy) -> PullRequest:
        """Merge pull request ``number`` into its base; merging a merged pull request returns it unchanged.

        Raises:
            MergeConflictError: The changes conflict with the base branch.
        """
        ...

    async def get(self, *, repo_url: str, number: int) -> PullRequest:
        """Read pull request ``number``."""
        ...


async def push_head(worktree: Path, head: str, *, remote: str = "origin") -> None:
    """Push branch ``head`` of ``worktree`` to ``remote``: the first step of opening a pull request on any forge.

    Raises:
        ForgeError: The push failed (retryable when it timed out).
    """
    try:
        await gitops.push(worktree, remote=remote, branch=head)
    except gitops.GitError as exc:
        raise ForgeError(f"pushing {head} failed: {exc}", retryable=exc.timed_out) from exc


_SCP_LIKE_RE = re.compile(r"^(?:[^@/\s]+@)?(?P<host>[^:/\s]+):(?P<path>[^/].*)$")


def parse_repo_slug(repo_url: str) -> tuple[str, str]:
    """Return ``(owner, repo)`` from an https, ssh or scp-like (``git@host:owner/repo.git``) repository URL.

    Args:
        repo_url: The repository URL.

    Returns:
        Owner and repository name, without a ``.git`` suffix.

    Raises:
        ForgeError: The URL names no owner and repository (not retryable).
    """
    url = repo_url.strip()
    if "://" in url:
        path = urlsplit(url).path
    else:
        match = _SCP_LIKE_RE.match(url)
        path = match.group("path") if match else ""
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) < 2:
        raise ForgeError("repository URL names no owner/repository", retryable=False)
    owner, name = parts[-2], parts[-1]
    name = name.removesuffix(".git")
    if not owner or not name:
        raise ForgeError("repository URL names no owner/repository", retryable=False)
    return owner, name


class HttpReply(BaseModel):
    """Status, JSON body (``None`` when empty or not JSON) and the headers a REST forge answered with."""

    status: int
    body: Any = None
    headers: dict[str, str] = {}

    def message(self) -> str:
        """Return the API's own error message, if any (GitHub and Gitea both use ``message``)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("message"), str):
            return str(self.body["message"])[:300]
        return ""


async def http_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    json_body: Mapping[str, Any] | None = None,
    params: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> HttpReply:
    """Make one REST call; network failures and timeouts become retryable :class:`ForgeError`.

    Args:
        session: The HTTP session.
        method: HTTP method.
        url: Full URL (never carrying credentials: tokens travel in headers).
        headers: Request headers.
        json_body: JSON body, if any.
        params: Query parameters.
        timeout_s: Total seconds for the call.

    Returns:
        The reply, whatever its status.
    """
    try:
        async with session.request(
            method,
            url,
            headers=dict(headers),
            json=dict(json_body) if json_body is not None else None,
            params=dict(params) if params else None,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            raw = await resp.read()
            body: Any = None
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
            return HttpReply(status=resp.status, body=body, headers={k.lower(): v for k, v in resp.headers.items()})
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ForgeError(f"{method} {urlsplit(url).path} failed: {type(exc).__name__}", retryable=True) from exc


def error_for(reply: HttpReply, what: str) -> ForgeError:
    """Build the :class:`ForgeError` for a failed reply: 5xx, 429 and exhausted rate limits are retryable.

    Args:
        reply: The failed reply.
        what: What was being done, for the message.

    Returns:
        The error to raise.
    """
    rate_limited = reply.status == 403 and reply.headers.get("x-ratelimit-remaining") == "0"
    retryable = reply.status >= 500 or reply.status == 429 or rate_limited
    detail = reply.message()
    text = f"{what}: HTTP {reply.status}" + (f" ({detail})" if detail else "")
    return ForgeError(text, retryable=retryable, status=reply.status)
