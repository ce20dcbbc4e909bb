"""Listing a workspace's runs (``GET /v1/runs``) from Temporal visibility.

Runs are found by the search attributes they carry from their start (``QpWorkspace``, ``QpRunKind``, ``QpRepoUrl``,
``QpCorrelationId``) and keep current (``QpState``, ``QpPendingGate``): one visibility query per page, built here
and nowhere else. Every request value is hostile: the workspace comes from the caller's token, never from the
query string, and each value enters the query only as a quoted literal of a validated string (no backslash, no
control character, its quotes escaped), so no value can end its literal and add a clause.

Temporal's page token is handed out sealed (AES-GCM under the service's secret key, bound to the workspace and the
query it continues): a tampered token, or one of another workspace or filter, is a 400 before Temporal sees it.
Visibility's order is Temporal's (SQL visibility has no ``ORDER BY``): open runs first, newest first, then finished
runs, the latest finished first. Each run's times come from its event log (first and latest event), which knows
when a run that continued as new began.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus

from quantapilot.errors import ApiError, ErrorCode
from quantapilot.models import TERMINAL_STATES, RunKind, RunState
from quantapilot.runs.contracts import RunList, RunListItem
from quantapilot.runs.ids import LIFECYCLE_RUN_WORKFLOW, REPO_RUN_WORKFLOW, kind_of, parse_workflow_id
from quantapilot.secretbox import KeyRing, SecretDecryptError
from quantapilot.temporal import (
    SA_ACCOUNT_ID,
    SA_BRANCH,
    SA_CORRELATION_ID,
    SA_PENDING_GATE,
    SA_REPO_URL,
    SA_RUN_KIND,
    SA_STAGE,
    SA_STATE,
    SA_WORKSPACE,
)

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_PAGE_TOKEN = 4096
MAX_REPO_URL = 2000  # as RunRequest.repo_url
MAX_GATE = 100  # as a gate decision's gate
# Filter values: no whitespace, control character or backslash (a backslash escapes in visibility literals).
FILTER_PATTERN = r"^[^\s\x00-\x1f\x7f\\]+$"
CORRELATION_ID_PATTERN = r"^[A-Za-z0-9._:-]+$"  # as RunRequest.correlation_id
PAGE_TOKEN_PATTERN = r"^[A-Za-z0-9_-]+$"  # noqa: S105 - base64url, not a secret
_OPEN_STATES = (RunState.RUNNING, RunState.WAITING_FOR_GATE, RunState.PAUSED)
# A run that Temporal closed without the workflow recording a final state (terminated, timed out, failed task).
_CLOSED_AS = {
    WorkflowExecutionStatus.COMPLETED: RunState.COMPLETED,
    WorkflowExecutionStatus.CANCELED: RunState.CANCELLED,
    WorkflowExecutionStatus.FAILED: RunState.FAILED,
    WorkflowExecutionStatus.TERMINATED: RunState.FAILED,
    WorkflowExecutionStatus.TIMED_OUT: RunState.FAILED,
}
_STATUS_NAME = {
    WorkflowExecutionStatus.COMPLETED: "Completed",
    WorkflowExecutionStatus.CANCELED: "Canceled",
    WorkflowExecutionStatus.FAILED: "Failed",
    WorkflowExecutionStatus.TERMINATED: "Terminated",
    WorkflowExecutionStatus.TIMED_OUT: "TimedOut",
}

#: ``(workspace, run ids) -> {run id: (first event, latest event)}``, read from the event log.
EventTimes = Callable[[str, Sequence[str]], Awaitable[Mapping[str, tuple[datetime, datetime]]]]


class RunListQuery(BaseModel):
    """The query string of ``GET /v1/runs`` (each parameter once; unknown ones are refused)."""

    model_config = ConfigDict(extra="forbid")

    state: RunState | None = None
    kind: RunKind | None = None
    gate: str | None = Field(default=None, min_length=1, max_length=MAX_GATE, pattern=FILTER_PATTERN)
    repo_url: str | None = Field(default=None, min_length=1, max_length=MAX_REPO_URL, pattern=FILTER_PATTERN)
    correlation_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=CORRELATION_ID_PATTERN)
    page_token: str | None = Field(default=None, min_length=1, max_length=MAX_PAGE_TOKEN, pattern=PAGE_TOKEN_PATTERN)
    page_size: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, strict=False)


def _invalid(message: str, details: list[dict[str, str]] | None = None) -> ApiError:
    return ApiError(400, ErrorCode.VALIDATION_ERROR, message, details=details)


def parse_query(pairs: Sequence[tuple[str, str]]) -> RunListQuery:
    """Validate the query string.

    Args:
        pairs: Every ``(name, value)`` as sent, repeats included.

    Raises:
        ApiError: 400 ``VALIDATION_ERROR`` for a repeated or unknown parameter or a value out of bounds.
    """
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise _invalid("query parameters may be given once", [{"path": k, "message": "repeated"} for k in repeated])
    try:
        return RunListQuery.model_validate(dict(pairs))
    except ValidationError as err:
        details = [{"path": ".".join(str(p) for p in e["loc"]) or "<query>", "message": e["msg"]} for e in err.errors()]
        raise _invalid("query parameters do not match their schema", details) from None


def literal(value: str) -> str:
    """A visibility-query string literal of ``value``.

    Raises:
        ValueError: The value holds a backslash or a control character (validation refuses them before).
    """
    if "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("not a filter value")
    return "'" + value.replace("'", "''") + "'"


def _state_clause(state: RunState) -> str:
    if state in _OPEN_STATES:
        return f"{SA_STATE.name} = {literal(state.value)} AND ExecutionStatus = 'Running'"
    closed = [_STATUS_NAME[s] for s, mapped in _CLOSED_AS.items() if mapped == state]
    opens = ", ".join(literal(s.value) for s in _OPEN_STATES)
    statuses = ", ".join(literal(s) for s in closed)
    unrecorded = f"ExecutionStatus IN ({statuses}) AND {SA_STATE.name} IN ({opens})"
    return f"({SA_STATE.name} = {literal(state.value)} OR ({unrecorded}))"


def visibility_query(workspace: str, query: RunListQuery) -> str:
    """The visibility query of one listing: the workspace's run workflows, narrowed by the filters.

    Args:
        workspace: The caller's workspace (from the token).
        query: The validated filters.
    """
    clauses = [
        f"{SA_WORKSPACE.name} = {literal(workspace)}",
        f"WorkflowType IN ({literal(REPO_RUN_WORKFLOW)}, {literal(LIFECYCLE_RUN_WORKFLOW)})",
        # A run that continued as new is listed once, by its latest execution.
        "ExecutionStatus != 'ContinuedAsNew'",
    ]
    if query.kind is not None:
        clauses.append(f"{SA_RUN_KIND.name} = {literal(query.kind.value)}")
    if query.state is not None:
        clauses.append(_state_clause(query.state))
    if query.gate is not None:
        clauses.append(f"{SA_PENDING_GATE.name} = {literal(query.gate)} AND ExecutionStatus = 'Running'")
    if query.repo_url is not None:
        clauses.append(f"{SA_REPO_URL.name} = {literal(query.repo_url)}")
    if query.correlation_id is not None:
        clauses.append(f"{SA_CORRELATION_ID.name} = {literal(query.correlation_id)}")
    return " AND ".join(clauses)


_SEALED = re.compile(r"v1:[0-9a-f]{16}:[A-Za-z0-9_-]+")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _token_context(workspace: str, query: str) -> str:
    # The token continues this listing only: another workspace or other filters cannot reuse it.
    return f"run-list/{hashlib.sha256(query.encode()).hexdigest()[:32]}/{workspace}"


def seal_token(keyring: KeyRing, token: bytes, *, workspace: str, query: str) -> str:
    """The opaque ``next_page_token`` (base64url) of Temporal's token for this workspace and query."""
    return _b64(keyring.encrypt(_b64(token), context=_token_context(workspace, query)).encode("ascii"))


def open_token(keyring: KeyRing, text: str, *, workspace: str, query: str) -> bytes:
    """Temporal's token inside a ``page_token``.

    Raises:
        ApiError: 400 for a token that is not one of ours for this workspace and query.
    """
    try:
        raw = _unb64(text)
        stored = raw.decode("ascii")
        # Only the exact bytes we sealed: base64 decoding skips stray characters, so check the canonical form.
        if _b64(raw) != text or not _SEALED.fullmatch(stored):
            raise ValueError("not a sealed token")
        inner = keyring.decrypt(stored, context=_token_context(workspace, query))
        return _unb64(inner)
    except (binascii.Error, ValueError, SecretDecryptError):
        # SecretDecryptError and UnicodeDecodeError are ValueErrors; the message says which listing it was not.
        detail = [{"path": "page_token", "message": "invalid"}]
        raise _invalid("page_token is not a token of this listing", detail) from None


def _state_of(execution: WorkflowExecution, recorded: str | None) -> RunState:
    try:
        state = RunState(recorded) if recorded else RunState.RUNNING
    except ValueError:
        state = RunState.RUNNING
    if execution.status == WorkflowExecutionStatus.RUNNING or state in TERMINAL_STATES:
        return state
    return _CLOSED_AS.get(execution.status or WorkflowExecutionStatus.TERMINATED, RunState.FAILED)


def list_item(
    execution: WorkflowExecution, times: Mapping[str, tuple[datetime, datetime]], *, workspace: str
) -> RunListItem | None:
    """The list entry of one visibility record, or None for a workflow that is not a run of ``workspace``."""
    parsed = parse_workflow_id(execution.id)
    # The query asked for the workspace's runs; the workflow id (which the API derives) must say so too.
    if parsed is None or parsed[0] != workspace or (kind := kind_of(parsed[1])) is None:
        return None
    run_id = parsed[1]
    attrs = execution.typed_search_attributes
    state = _state_of(execution, attrs.get(SA_STATE))
    pending = attrs.get(SA_PENDING_GATE) or None
    created, updated = times.get(run_id, (execution.start_time, execution.start_time))
    if execution.close_time is not None:
        updated = max(updated, execution.close_time)
    return RunListItem(
        run_id=run_id,
        kind=kind,
        state=state,
        repo_url=attrs.get(SA_REPO_URL),
        branch=attrs.get(SA_BRANCH),
        account_id=attrs.get(SA_ACCOUNT_ID),
        stage=attrs.get(SA_STAGE),
        correlation_id=attrs.get(SA_CORRELATION_ID),
        gate=pending if state in _OPEN_STATES else None,
        created_at=created,
        updated_at=updated,
    )


async def list_runs(
    client: Client,
    keyring: KeyRing,
    event_times: EventTimes,
    *,
    workspace: str,
    query: RunListQuery,
    rpc_timeout: timedelta,
) -> RunList:
    """One page of the workspace's runs.

    Args:
        client: Temporal client.
        keyring: Seals and opens page tokens.
        event_times: Reads each run's first and latest event time.
        workspace: The caller's workspace (from the token, never from the query string).
        query: The validated query string.
        rpc_timeout: Bound of the visibility call.

    Raises:
        ApiError: 400 for a page token that is not this listing's.
    """
    text = visibility_query(workspace, query)
    previous = open_token(keyring, query.page_token, workspace=workspace, query=text) if query.page_token else None
    pages = client.list_workflows(text, page_size=query.page_size, next_page_token=previous, rpc_timeout=rpc_timeout)
    await pages.fetch_next_page()
    executions: list[WorkflowExecution] = list(pages.current_page or [])
    ids = [p[1] for p in (parse_workflow_id(e.id) for e in executions) if p is not None]
    times = await event_times(workspace, ids) if ids else {}
    items = [item for item in (list_item(e, times, workspace=workspace) for e in executions) if item is not None]
    token: Any = pages.next_page_token
    following = seal_token(keyring, token, workspace=workspace, query=text) if token else None
    return RunList(runs=items, next_page_token=following)


async def waiting_run_ids(client: Client, *, workspace: str, limit: int) -> list[str]:
    """Run ids of the workspace's runs waiting at a gate: the ``state=waiting_for_gate`` filter of :func:`list_runs`.

    Args:
        client: Temporal client.
        workspace: The caller's workspace (from the token).
        limit: At most this many runs.
    """
    text = visibility_query(workspace, RunListQuery(state=RunState.WAITING_FOR_GATE))
    run_ids: list[str] = []
    async for execution in client.list_workflows(text, limit=limit):
        parsed = parse_workflow_id(execution.id)
        # The workflow id names the workspace too: a run is listed only where both agree.
        if parsed is not None and parsed[0] == workspace:
            run_ids.append(parsed[1])
    return run_ids
