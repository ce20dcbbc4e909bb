"""The ``github`` forge: pull requests through the GitHub REST API (github.com or GitHub Enterprise)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from quantapilot.forges import gitops
from quantapilot.forges.base import (
    ForgeError,
    HttpReply,
    MergeConflictError,
    MergeStrategy,
    PullRequest,
    error_for,
    http_json,
    parse_repo_slug,
)

API_VERSION = "2022-11-28"
USER_AGENT = "quantapilot-forge/0.1"


def pull_request_from_github(data: Any) -> PullRequest:
    """Convert a GitHub pull request object into a :class:`PullRequest`.

    Raises:
        ForgeError: The object lacks the documented fields (not retryable).
    """
    try:
        merged = bool(data.get("merged")) or data.get("merged_at") is not None
        state = "merged" if merged else str(data["state"])
        return PullRequest.model_validate(
            {
                "number": data["number"],
                "head": data["head"]["ref"],
                "base": data["base"]["ref"],
                "title": data["title"],
                "state": state,
                "url": data["html_url"],
                # Before a merge GitHub fills merge_commit_sha with a test merge; only a merged one is real.
                "merge_sha": data.get("merge_commit_sha") if merged else None,
            }
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ForgeError("unexpected pull request object from GitHub", retryable=False) from exc


class GitHubForge:
    """Pull requests on GitHub.

    Args:
        session: HTTP session (owned by the caller).
        api_url: REST API root: ``https://api.github.com`` or ``https://<host>/api/v3`` for GitHub Enterprise.
        token: Token with pull request write access; sent only in the ``Authorization`` header.
        timeout_s: Seconds for each API call.
    """

    def __init__(self, session: aiohttp.ClientSession, *, api_url: str, token: str, timeout_s: float = 30.0) -> None:
        self._session = session
        self._api = api_url.rstrip("/")
        self._token = token
        self._timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"GitHubForge(api_url={self._api!r})"

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": USER_AGENT,
        }

    def _repo_path(self, repo_url: str) -> str:
        owner, name = parse_repo_slug(repo_url)
        return f"{self._api}/repos/{quote(owner, safe='')}/{quote(name, safe='')}"

    async def _call(
        self,
        method: str,
        url: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> HttpReply:
        return await http_json(
            self._session,
            method,
            url,
            headers=self._headers(),
            json_body=json_body,
            params=params,
            timeout_s=self._timeout_s,
        )

    async def _find(self, repo_url: str, *, head: str, base: str) -> PullRequest | None:
        owner, _ = parse_repo_slug(repo_url)
        reply = await self._call(
            "GET",
            f"{self._repo_path(repo_url)}/pulls",
            params={"head": f"{owner}:{head}", "base": base, "state": "all", "per_page": "100"},
        )
        if reply.status != 200 or not isinstance(reply.body, list):
            raise error_for(reply, "listing pull requests")
        found = [pull_request_from_github(item) for item in reply.body]
        # An open one is the live pull request; otherwise the newest (GitHub lists newest first).
        for pr in found:
            if pr.state == "open":
                return pr
        return found[0] if found else None

    async def open_pull_request(
        self,
        *,
        repo_url: str,
        worktree: Path,
        head: str,
        base: str,
        title: str,
        body: str,
        run_id: str,
    ) -> PullRequest:
        """Push ``head`` from ``worktree`` and open a pull request, or return the one already open for it.

        The head branch is per run, so the pull request found for ``head`` and ``base`` is the run's own; the
        ``run_id`` is also written at the end of the body for people reading it.
        """
        try:
            await gitops.push(worktree, remote="origin", branch=head)
        except gitops.GitError as exc:
            raise ForgeError(f"pushing {head} failed: {exc}", retryable=exc.timed_out) from exc
        existing = await self._find(repo_url, head=head, base=base)
        if existing is not None:
            return existing
        payload = {
            "title": title,
            "head": head,
            "base": base,
            "body": f"{body}\n\n<!-- quantapilot run: {run_id} -->",
        }
        reply = await self._call("POST", f"{self._repo_path(repo_url)}/pulls", json_body=payload)
        if reply.status == 201:
            return pull_request_from_github(reply.body)
        if reply.status == 422:
            # 422 is also what GitHub answers when a pull request for this head already exists (a racing
            # creator): look once more before giving up.
            existing = await self._find(repo_url, head=head, base=base)
            if existing is not None:
                return existing
        raise error_for(reply, "creating the pull request")

    async def comment(self, *, repo_url: str, number: int, body: str) -> None:
        """Comment on pull request ``number`` (pull requests take comments through the issues API)."""
        reply = await self._call(
            "POST", f"{self._repo_path(repo_url)}/issues/{number}/comments", json_body={"body": body}
        )
        if reply.status != 201:
            raise error_for(reply, f"commenting on #{number}")

    async def get(self, *, repo_url: str, number: int) -> PullRequest:
        """Read pull request ``number``."""
        reply = await self._call("GET", f"{self._repo_path(repo_url)}/pulls/{number}")
        if reply.status != 200:
            raise error_for(reply, f"reading #{number}")
        return pull_request_from_github(reply.body)

    async def merge(self, *, repo_url: str, worktree: Path, number: int, strategy: MergeStrategy) -> PullRequest:
        """Merge pull request ``number`` with ``strategy``; an already merged one is returned as it is.

        Raises:
            MergeConflictError: GitHub answered 409 (head changed under us), or 405 for a pull request it
                reports as not mergeable.
            ForgeError: Any other failure.
        """
        current = await self.get(repo_url=repo_url, number=number)
        if current.state == "merged":
            return current
        if current.state != "open":
            raise ForgeError(f"pull request #{number} is {current.state}", retryable=False)
        reply = await self._call(
            "PUT",
            f"{self._repo_path(repo_url)}/pulls/{number}/merge",
            json_body={"merge_method": strategy},
        )
        if reply.status == 200:
            return await self.get(repo_url=repo_url, number=number)
        if reply.status == 409:
            raise MergeConflictError(f"pull request #{number} could not be merged: {reply.message()}")
        if reply.status == 405:
            # 405 covers "has conflicts" and "merge method not allowed"; the pull request itself says which.
            detail = await self._call("GET", f"{self._repo_path(repo_url)}/pulls/{number}")
            if detail.status == 200 and isinstance(detail.body, dict):
                again = pull_request_from_github(detail.body)
                if again.state == "merged":  # merged meanwhile by a concurrent attempt
                    return again
                if detail.body.get("mergeable") is False:
                    raise MergeConflictError(f"pull request #{number} has conflicts with {current.base}")
        raise error_for(reply, f"merging #{number}")
