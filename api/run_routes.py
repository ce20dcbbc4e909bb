"""Handlers of the run API (declared in ``api/endpoints.py``): trigger, status, events, gates and controls."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from temporalio.client import WorkflowUpdateFailedError
from temporalio.common import SearchAttributePair
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from api.event_log import parse_after, workflow_open
from api.keys import ENGINE, KEYRING, SETTINGS, TEMPORAL
from api.link_routes import with_review_urls
from api.registry import Call, Param
from api.runs import is_not_found, run_handle, run_urls, start_triggered
from quantapilot.errors import ApiError, ErrorCode, conflict, not_found
from quantapilot.events.log import gapless_page, read_events, stream_times
from quantapilot.events.record import record_of
from quantapilot.forges.remotes import host_refused_without_dns
from quantapilot.models import (
    TERMINAL_STATES,
    BudgetInput,
    GateDecisionInput,
    GateRecord,
    PauseInput,
    RepoRunInput,
    ResumeInput,
    RunKind,
    RunState,
    RunStatus,
)
from quantapilot.runs import listing
from quantapilot.runs.http import CancelAccepted, EventList, RunAccepted, RunAcceptedDeprecated, RunStatusView
from quantapilot.runs.listing import list_runs as list_workspace_runs
from quantapilot.runs.listing import parse_query
from quantapilot.temporal import SA_BRANCH, SA_REPO_URL
from quantapilot.tokens import Principal

# The seed's POST /run stays an alias of POST /v1/runs until its sunset (headers per RFC 9745 and RFC 8594).
RUN_ALIAS_DEPRECATED_AT = datetime(2026, 11, 24, tzinfo=UTC)
RUN_ALIAS_SUNSET_AT = datetime(2027, 6, 30, tzinfo=UTC)


def _text_query(name: str, max_length: int, pattern: str, description: str) -> Param:
    """A string filter of GET /v1/runs: one to ``max_length`` characters matching ``pattern``."""
    schema = {"type": "string", "minLength": 1, "maxLength": max_length, "pattern": pattern}
    return Param(name, "query", schema, description)


#: The query parameters of GET /v1/runs, as documented (quantapilot/runs/listing.py validates them).
RUN_LIST_PARAMS = (
    Param("state", "query", {"enum": [s.value for s in RunState]}, "Only runs in this state."),
    Param("kind", "query", {"enum": [k.value for k in RunKind]}, "Only runs of this kind."),
    _text_query(
        "gate", listing.MAX_GATE, listing.FILTER_PATTERN, "Only runs waiting at this gate (paused there included)."
    ),
    _text_query(
        "repo_url",
        listing.MAX_REPO_URL,
        listing.FILTER_PATTERN,
        "Only repository runs of this repository URL (exactly as triggered).",
    ),
    _text_query("correlation_id", 128, listing.CORRELATION_ID_PATTERN, "Only runs triggered with this correlation id."),
    _text_query(
        "page_token",
        listing.MAX_PAGE_TOKEN,
        listing.PAGE_TOKEN_PATTERN,
        "The next_page_token of the previous page (with the same filters).",
    ),
    Param(
        "page_size",
        "query",
        {"type": "integer", "minimum": 1, "maximum": listing.MAX_PAGE_SIZE, "default": listing.DEFAULT_PAGE_SIZE},
        "Runs per page.",
    ),
)


def url_has_credentials(url: str) -> bool:
    """Tell whether a repository URL carries a password, or a user name that may be a token (http, https)."""
    try:
        parts = urlsplit(url)
        return bool(parts.password or (parts.username and parts.scheme.lower() in ("http", "https", "ftp", "ftps")))
    except ValueError:
        return False  # unparsable: the clone activity refuses it


def run_alias_notice() -> str:
    """The ``deprecationNotice`` of responses to the seed alias."""
    return (
        "This path is a deprecated alias of POST /v1/runs and stops working after "
        f"{RUN_ALIAS_SUNSET_AT.date().isoformat()}; use POST /v1/runs."
    )


def run_alias_headers() -> dict[str, str]:
    """``Deprecation``, ``Sunset`` and ``Link`` headers of responses to the seed alias."""
    return {
        "Deprecation": f"@{int(RUN_ALIAS_DEPRECATED_AT.timestamp())}",
        "Sunset": format_datetime(RUN_ALIAS_SUNSET_AT, usegmt=True),
        "Link": '</v1/runs>; rel="successor-version"',
    }


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


def _rpc_timeout(request: web.Request, factor: float = 1.0) -> timedelta:
    return timedelta(seconds=request.app[SETTINGS].temporal_rpc_timeout_s * factor)


def _urls(request: web.Request, run_id: str) -> dict[str, str]:
    status_url, events_url = run_urls(request, run_id)
    return {"status_url": status_url, "events_url": events_url}


async def trigger_repo_run(request: web.Request, call: Call) -> web.Response:
    """``POST /run`` (seed path, configurable) and ``POST /v1/runs``: start a repository run."""
    body = call.body
    if url_has_credentials(body["repo_url"]):
        # Refused before anything stores the URL: events, webhooks and search attributes would carry the secret.
        raise ApiError(
            422,
            ErrorCode.VALIDATION_ERROR,
            "request body does not match the schema",
            details=[{"path": "repo_url", "message": "credentials in the URL are not allowed"}],
        )
    settings = request.app[SETTINGS]
    if host_refused_without_dns(body["repo_url"], allow_private=settings.repo_allow_private):
        # Loopback, private and metadata hosts that need no DNS to recognise; the worker checks every host again
        # when it connects (a name can resolve anywhere, and DNS can change in between).
        raise ApiError(
            422,
            ErrorCode.VALIDATION_ERROR,
            "request body does not match the schema",
            details=[{"path": "repo_url", "message": "repository host not allowed"}],
        )

    def make_input(trigger: dict[str, Any]) -> RepoRunInput:
        return RepoRunInput(
            **trigger,
            repo_url=body["repo_url"],
            branch=body["branch"],
            quantapilot_yaml_path=body.get("quantapilot_yaml_path", "quantapilot.yml"),
            heartbeat_timeout_s=settings.step_heartbeat_s,
            continue_as_new_every=settings.continue_as_new_every_milestones,
        )

    started = await start_triggered(
        request,
        call,
        kind=RunKind.REPOSITORY,
        make_input=make_input,
        correlation_id=body.get("correlation_id"),
        search_attributes=[
            SearchAttributePair(SA_REPO_URL, body["repo_url"]),
            SearchAttributePair(SA_BRANCH, body["branch"]),
        ],
        summary=f"Repository run of {body['repo_url']} @ {body['branch']}",
    )
    urls = _urls(request, started.run_id)
    accepted = RunAccepted(run_id=started.run_id, **urls, created=started.created)
    headers = {"Location": urls["status_url"]}
    if call.endpoint.deprecated:
        accepted = RunAcceptedDeprecated(**dict(accepted), deprecation_notice=run_alias_notice())
        headers |= run_alias_headers()
    return call.answer(accepted, headers=headers)


async def list_runs(request: web.Request, call: Call) -> web.Response:
    """The caller's workspace's runs, filtered and paged (quantapilot/runs/listing.py)."""
    workspace = call.principal.workspace
    query = parse_query(list(request.query.items()))
    engine = request.app[ENGINE]

    async def event_times(ws: str, run_ids: Sequence[str]) -> dict[str, tuple[datetime, datetime]]:
        return await asyncio.to_thread(stream_times, engine, workspace=ws, stream_ids=run_ids)

    page = await list_workspace_runs(
        request.app[TEMPORAL],
        request.app[KEYRING],
        event_times,
        workspace=workspace,
        query=query,
        rpc_timeout=_rpc_timeout(request),
    )
    return call.answer(page)


async def _query_status(request: web.Request, principal: Principal, run_id: str) -> RunStatus:
    handle = run_handle(request.app[TEMPORAL], principal.workspace, run_id)
    try:
        # Bounded: with no worker to answer, the caller gets a 503 instead of a hanging request.
        status: RunStatus = await handle.query("status", result_type=RunStatus, rpc_timeout=_rpc_timeout(request))
    except RPCError as err:
        if is_not_found(err):
            raise not_found("run") from None
        raise
    return status


async def get_run(request: web.Request, call: Call) -> web.Response:
    """The run's state, current step, gates, milestones and timestamps."""
    principal = call.principal
    run_id = request.match_info["run_id"]
    status = await _query_status(request, principal, run_id)
    return _status_answer(request, call, status)


def _status_answer(request: web.Request, call: Call, status: RunStatus) -> web.Response:
    # The run's status as its endpoints declare it (RunStatusView): the workflow's status with the run's URLs.
    return call.answer(RunStatusView(**dict(status), **_urls(request, status.run_id)))


async def _update(request: web.Request, principal: Principal, run_id: str, name: str, arg: Any, result: type) -> Any:
    """Send an update; map a validator rejection to 409/403 and a closed or unknown run to 409/404."""
    handle = run_handle(request.app[TEMPORAL], principal.workspace, run_id)
    try:
        return await handle.execute_update(name, arg, result_type=result, rpc_timeout=_rpc_timeout(request, 3))
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        if isinstance(cause, ApplicationError):
            if cause.type == ErrorCode.AUTHORIZATION_ERROR:
                raise ApiError(403, ErrorCode.AUTHORIZATION_ERROR, cause.message) from None
            raise conflict(cause.message) from None
        raise
    except RPCError as err:
        if not is_not_found(err):
            raise
        # Not found covers both "no such run" and "the run already closed": tell them apart.
        try:
            await handle.describe()
        except RPCError as inner:
            if is_not_found(inner):
                raise not_found("run") from None
            raise
        raise conflict("run is no longer running") from None


async def decide_gate(request: web.Request, call: Call) -> web.Response:
    """Approve or reject a pending gate; the same decision twice is idempotent."""
    principal, body = call.principal, call.body
    decision = GateDecisionInput(
        gate=request.match_info["gate"][:100],
        approved=body["approved"],
        reason=body.get("reason"),
        decided_by=principal.subject,
        source="cli" if request.headers.get("X-QP-Client") == "cli" else "api",
        decided_by_token=principal.token_id,
        decider_scopes=sorted(principal.scopes),
    )
    record: GateRecord = await _update(
        request, principal, request.match_info["run_id"], "submit_gate_decision", decision, GateRecord
    )
    return call.answer(record)


async def pause_run(request: web.Request, call: Call) -> web.Response:
    """Pause a run: no new step starts until it is resumed."""
    principal = call.principal
    arg = PauseInput(reason=call.body.get("reason", "manual"), requested_by=principal.subject)
    status: RunStatus = await _update(request, principal, request.match_info["run_id"], "pause_run", arg, RunStatus)
    return _status_answer(request, call, status)


async def resume_run(request: web.Request, call: Call) -> web.Response:
    """Resume a paused run."""
    principal = call.principal
    arg = ResumeInput(requested_by=principal.subject)
    status: RunStatus = await _update(request, principal, request.match_info["run_id"], "resume_run", arg, RunStatus)
    return _status_answer(request, call, status)


async def raise_budget(request: web.Request, call: Call) -> web.Response:
    """Raise a run's time budget, step attempts or model budgets (then resume it)."""
    principal = call.principal
    arg = BudgetInput(**call.body)
    status: RunStatus = await _update(request, principal, request.match_info["run_id"], "raise_budget", arg, RunStatus)
    return _status_answer(request, call, status)


async def cancel_run(request: web.Request, call: Call) -> web.Response:
    """Request cancellation; the run records ``run.cancelled`` and stops."""
    principal = call.principal
    run_id = request.match_info["run_id"]
    status = await _query_status(request, principal, run_id)
    if status.state in TERMINAL_STATES:
        raise conflict(f"run is already {status.state.value}")
    handle = run_handle(request.app[TEMPORAL], principal.workspace, run_id)
    await handle.cancel()
    return call.answer(CancelAccepted(run_id=run_id, state="cancelling", **_urls(request, run_id)))


async def run_events(request: web.Request, call: Call) -> web.Response:
    """The run's ordered event log after sequence number ``after`` (default 0), at most 500 at a time."""
    principal = call.principal
    run_id = request.match_info["run_id"]
    after = parse_after(request)
    handle = run_handle(request.app[TEMPORAL], principal.workspace, run_id)
    rows = await asyncio.to_thread(
        read_events, request.app[ENGINE], workspace=principal.workspace, stream_id=run_id, after=after
    )
    # An empty page asks Temporal too: of a real run, or of an unknown one?
    rows, running = await gapless_page(rows, after, lambda: workflow_open(handle))
    if running is None and not rows:
        raise not_found("run")
    page = EventList(
        run_id=run_id, events=[record_of(r) for r in rows], next_after=rows[-1].seq if rows else after
    ).dump()
    # gate.requested events carry their review_url only for callers who could decide the gate themselves.
    page["events"] = with_review_urls(request, principal, page["events"])
    return _json(page)
