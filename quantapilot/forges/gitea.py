"""The ``gitea`` forge: pull requests through the Gitea / Forgejo REST API (``/api/v1``)."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp

from quantapilot.forges.base import HttpReply, MergeStrategy, PullRequest, error_for
from quantapilot.forges.rest import USER_AGENT, RestForge

# Listing pages of this size when the base branch name rules out the by-base-and-head lookup.
_PAGE_LIMIT = 50
_MAX_PAGES = 40


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
    forge_name = "Gitea"
    merged_at_counts = False
    conflict_409 = "pull request #{number} conflicts with {base}"
    conflict_405 = "pull request #{number} conflicts with {base}"

    def __init__(self, session: aiohttp.ClientSession, *, api_url: str, token: str, timeout_s: float = 30.0) -> None:
        root = api_url.rstrip("/")
        super().__init__(
            session, api_url=root if root.endswith("/api/v1") else f"{root}/api/v1", token=token, timeout_s=timeout_s
        )

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self._token}", "Accept": "application/json", "User-Agent": USER_AGENT}

    async def _find(self, repo_url: str, *, head: str, base: str) -> PullRequest | None:
        repo = self._repo_path(repo_url)
        if "/" not in base:
            # GET /repos/{owner}/{repo}/pulls/{base}/{head}: the route takes the rest of the path as head.
            reply = await self._call("GET", f"{repo}/pulls/{quote(base, safe='')}/{quote(head, safe='/')}")
            if reply.status == 404:
                return None
            if reply.status != 200:
                raise error_for(reply, "looking up the pull request")
            return self._pull(reply.body)
        found: list[PullRequest] = []
        for page in range(1, _MAX_PAGES + 1):
            reply = await self._call(
                "GET", f"{repo}/pulls", params={"state": "all", "page": str(page), "limit": str(_PAGE_LIMIT)}
            )
            if reply.status != 200 or not isinstance(reply.body, list):
                raise error_for(reply, "listing pull requests")
            found += [pr for pr in map(self._pull, reply.body) if pr.head == head and pr.base == base]
            if len(reply.body) < _PAGE_LIMIT:
                break
        for pr in found:
            if pr.state == "open":
                return pr
        return max(found, key=lambda pr: pr.number) if found else None

    async def _merge_call(self, repo_url: str, number: int, strategy: MergeStrategy) -> HttpReply:
        return await self._call("POST", f"{self._repo_path(repo_url)}/pulls/{number}/merge", json_body={"Do": strategy})
