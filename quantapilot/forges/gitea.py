"""The ``gitea`` forge: pull requests through the Gitea / Forgejo REST API (``/api/v1``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from quantapilot.forges.base import (
    ForgeError,
    MergeConflictError,
    MergeStrategy,
    PullRequest,
    error_for,
)
from quantapilot.forges.rest import USER_AGENT, RestForge, pull_request_from_json

# Listing pages of this size when the base branch name rules out the by-base-and-head lookup.
_PAGE_LIMIT = 50
_MAX_PAGES = 40


def pull_request_from_gitea(data: Any) -> PullRequest:
    """Convert a Gitea pull request object into a :class:`PullRequest`.

    Raises:
        ForgeError: The object lacks the documented fields (not retryable).
    """
    return pull_request_from_json(data, forge="Gitea", merged_at_counts=False)


class GiteaForge(RestForge):
    """Pull requests on Gitea or Forgejo.

    Args:
        session: HTTP session (owned by the caller).
        api_url: The instance URL (``https://gitea.example``) or its API root (``.../api/v1``).
        token: Access token; sent only in the ``Authorization`` header.
        timeout_s: Seconds for each API call.
    """

    # Gitea answers 409 when an open pull request for this head and base exists.
    create_race_status = 409

    def __init__(self, session: aiohttp.ClientSession, *, api_url: str, token: str, timeout_s: float = 30.0) -> None:
        root = api_url.rstrip("/")
        super().__init__(
            session, api_url=root if root.endswith("/api/v1") else f"{root}/api/v1", token=token, timeout_s=timeout_s
        )

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self._token}", "Accept": "application/json", "User-Agent": USER_AGENT}

    def _pull(self, data: Any) -> PullRequest:
        return pull_request_from_gitea(data)

    async def _find(self, repo_url: str, *, head: str, base: str) -> PullRequest | None:
        repo = self._repo_path(repo_url)
        if "/" not in base:
            # GET /repos/{owner}/{repo}/pulls/{base}/{head}: the route takes the rest of the path as head.
            reply = await self._call("GET", f"{repo}/pulls/{quote(base, safe='')}/{quote(head, safe='/')}")
            if reply.status == 404:
                return None
            if reply.status != 200:
                raise error_for(reply, "looking up the pull request")
            return pull_request_from_gitea(reply.body)
        found: list[PullRequest] = []
        for page in range(1, _MAX_PAGES + 1):
            reply = await self._call(
                "GET", f"{repo}/pulls", params={"state": "all", "page": str(page), "limit": str(_PAGE_LIMIT)}
            )
            if reply.status != 200 or not isinstance(reply.body, list):
                raise error_for(reply, "listing pull requests")
            found += [pr for pr in map(pull_request_from_gitea, reply.body) if pr.head == head and pr.base == base]
            if len(reply.body) < _PAGE_LIMIT:
                break
        for pr in found:
            if pr.state == "open":
                return pr
        return max(found, key=lambda pr: pr.number) if found else None

    async def merge(self, *, repo_url: str, worktree: Path, number: int, strategy: MergeStrategy) -> PullRequest:
        """Merge pull request ``number`` with ``strategy``; an already merged one is returned as it is.

        Raises:
            MergeConflictError: Gitea answered 409 (conflicts), or 405 for a pull request it reports as not
                mergeable.
            ForgeError: Any other failure.
        """
        current = await self.get(repo_url=repo_url, number=number)
        if current.state == "merged":
            return current
        if current.state != "open":
            raise ForgeError(f"pull request #{number} is {current.state}", retryable=False)
        reply = await self._call(
            "POST", f"{self._repo_path(repo_url)}/pulls/{number}/merge", json_body={"Do": strategy}
        )
        if reply.status == 200:
            return await self.get(repo_url=repo_url, number=number)
        if reply.status == 409:
            raise MergeConflictError(f"pull request #{number} conflicts with {current.base}")
        if reply.status == 405:
            detail = await self._call("GET", f"{self._repo_path(repo_url)}/pulls/{number}")
            if detail.status == 200 and isinstance(detail.body, dict):
                again = pull_request_from_gitea(detail.body)
                if again.state == "merged":  # merged meanwhile by a concurrent attempt
                    return again
                if detail.body.get("mergeable") is False:
                    raise MergeConflictError(f"pull request #{number} conflicts with {current.base}")
        raise error_for(reply, f"merging #{number}")
