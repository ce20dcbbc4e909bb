"""The ``github`` forge: pull requests through the GitHub REST API (github.com or GitHub Enterprise)."""

from __future__ import annotations

from quantapilot.forges.base import HttpReply, MergeStrategy, PullRequest, error_for, parse_repo_slug
from quantapilot.forges.rest import USER_AGENT, RestForge

API_VERSION = "2022-11-28"


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
    forge_name = "GitHub"
    merged_at_counts = True
    conflict_409 = "pull request #{number} could not be merged: {message}"
    conflict_405 = "pull request #{number} has conflicts with {base}"

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": USER_AGENT,
        }

    async def _find(self, repo_url: str, *, head: str, base: str) -> PullRequest | None:
        owner, _ = parse_repo_slug(repo_url)
        reply = await self._call(
            "GET",
            f"{self._repo_path(repo_url)}/pulls",
            params={"head": f"{owner}:{head}", "base": base, "state": "all", "per_page": "100"},
        )
        if reply.status != 200 or not isinstance(reply.body, list):
            raise error_for(reply, "listing pull requests")
        found = [self._pull(item) for item in reply.body]
        # An open one is the live pull request; otherwise the newest (GitHub lists newest first).
        for pr in found:
            if pr.state == "open":
                return pr
        return found[0] if found else None

    async def _merge_call(self, repo_url: str, number: int, strategy: MergeStrategy) -> HttpReply:
        return await self._call(
            "PUT", f"{self._repo_path(repo_url)}/pulls/{number}/merge", json_body={"merge_method": strategy}
        )
