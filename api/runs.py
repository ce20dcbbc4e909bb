"""Talking to runs from the API: the Idempotency-Key header, handles of running workflows and the runs' URLs.

Runs are started by :mod:`quantapilot.runs.starter`; their ids and workflow ids come from :mod:`quantapilot.runs.ids`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair
from temporalio.service import RPCError, RPCStatusCode

from api.keys import SETTINGS, TEMPORAL
from api.tracing import RUN_ID, TRACE_ID
from quantapilot.errors import ApiError, ErrorCode, not_found
from quantapilot.models import RunKind, RunTrigger
from quantapilot.runs.ids import kind_of, workflow_id
from quantapilot.runs.starter import StartedRun, start_run
from quantapilot.tokens import Principal

if TYPE_CHECKING:
    # Only a type here: api.registry imports this module (parse_idempotency_key).
    from api.registry import Call

IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")


def parse_idempotency_key(value: str | None) -> str | None:
    """Validate the ``Idempotency-Key`` header (printable ASCII, at most 255 characters)."""
    if value is None:
        return None
    if not IDEMPOTENCY_KEY_RE.match(value):
        raise ApiError(400, ErrorCode.VALIDATION_ERROR, "Idempotency-Key must be 1-255 printable ASCII characters")
    return value


def run_handle(client: Client, workspace: str, run_id: str) -> WorkflowHandle[Any, Any]:
    """Handle of a run in the caller's workspace; 404 for a malformed id."""
    kind = kind_of(run_id)
    if kind is None:
        raise not_found("run")
    return client.get_workflow_handle(workflow_id(kind, workspace, run_id))


def run_urls(request: web.Request, run_id: str) -> tuple[str, str]:
    """The run's status and events URLs, under ``QP_PUBLIC_BASE_URL`` or else the request's own origin."""
    base = request.app[SETTINGS].public_base_url.rstrip("/") or f"{request.scheme}://{request.host}"
    return f"{base}/v1/runs/{run_id}", f"{base}/v1/runs/{run_id}/events"


def run_trigger(
    request: web.Request, principal: Principal, *, run_id: str, digest: str, correlation_id: str | None
) -> dict[str, Any]:
    """The trigger's fields of a run workflow's input (:class:`~quantapilot.models.RunTrigger`), by name.

    Args:
        request: The trigger request (its trace id).
        principal: Who triggered the run.
        run_id: The new run's id.
        digest: SHA-256 of the request body (what an ``Idempotency-Key`` compares).
        correlation_id: The caller's id for the run, if given.
    """
    trigger = RunTrigger(
        run_id=run_id,
        workspace=principal.workspace,
        correlation_id=correlation_id,
        triggered_by=principal.subject,
        triggered_by_token=principal.token_id,
        allow_self_approval_default=request.app[SETTINGS].allow_self_approval,
        request_sha256=digest,
        trace_id=request.get(TRACE_ID),
    )
    return dict(trigger)


async def start_triggered(
    request: web.Request,
    call: Call,
    *,
    kind: RunKind,
    make_input: Callable[[dict[str, Any]], Any],
    correlation_id: str | None,
    search_attributes: Sequence[SearchAttributePair[Any]],
    summary: str,
) -> StartedRun:
    """Start the run a trigger request asks for (:func:`~quantapilot.runs.starter.start_run`), once per key.

    The caller's workspace, its ``Idempotency-Key`` and the body come from ``call``; the new run's id is noted on
    the request (the access log's ``run_id``).

    Args:
        request: The trigger request.
        call: What the registry established (principal, key, body).
        kind: The run's kind.
        make_input: The workflow's input from the trigger's fields (:func:`run_trigger`).
        correlation_id: The caller's id for the run, if given.
        search_attributes: The kind's own initial search attributes.
        summary: Static summary shown in the Web UI.

    Raises:
        ApiError: 422 ``IDEMPOTENCY_KEY_REUSED`` when the key was used with another body.
    """
    principal = call.principal

    def workflow_input(run_id: str, digest: str) -> Any:
        return make_input(run_trigger(request, principal, run_id=run_id, digest=digest, correlation_id=correlation_id))

    started = await start_run(
        request.app[TEMPORAL],
        kind=kind,
        workspace=principal.workspace,
        idempotency_key=call.idempotency_key,
        body=call.body,
        make_input=workflow_input,
        task_queue=request.app[SETTINGS].task_queue,
        search_attributes=search_attributes,
        correlation_id=correlation_id,
        summary=summary,
    )
    request[RUN_ID] = started.run_id
    return started


def is_not_found(err: RPCError) -> bool:
    """Tell whether an RPC error means the workflow does not exist."""
    return err.status == RPCStatusCode.NOT_FOUND
