"""What the REST forges (GitHub, Gitea/Forgejo) share: API calls, idempotent pull request creation, comments, merges."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import aiohttp

from quantapilot.forges.base import (
    ForgeError,
    HttpReply,
    MergeConflictError,
    MergeStrategy,
    PullRequest,
    PullRequestDraft,
    error_for,
    http_json,
    parse_repo_slug,
    push_head,
)

USER_AGENT = "quantapilot-forge/0.1"


def pull_request_from_json(data: Any, *, forge: str, merged_at_counts: bool) -> PullRequest:
    """Convert a GitHub or Gitea pull request object (they share these fields) into a :class:`PullRequest`.

    Args:
        data: The decoded JSON object.
        forge: The forge's name, for the error message.
        merged_at_counts: Whether a set ``merged_at`` also means merged (GitHub's list answers omit ``merged``).

    Raises:
        ForgeError: The object lacks the documented fields (not retryable).
    """
    try:
        merged = bool(data.get("merged")) or (merged_at_counts and data.get("merged_at") is not None)
        return PullRequest.model_validate(
            {
                "number": data["number"],
                "head": data["head"]["ref"],
                "base": data["base"]["ref"],
                "title": data["title"],
                "state": "merged" if merged else str(data["state"]),
                "url": data["html_url"],
                # Before a merge GitHub fills merge_commit_sha with a test merge; only a merged one is real.
                "merge_sha": data.get("merge_commit_sha") if merged else None,
            }
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ForgeError(f"unexpected pull request object from {forge}", retryable=False) from exc


class RestForge(ABC):
    """A forge reached through its REST API; subclasses say how to authenticate, look up and ask for a merge.

    Args:
        session: HTTP session (owned by the caller).
        api_url: REST API root.
        token: Token with pull request write access; sent only in the ``Authorization`` header.
        timeout_s: Seconds for each API call.
    """

    #: Status the create call answers when a pull request for the same head and base exists (a racing creator).
    create_race_status: ClassVar[int]
    #: The forge's name in error messages.
    forge_name: ClassVar[str]
    #: Whether a set ``merged_at`` also means merged (see :func:`pull_request_from_json`).
    merged_at_counts: ClassVar[bool]
    #: Messages of the MergeConflictError raised for a 409 and for a 405 on a not mergeable pull request; they
    #: are formatted with ``number``, ``base`` and the forge's ``message``.
    conflict_409: ClassVar[str]
    conflict_405: ClassVar[str]

    def __init__(self, session: aiohttp.ClientSession, *, api_url: str, token: str, timeout_s: float = 30.0) -> None:
        self._session = session
        self._api = api_url.rstrip("/")
        self._token = token
        self._timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"{type(self).__name__}(api_url={self._api!r})"

    @abstractmethod
    def _headers(self) -> dict[str, str]:
        """Authorization and content negotiation headers of every call."""

    def _pull(self, data: Any) -> PullRequest:
        """Convert the forge's pull request object."""
        return pull_request_from_json(data, forge=self.forge_name, merged_at_counts=self.merged_at_counts)

    @abstractmethod
    async def _merge_call(self, repo_url: str, number: int, strategy: MergeStrategy) -> HttpReply:
        """Ask the forge to merge pull request ``number`` with ``strategy``; its answer as it is."""

    @abstractmethod
    async def _find(self, repo_url: str, *, head: str, base: str) -> PullRequest | None:
        """The pull request for ``head`` into ``base`` (open first, else the newest), if any."""

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

    async def open_pull_request(self, draft: PullRequestDraft, *, worktree: Path) -> PullRequest:
        """Push the draft's head from ``worktree`` and open its pull request, or return the one already there.

        The head branch is per run, so the pull request found for head and base is the run's own; the
        ``run_id`` is also written at the end of the body for people reading it.
        """
        await push_head(worktree, draft.head)
        existing = await self._find(draft.repo_url, head=draft.head, base=draft.base)
        if existing is not None:
            return existing
        payload = {
            "title": draft.title,
            "head": draft.head,
            "base": draft.base,
            "body": f"{draft.body}\n\n<!-- quantapilot run: {draft.run_id} -->",
        }
        reply = await self._call("POST", f"{self._repo_path(draft.repo_url)}/pulls", json_body=payload)
        if reply.status == 201:
            return self._pull(reply.body)
        if reply.status == self.create_race_status:
            # Someone created it between our lookup and our create: look once more before giving up.
            existing = await self._find(draft.repo_url, head=draft.head, base=draft.base)
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
        return self._pull(reply.body)

    async def merge(self, *, repo_url: str, worktree: Path, number: int, strategy: MergeStrategy) -> PullRequest:
        """Merge pull request ``number`` with ``strategy``; an already merged one is returned as it is.

        Raises:
            MergeConflictError: The forge answered 409 (conflicts, or the head changed under us), or 405 for a
                pull request it reports as not mergeable.
            ForgeError: Any other failure.
        """
        current = await self.get(repo_url=repo_url, number=number)
        if current.state == "merged":
            return current
        if current.state != "open":
            raise ForgeError(f"pull request #{number} is {current.state}", retryable=False)
        reply = await self._merge_call(repo_url, number, strategy)
        if reply.status == 200:
            return await self.get(repo_url=repo_url, number=number)
        if reply.status == 409:
            raise MergeConflictError(
                self.conflict_409.format(number=number, base=current.base, message=reply.message())
            )
        if reply.status == 405:
            # 405 covers "has conflicts" and "merge method not allowed"; the pull request itself says which.
            detail = await self._call("GET", f"{self._repo_path(repo_url)}/pulls/{number}")
            if detail.status == 200 and isinstance(detail.body, dict):
                again = self._pull(detail.body)
                if again.state == "merged":  # merged meanwhile by a concurrent attempt
                    return again
                if detail.body.get("mergeable") is False:
                    raise MergeConflictError(
                        self.conflict_405.format(number=number, base=current.base, message=reply.message())
                    )
        raise error_for(reply, f"merging #{number}")
