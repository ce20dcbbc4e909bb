"""Sign-in, sign-out, the inbox of gates waiting for the signed-in person, and the docs pages under /ui/docs.

Sign-in takes an API token in a form (double-submit: the form token is bound to a one-time cookie, so another
site cannot sign a visitor in as someone else) and answers a session cookie: HttpOnly, SameSite=Strict, Path=/ui,
Secure behind https, the token inside encrypted (quantapilot/review/session.py).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from aiohttp import web
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError

from api.keys import ENGINE, SETTINGS, TEMPORAL, TOKENS
from api.ui_pages import (
    Viewer,
    docs_href,
    message,
    redirect,
    render,
    review_key,
    secure_cookies,
    signed_in,
    to_login,
    viewer,
)
from api.ui_routes import run_status
from quantapilot.docs.store import MAX_VERSION_LENGTH, validate_slug
from quantapilot.models import GateStatus, RunStatus
from quantapilot.review.links import review_path
from quantapilot.review.page import approval_count, may_decide, project_pages, render_doc, run_project
from quantapilot.review.session import LOGIN_COOKIE, SESSION_COOKIE, form_token, form_token_ok, seal_session
from quantapilot.runs.listing import waiting_run_ids
from quantapilot.tokens import Principal

#: Runs the inbox looks at (newest first); a busier workspace pages through GET /v1/runs.
MAX_INBOX_RUNS = 200
_LOGIN_COOKIE_S = 600
#: Seconds the inbox waits for each run's status.
INBOX_QUERY_TIMEOUT_S = 3.0


def _cookie(response: web.Response, request: web.Request, name: str, value: str, *, path: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        path=path,
        max_age=max_age,
        httponly=True,
        samesite="Strict",
        secure=secure_cookies(request),
    )


def _next(value: Any) -> str:
    # Only a path of ours: "//host" or "/\\host" would leave the site.
    if isinstance(value, str) and value.startswith("/ui") and not value.startswith(("//", "/\\")) and "\\" not in value:
        return value
    return "/ui/"


async def login_form(request: web.Request, *, error: str | None = None, status: int = 200) -> web.Response:
    """The sign-in form (with a fresh double-submit nonce)."""
    key = review_key(request)
    if not key:
        return message(request, 503, "Review pages are off", "This deployment has no QP_REVIEW_LINK_KEY configured.")
    nonce = secrets.token_urlsafe(24)
    settings = request.app[SETTINGS]
    response = render(
        request,
        "login.html",
        status=status,
        csrf=form_token(key, f"login:{nonce}"),
        next=_next(request.query.get("next")),
        error=error,
        hours=round(settings.ui_session_ttl_s / 3600, 1),
        signed_in=False,
    )
    _cookie(response, request, LOGIN_COOKIE, nonce, path="/ui/login", max_age=_LOGIN_COOKIE_S)
    return response


async def login_page(request: web.Request) -> web.Response:
    """GET /ui/login."""
    return await login_form(request)


async def login(request: web.Request) -> web.Response:
    """POST /ui/login: check the form token and the API token, then set the session cookie."""
    key = review_key(request)
    form = await request.post()
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    csrf = form.get("csrf")
    if not key or not nonce or not form_token_ok(key, f"login:{nonce}", csrf if isinstance(csrf, str) else None):
        return await login_form(request, error="The form expired; sign in again.", status=403)
    token = form.get("token")
    principal = await request.app[TOKENS].principal(token.strip()) if isinstance(token, str) and token else None
    if principal is None:
        return await login_form(request, error="That token is unknown, expired or revoked.", status=401)
    ttl = request.app[SETTINGS].ui_session_ttl_s
    response = redirect(_next(form.get("next")))
    assert isinstance(token, str)
    _cookie(
        response, request, SESSION_COOKIE, seal_session(key, token.strip(), ttl_s=ttl), path="/ui", max_age=int(ttl)
    )
    response.del_cookie(LOGIN_COOKIE, path="/ui/login")
    return response


async def logout(request: web.Request) -> web.Response:
    """POST /ui/logout: forget the session cookie (the form token proves the request is our page's)."""
    form = await request.post()
    cookie = request.cookies.get(SESSION_COOKIE, "")
    csrf = form.get("csrf")
    key = review_key(request)
    if cookie and key and not form_token_ok(key, f"session:{cookie}", csrf if isinstance(csrf, str) else None):
        return message(request, 403, "Form refused", "This form expired or came from another site.")
    response = redirect("/ui/login")
    response.del_cookie(SESSION_COOKIE, path="/ui")
    return response


async def waiting_runs(request: web.Request, principal: Principal) -> list[RunStatus]:
    """The workspace's runs waiting at a gate (the run listing's visibility filter, then each run's status)."""
    run_ids = await waiting_run_ids(request.app[TEMPORAL], workspace=principal.workspace, limit=MAX_INBOX_RUNS)
    # A run whose worker does not answer soon is left out of this page, not allowed to fail it.
    timeout_s = min(request.app[SETTINGS].temporal_rpc_timeout_s, INBOX_QUERY_TIMEOUT_S)

    async def status_of(run_id: str) -> RunStatus | None:
        try:
            return await run_status(request, principal.workspace, run_id, timeout_s=timeout_s)
        except (RPCError, WorkflowQueryFailedError):
            return None

    statuses = await asyncio.gather(*(status_of(r) for r in run_ids))
    return [s for s in statuses if s is not None]


async def inbox(request: web.Request) -> web.Response:
    """GET /ui/: the gates of the workspace's runs that the signed-in person may decide and has not yet."""
    if not review_key(request):
        return message(request, 503, "Review pages are off", "This deployment has no QP_REVIEW_LINK_KEY configured.")
    principal = await signed_in(request)
    if principal is None:
        return to_login(request)
    items: list[dict[str, Any]] = []
    for status in await waiting_runs(request, principal):
        for gate in status.gates:
            decided_here = any(a.subject == principal.subject for a in gate.approvals)
            if gate.status != GateStatus.PENDING or decided_here or not may_decide(gate, principal):
                continue
            items.append(
                {
                    "href": review_path(status.run_id, gate.name),
                    "run_id": status.run_id,
                    "repo": status.repo_url or status.account_id or "",
                    "branch": status.branch or status.stage or "",
                    "gate": gate.name,
                    "approvals": approval_count(gate),
                    "required": max(gate.required_approvals, 1),
                    "since": gate.requested_at.isoformat(timespec="seconds"),
                    # A gate with a timeout stops waiting then: the inbox says by when to decide.
                    "deadline": gate.deadline.isoformat(timespec="seconds") if gate.deadline else None,
                }
            )
    items.sort(key=lambda item: str(item["since"]), reverse=True)
    return render(request, "inbox.html", principal=principal, items=items)


async def _docs_scope(request: web.Request) -> tuple[Viewer, str | None] | web.Response:
    """The viewer and the one project it may read (None: the whole workspace, for a signed-in person)."""
    view = await viewer(request, request.query.get("t"))
    if isinstance(view, web.Response):
        return view
    if view.link is None:
        assert view.principal is not None
        if not view.principal.has("docs:read"):
            return message(request, 403, "No access to the docs", "Your token lacks the docs:read scope.")
        return view, None
    status = await run_status(request, view.workspace, view.link.run_id)
    project = run_project(status) if status is not None else None
    if project is None:
        return message(request, 404, "Not found", "This review link's run has no documentation.")
    return view, project


async def docs_index(request: web.Request) -> web.Response:
    """GET /ui/docs: the page list (with versions) the viewer may read."""
    scope = await _docs_scope(request)
    if isinstance(scope, web.Response):
        return scope
    view, project = scope
    pages = await asyncio.to_thread(project_pages, request.app[ENGINE], view.workspace, project)
    return render(
        request,
        "docs_list.html",
        pages=pages,
        project=project,
        page_href=lambda slug, version: docs_href(slug, version, view.token),
    )


async def docs_page(request: web.Request) -> web.Response:
    """GET /ui/docs/{slug}: one page rendered (``?version=`` for another version), with its related links."""
    scope = await _docs_scope(request)
    if isinstance(scope, web.Response):
        return scope
    view, project = scope
    slug = request.match_info["slug"]
    version = request.query.get("version") or None
    try:
        validate_slug(slug)
    except ValueError:
        return message(request, 404, "Not found", "There is no such page.")
    if version is not None and len(version) > MAX_VERSION_LENGTH:
        return message(request, 404, "Not found", "There is no such version.")
    if project is not None and not slug.startswith(project + "/"):
        return message(request, 403, "Not in this link's scope", "This review link reads only its run's documentation.")
    doc = await asyncio.to_thread(render_doc, request.app[ENGINE], view.workspace, slug, version)
    if doc is None:
        return message(request, 404, "Not found", "There is no such page.")
    return render(
        request,
        "doc.html",
        doc=doc,
        list_href=docs_href("", None, view.token).replace("/ui/docs/", "/ui/docs", 1),
        page_href=lambda slug, version: docs_href(slug, version, view.token),
    )
