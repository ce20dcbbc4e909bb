"""Contract servers for the GitHub and Gitea REST APIs, on 127.0.0.1.

They stand in for third-party services unreachable here and check every request against the documented API:
method and path, the required headers, and the JSON body validated with JSON Schema built from the documented
request shapes (unknown fields rejected). Replies use the documented response shapes and status codes. Every
violation is recorded in ``violations``; the fixtures fail a test that caused any.

Sources: GitHub REST "Pulls" and "Issue comments" (API version 2022-11-28); Gitea/Forgejo swagger
(``CreatePullRequestOption``, ``MergePullRequestOption``, ``CreateIssueCommentOption``, ``PullRequest``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
from aiohttp import web

from quantapilot.forges import gitops

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

GITHUB_CREATE_PULL = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "head": {"type": "string", "minLength": 1},
        "head_repo": {"type": "string"},
        "base": {"type": "string", "minLength": 1},
        "body": {"type": "string"},
        "maintainer_can_modify": {"type": "boolean"},
        "draft": {"type": "boolean"},
        "issue": {"type": "integer"},
    },
    "required": ["head", "base"],
    "anyOf": [{"required": ["title"]}, {"required": ["issue"]}],
    "additionalProperties": False,
}
GITHUB_MERGE = {
    "type": "object",
    "properties": {
        "commit_title": {"type": "string"},
        "commit_message": {"type": "string"},
        "sha": {"type": "string"},
        "merge_method": {"enum": ["merge", "squash", "rebase"]},
    },
    "additionalProperties": False,
}
COMMENT = {
    "type": "object",
    "properties": {"body": {"type": "string", "minLength": 1}},
    "required": ["body"],
    "additionalProperties": False,
}
GITEA_CREATE_PULL = {
    "type": "object",
    "properties": {
        "assignee": {"type": "string"},
        "assignees": {"type": "array", "items": {"type": "string"}},
        "base": {"type": "string", "minLength": 1},
        "body": {"type": "string"},
        "due_date": {"type": "string"},
        "head": {"type": "string", "minLength": 1},
        "labels": {"type": "array", "items": {"type": "integer"}},
        "milestone": {"type": "integer"},
        "reviewers": {"type": "array", "items": {"type": "string"}},
        "team_reviewers": {"type": "array", "items": {"type": "string"}},
        "title": {"type": "string"},
    },
    "additionalProperties": False,
}
GITEA_MERGE = {
    "type": "object",
    "properties": {
        "Do": {"enum": ["merge", "rebase", "rebase-merge", "squash", "fast-forward-only", "manually-merged"]},
        "MergeCommitID": {"type": "string"},
        "MergeMessageField": {"type": "string"},
        "MergeTitleField": {"type": "string"},
        "delete_branch_after_merge": {"type": "boolean"},
        "force_merge": {"type": "boolean"},
        "head_commit_id": {"type": "string"},
        "merge_when_checks_succeed": {"type": "boolean"},
    },
    "required": ["Do"],
    "additionalProperties": False,
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FakePull:
    """A pull request as the contract server keeps it."""

    number: int
    title: str
    body: str
    head: str
    base: str
    head_sha: str
    state: str = "open"
    merged: bool = False
    merge_sha: str | None = None
    mergeable: bool = True
    comments: list[str] = field(default_factory=list)
    created_at: str = field(default_factory=_now)


@dataclass
class ContractState:
    """What a contract server holds and what the tests steer."""

    owner: str
    repo: str
    token: str
    bare: Path  # the real repository the pushed head branches live in
    pulls: dict[int, FakePull] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)  # statuses to answer before handling anything
    head_modified: set[int] = field(default_factory=set)  # merge answers 409 for these
    hide_from_lookup_once: bool = False  # simulate a racing creator: the first lookup misses the pull request

    def add_pull(self, *, head: str, base: str, title: str, body: str, head_sha: str) -> FakePull:
        """Store a new pull request with the next number."""
        pr = FakePull(number=len(self.pulls) + 1, title=title, body=body, head=head, base=base, head_sha=head_sha)
        self.pulls[pr.number] = pr
        return pr


async def _branch_sha(state: ContractState, branch: str) -> str | None:
    result = await gitops.git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", cwd=state.bare, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


async def _json_body(request: web.Request, state: ContractState, schema: dict[str, Any]) -> Any:
    if request.content_type != "application/json":
        state.violations.append(f"{request.method} {request.path}: content type {request.content_type}")
    try:
        body = await request.json()
        jsonschema.validate(body, schema)
    except (ValueError, jsonschema.ValidationError) as exc:
        state.violations.append(f"{request.method} {request.path}: body {exc}")
        raise web.HTTPUnprocessableEntity(
            text='{"message": "Invalid request"}', content_type="application/json"
        ) from None
    return body


# ---------------------------------------------------------------- GitHub


def _gh_user() -> dict[str, Any]:
    return {"login": "octocat", "id": 1, "node_id": "MDQ6VXNlcjE=", "type": "User", "site_admin": False}


def github_pull_json(state: ContractState, api: str, pr: FakePull, *, simple: bool = False) -> dict[str, Any]:
    """A pull request object as GitHub documents it (``pull-request``, or ``pull-request-simple`` in lists)."""
    repo_api = f"{api}/repos/{state.owner}/{state.repo}"
    html = f"https://github.com/{state.owner}/{state.repo}"
    repo_obj = {"id": 1296269, "name": state.repo, "full_name": f"{state.owner}/{state.repo}", "private": False}

    def branch(ref: str, sha: str) -> dict[str, Any]:
        return {"label": f"{state.owner}:{ref}", "ref": ref, "sha": sha, "user": _gh_user(), "repo": repo_obj}

    data: dict[str, Any] = {
        "url": f"{repo_api}/pulls/{pr.number}",
        "id": 1000 + pr.number,
        "node_id": f"PR_kwDOABCD{pr.number}",
        "html_url": f"{html}/pull/{pr.number}",
        "diff_url": f"{html}/pull/{pr.number}.diff",
        "patch_url": f"{html}/pull/{pr.number}.patch",
        "issue_url": f"{repo_api}/issues/{pr.number}",
        "number": pr.number,
        "state": "closed" if pr.merged or pr.state == "closed" else "open",
        "locked": False,
        "title": pr.title,
        "user": _gh_user(),
        "body": pr.body,
        "labels": [],
        "milestone": None,
        "active_lock_reason": None,
        "created_at": pr.created_at,
        "updated_at": _now(),
        "closed_at": _now() if pr.merged else None,
        "merged_at": _now() if pr.merged else None,
        # GitHub fills this with a test merge commit before the merge, too.
        "merge_commit_sha": pr.merge_sha or "f" * 40,
        "assignee": None,
        "assignees": [],
        "requested_reviewers": [],
        "draft": False,
        "head": branch(pr.head, pr.head_sha),
        "base": branch(pr.base, "b" * 40),
        "author_association": "OWNER",
        "auto_merge": None,
    }
    if not simple:
        data |= {
            "merged": pr.merged,
            "mergeable": pr.mergeable,
            "rebaseable": pr.mergeable,
            "mergeable_state": "clean" if pr.mergeable else "dirty",
            "merged_by": _gh_user() if pr.merged else None,
            "comments": len(pr.comments),
            "commits": 1,
            "additions": 1,
            "deletions": 0,
            "changed_files": 1,
        }
    return data


def github_app(state: ContractState) -> web.Application:
    """Build the GitHub contract server."""
    prefix = f"/repos/{state.owner}/{state.repo}"

    def error(status: int, message: str, doc: str) -> web.Response:
        return web.json_response(
            {"message": message, "documentation_url": f"https://docs.github.com/rest/{doc}", "status": str(status)},
            status=status,
        )

    @web.middleware
    async def contract(request: web.Request, handler: Handler) -> web.StreamResponse:
        state.requests.append((request.method, request.path_qs))
        h = request.headers
        if h.get("Authorization") != f"Bearer {state.token}":
            state.violations.append(f"{request.path}: Authorization header")
            return error(401, "Bad credentials", "overview/authenticating-to-the-rest-api")
        if h.get("Accept") != "application/vnd.github+json":
            state.violations.append(f"{request.path}: Accept {h.get('Accept')}")
        if h.get("X-GitHub-Api-Version") != "2022-11-28":
            state.violations.append(f"{request.path}: X-GitHub-Api-Version")
            return error(400, "Invalid API version", "overview/api-versions")
        if not h.get("User-Agent"):
            state.violations.append(f"{request.path}: User-Agent missing")
            return error(403, "Request forbidden by administrative rules.", "overview")
        if state.fail_next:
            return web.json_response({"message": "Server Error"}, status=state.fail_next.pop(0))
        return await handler(request)

    def find(request: web.Request) -> FakePull:
        pr = state.pulls.get(int(request.match_info["number"]))
        if pr is None:
            raise web.HTTPNotFound(text='{"message": "Not Found", "status": "404"}', content_type="application/json")
        return pr

    async def list_pulls(request: web.Request) -> web.Response:
        q = request.query
        pulls = list(state.pulls.values())
        if "head" in q:
            if ":" not in q["head"]:
                state.violations.append("list: head must be user:ref-name")
            owner, _, ref = q["head"].partition(":")
            pulls = [p for p in pulls if owner == state.owner and p.head == ref]
        if "base" in q:
            pulls = [p for p in pulls if p.base == q["base"]]
        st = q.get("state", "open")
        if st not in ("open", "closed", "all"):
            state.violations.append(f"list: state {st}")
        if st != "all":
            pulls = [p for p in pulls if (st == "open") == (p.state == "open" and not p.merged)]
        if "per_page" in q and not (q["per_page"].isdigit() and 1 <= int(q["per_page"]) <= 100):
            state.violations.append("list: per_page")
        if state.hide_from_lookup_once:
            state.hide_from_lookup_once = False
            pulls = []
        pulls.sort(key=lambda p: -p.number)  # newest first, GitHub's default sort
        return web.json_response([github_pull_json(state, str(request.url.origin()), p, simple=True) for p in pulls])

    async def create_pull(request: web.Request) -> web.Response:
        body = await _json_body(request, state, GITHUB_CREATE_PULL)
        sha = await _branch_sha(state, body["head"])
        if sha is None or await _branch_sha(state, body["base"]) is None:
            return web.json_response(
                {
                    "message": "Validation Failed",
                    "errors": [{"resource": "PullRequest", "field": "head", "code": "invalid"}],
                    "status": "422",
                },
                status=422,
            )
        for p in state.pulls.values():
            if p.head == body["head"] and p.base == body["base"] and p.state == "open":
                return web.json_response(
                    {
                        "message": "Validation Failed",
                        "errors": [
                            {
                                "resource": "PullRequest",
                                "code": "custom",
                                "message": f"A pull request already exists for {state.owner}:{p.head}.",
                            }
                        ],
                        "status": "422",
                    },
                    status=422,
                )
        pr = state.add_pull(
            head=body["head"], base=body["base"], title=body["title"], body=body.get("body", ""), head_sha=sha
        )
        return web.json_response(github_pull_json(state, str(request.url.origin()), pr), status=201)

    async def get_pull(request: web.Request) -> web.Response:
        return web.json_response(github_pull_json(state, str(request.url.origin()), find(request)))

    async def merge_pull(request: web.Request) -> web.Response:
        pr = find(request)
        body = await _json_body(request, state, GITHUB_MERGE)
        if pr.merged or not pr.mergeable:
            return error(405, "Pull Request is not mergeable", "pulls/pulls#merge-a-pull-request")
        if pr.number in state.head_modified:
            return error(
                409, "Head branch was modified. Review and try the merge again.", "pulls/pulls#merge-a-pull-request"
            )
        pr.merged, pr.state, pr.merge_sha = True, "closed", f"{pr.number:02d}" + "a" * 38
        message = {"merge": "merged", "squash": "squashed", "rebase": "rebased"}[body.get("merge_method", "merge")]
        return web.json_response(
            {"sha": pr.merge_sha, "merged": True, "message": f"Pull Request successfully {message}"}
        )

    async def add_comment(request: web.Request) -> web.Response:
        pr = find(request)
        body = await _json_body(request, state, COMMENT)
        pr.comments.append(body["body"])
        api = str(request.url.origin())
        n = len(pr.comments)
        return web.json_response(
            {
                "id": n,
                "node_id": f"IC_{n}",
                "url": f"{api}{prefix}/issues/comments/{n}",
                "html_url": f"https://github.com/{state.owner}/{state.repo}/pull/{pr.number}#issuecomment-{n}",
                "body": body["body"],
                "user": _gh_user(),
                "created_at": _now(),
                "updated_at": _now(),
                "issue_url": f"{api}{prefix}/issues/{pr.number}",
                "author_association": "OWNER",
            },
            status=201,
        )

    app = web.Application(middlewares=[contract])
    app.router.add_get(f"{prefix}/pulls", list_pulls)
    app.router.add_post(f"{prefix}/pulls", create_pull)
    app.router.add_get(f"{prefix}/pulls/{{number:\\d+}}", get_pull)
    app.router.add_put(f"{prefix}/pulls/{{number:\\d+}}/merge", merge_pull)
    app.router.add_post(f"{prefix}/issues/{{number:\\d+}}/comments", add_comment)
    return app


# ---------------------------------------------------------------- Gitea


def gitea_pull_json(state: ContractState, origin: str, pr: FakePull) -> dict[str, Any]:
    """A ``PullRequest`` object as Gitea's swagger documents it."""
    html = f"{origin}/{state.owner}/{state.repo}"
    user = {"id": 1, "login": state.owner, "full_name": "", "email": "", "username": state.owner}
    repo_obj = {"id": 1, "name": state.repo, "full_name": f"{state.owner}/{state.repo}", "owner": user}

    def branch(ref: str, sha: str) -> dict[str, Any]:
        return {"label": ref, "ref": ref, "sha": sha, "repo_id": 1, "repo": repo_obj}

    closed = pr.merged or pr.state == "closed"
    return {
        "id": 100 + pr.number,
        "url": f"{html}/pulls/{pr.number}",
        "number": pr.number,
        "user": user,
        "title": pr.title,
        "body": pr.body,
        "labels": [],
        "milestone": None,
        "assignee": None,
        "assignees": None,
        "requested_reviewers": None,
        "state": "closed" if closed else "open",
        "draft": False,
        "is_locked": False,
        "comments": len(pr.comments),
        "html_url": f"{html}/pulls/{pr.number}",
        "diff_url": f"{html}/pulls/{pr.number}.diff",
        "patch_url": f"{html}/pulls/{pr.number}.patch",
        "mergeable": pr.mergeable,
        "merged": pr.merged,
        "merged_at": _now() if pr.merged else None,
        "merge_commit_sha": pr.merge_sha,
        "merged_by": user if pr.merged else None,
        "allow_maintainer_edit": False,
        "base": branch(pr.base, "b" * 40),
        "head": branch(pr.head, pr.head_sha),
        "merge_base": "b" * 40,
        "due_date": None,
        "created_at": pr.created_at,
        "updated_at": _now(),
        "closed_at": _now() if closed else None,
    }


def gitea_app(state: ContractState) -> web.Application:
    """Build the Gitea contract server (API under ``/api/v1``)."""
    prefix = f"/api/v1/repos/{state.owner}/{state.repo}"

    def error(status: int, message: str) -> web.Response:
        return web.json_response({"message": message, "url": "https://gitea.example/api/swagger"}, status=status)

    @web.middleware
    async def contract(request: web.Request, handler: Handler) -> web.StreamResponse:
        state.requests.append((request.method, request.path_qs))
        if request.headers.get("Authorization") != f"token {state.token}":
            state.violations.append(f"{request.path}: Authorization header")
            return error(401, "token is required")
        if state.fail_next:
            return error(state.fail_next.pop(0), "internal error")
        return await handler(request)

    def find(request: web.Request) -> FakePull:
        pr = state.pulls.get(int(request.match_info["index"]))
        if pr is None:
            raise web.HTTPNotFound(text='{"message": "not found", "errors": null}', content_type="application/json")
        return pr

    async def by_base_head(request: web.Request) -> web.Response:
        base, head = request.match_info["base"], request.match_info["head"]
        found = [p for p in state.pulls.values() if p.base == base and p.head == head]
        if state.hide_from_lookup_once:
            state.hide_from_lookup_once = False
            found = []
        if not found:
            return error(404, "pull request does not exist")
        return web.json_response(gitea_pull_json(state, str(request.url.origin()), found[-1]))

    async def list_pulls(request: web.Request) -> web.Response:
        q = request.query
        st = q.get("state", "open")
        if st not in ("open", "closed", "all"):
            state.violations.append(f"list: state {st}")
        for key in ("page", "limit"):
            if key in q and not q[key].isdigit():
                state.violations.append(f"list: {key}")
        page, limit = int(q.get("page", "1")), int(q.get("limit", "30"))
        pulls = sorted(state.pulls.values(), key=lambda p: -p.number)
        if st != "all":
            pulls = [p for p in pulls if (st == "open") == (p.state == "open" and not p.merged)]
        chunk = pulls[(page - 1) * limit : page * limit]
        return web.json_response([gitea_pull_json(state, str(request.url.origin()), p) for p in chunk])

    async def create_pull(request: web.Request) -> web.Response:
        body = await _json_body(request, state, GITEA_CREATE_PULL)
        sha = await _branch_sha(state, body["head"])
        if sha is None or await _branch_sha(state, body["base"]) is None:
            return error(404, "GetBranchCommit: branch does not exist")
        for p in state.pulls.values():
            if p.head == body["head"] and p.base == body["base"] and p.state == "open" and not p.merged:
                return error(
                    409,
                    f"pull request already exists for these targets [id: {100 + p.number}, issue_id: {p.number}, "
                    f"head_repo_id: 1, base_repo_id: 1, head_branch: {p.head}, base_branch: {p.base}]",
                )
        pr = state.add_pull(
            head=body["head"], base=body["base"], title=body.get("title", ""), body=body.get("body", ""), head_sha=sha
        )
        return web.json_response(gitea_pull_json(state, str(request.url.origin()), pr), status=201)

    async def get_pull(request: web.Request) -> web.Response:
        return web.json_response(gitea_pull_json(state, str(request.url.origin()), find(request)))

    async def merge_pull(request: web.Request) -> web.Response:
        pr = find(request)
        await _json_body(request, state, GITEA_MERGE)
        if pr.merged:
            return error(405, "PR already merged")
        if not pr.mergeable:
            return error(405, "Please try again later")
        if pr.number in state.head_modified:
            return error(409, "merge push out of date")
        pr.merged, pr.state, pr.merge_sha = True, "closed", f"{pr.number:02d}" + "c" * 38
        return web.Response(status=200)

    async def add_comment(request: web.Request) -> web.Response:
        pr = find(request)
        body = await _json_body(request, state, COMMENT)
        pr.comments.append(body["body"])
        origin = str(request.url.origin())
        return web.json_response(
            {
                "id": len(pr.comments),
                "body": body["body"],
                "user": {"id": 1, "login": state.owner},
                "html_url": f"{origin}/{state.owner}/{state.repo}/pulls/{pr.number}#issuecomment-{len(pr.comments)}",
                "issue_url": f"{origin}/{state.owner}/{state.repo}/issues/{pr.number}",
                "pull_request_url": "",
                "original_author": "",
                "original_author_id": 0,
                "assets": [],
                "created_at": _now(),
                "updated_at": _now(),
            },
            status=201,
        )

    app = web.Application(middlewares=[contract])
    app.router.add_get(f"{prefix}/pulls", list_pulls)
    app.router.add_post(f"{prefix}/pulls", create_pull)
    app.router.add_get(f"{prefix}/pulls/{{index:\\d+}}", get_pull)
    app.router.add_post(f"{prefix}/pulls/{{index:\\d+}}/merge", merge_pull)
    app.router.add_get(f"{prefix}/pulls/{{base}}/{{head:.+}}", by_base_head)
    app.router.add_post(f"{prefix}/issues/{{index:\\d+}}/comments", add_comment)
    return app
