"""The ``github`` forge: pull requests through the GitHub REST API (github.com or GitHub Enterprise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantapilot.forges.base import (
    ForgeError,
    MergeConflictError,
    MergeStrategy,
    PullRequest,
    error_for,
    parse_repo_slug,
)
from quantapilot.forges.rest import USER_AGENT, RestForge, pull_request_from_json

API_VERSION = "2022-11-28"


def pull_request_from_github(data: Any) -> PullRequest:
    """Convert a GitHub pull request object into a :class:`PullRequest`.

    Raises:
        ForgeError: The object lacks the documented fields (not retryable).
    """
    return pull_request_from_json(data, forge="GitHub", merged_at_counts=True)


class GitHubForge(RestForge):
    """Pull requests on GitHub.

    Args:
        session: HTTP session (owned by the caller).
        api_url: REST API root: ``https://api.github.com`` or ``https://<host>/api/v3`` for GitHub Enterprise.
        token: Token with pull request write access; sent only in the ``Authorization`` header.
        timeout_s: Seconds for each API call.
    """

    # GitHub answers 422 when a pull request for this head and base already exists.
    create_race_status = 422

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": USER_AGENT,
        }

    def _pull(self, data: Any) -> PullRequest:
        return pull_request_from_github(data)

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
