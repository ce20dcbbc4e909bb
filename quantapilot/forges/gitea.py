"""The ``gitea`` forge: pull requests through the Gitea / Forgejo REST API (``/api/v1``)."""

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

USER_AGENT = "quantapilot-forge/0.1"
# Listing pages of this size when the base branch name rules out the by-base-and-head lookup.
_PAGE_LIMIT = 50
_MAX_PAGES = 40


def pull_request_from_gitea(data: Any) -> PullRequest:
    """Convert a Gitea ``PullRequest`` object into a :class:`PullRequest`.

    Raises:
        ForgeError: The object lacks the documented fields (not retryable).
    """
    try:
        merged = bool(data.get("merged"))
        state = "merged" if merged else str(data["state"])
        return PullRequest.model_validate(
            {
                "number": data["number"],
                "head": data["head"]["ref"],
                "base": data["base"]["ref"],
                "title": data["title"],
                "state": state,
                "url": data["html_url"],
                "merge_sha": data.get("merge_commit_sha") if merged else None,
            }
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ForgeError("unexpected pull request object from Gitea", retryable=False) from exc


class GiteaForge:
    """Pull requests on Gitea or Forgejo.

    Args:
        session: HTTP session (owned by the caller).
        api_url: The instance URL (``https://gitea.example``) or its API root (``.../api/v1``).
        token: Access token; sent only in the ``Authorization`` header.
        timeout_s: Seconds for each API call.
    """

    def __init__(self, session: aiohttp.ClientSession, *, api_url: str, token: str, timeout_s: float = 30.0) -> None:
        root = api_url.rstrip("/")
        self._api = root if root.endswith("/api/v1") else f"{root}/api/v1"
        self._session = session
        self._token = token
        self._timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"GiteaForge(api_url={self._api!r})"

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
        headers = {
            "Authorization": f"token {self._token}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        return await http_json(
            self._session,
            method,
            url,
            headers=headers,
            json_body=json_body,
            params=params,
            timeout_s=self._timeout_s,
        )

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
        """Push ``head`` from ``worktree`` and open a pull request, or return the one already there for it."""
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
            return pull_request_from_gitea(reply.body)
        if reply.status == 409:
            # Gitea answers 409 when an open pull request for this head and base exists (a racing creator).
            existing = await self._find(repo_url, head=head, base=base)
            if existing is not None:
                return existing
        raise error_for(reply, "creating the pull request")

    async def comment(self, *, repo_url: str, number: int, body: str) -> None:
        """Comment on pull request ``number`` (through the issues API, as Gitea models pull requests)."""
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
        return pull_request_from_gitea(reply.body)

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
