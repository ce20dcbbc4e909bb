"""Handlers of the value lifecycle: lifecycle runs, telemetry ingestion and the account event stream.

Bodies are read by the endpoint registry (content type, size, depth, NUL; the telemetry body's bytes go to its
model undecoded, ``Body.from_bytes``) and parsed by their pydantic models straight from the request's bytes
(:mod:`quantapilot.lifecycle.validation`), the one validator of these shapes: problems answer 422 with one
detail (path, message) per error. Answers are the response models the registry declares for the endpoints
(:meth:`api.registry.Call.answer`), in the seed's camelCase (their aliases).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from temporalio.client import Client
from temporalio.common import SearchAttributePair
from temporalio.service import RPCError

from api.event_log import parse_after, workflow_open
from api.keys import ENGINE, SETTINGS, TEMPORAL
from api.registry import Call
from api.runs import run_handle, run_urls, start_triggered
from quantapilot.db import one_writer
from quantapilot.errors import ApiError, ErrorCode, not_found
from quantapilot.events.log import gapless_page, read_events
from quantapilot.events.record import record_of
from quantapilot.lifecycle.contracts import (
    ACCOUNT_WORKFLOW,
    TELEMETRY_SIGNAL,
    AccountRealizationInput,
    LifecycleNarrative,
    LifecycleRunInput,
    TelemetryIngested,
    account_stream_id,
    account_workflow_id,
)
from quantapilot.lifecycle.models import LifecycleRunRequest, StageGateSettings, canonical_account_id
from quantapilot.lifecycle.telemetry import IdempotencyKeyReused, StoredBatch, store_batch
from quantapilot.lifecycle.telemetry_body import TelemetryIn
from quantapilot.lifecycle.telemetry_body import parse_telemetry as parse_telemetry_bytes
from quantapilot.lifecycle.validation import SchemaValidationError, parse_run_request
from quantapilot.models import RunKind, RunState, RunStatus
from quantapilot.observability import TELEMETRY_ACCEPTED
from quantapilot.runs.http import AccountAccepted, AccountEventList, LifecycleRunAccepted, TelemetryAccepted
from quantapilot.runs.starter import request_hash, signal_with_start
from quantapilot.temporal import SA_ACCOUNT_ID, SA_RUN_KIND, SA_STAGE, SA_WORKSPACE

log = logging.getLogger("quantapilot.api.lifecycle")

DB_RETRY_AFTER_S = "5"


@dataclass(frozen=True, slots=True)
class RealizationOptions:
    """How account realization workflows started by this API behave.

    Attributes:
        window_s: At most one refresh per this many seconds per account.
        refreshes_per_run: Refreshes before the workflow continues as new.
        retry_initial_s: First retry interval of a refresh's activities.
    """

    window_s: float = 5.0
    refreshes_per_run: int = 100
    retry_initial_s: float = 2.0


# Set on the application (before it starts) to override :class:`RealizationOptions` defaults, e.g. in tests.
REALIZATION_OPTIONS = web.AppKey("realization_options", RealizationOptions)


def _invalid(exc: SchemaValidationError) -> ApiError:
    return ApiError(422, ErrorCode.VALIDATION_ERROR, "request body does not match the schema", details=exc.errors)


async def object_body(payload: Any) -> None:
    """The registry's body hook of the lifecycle run endpoint: a JSON object, parsed by the handler (422 otherwise).

    The registry has read and decoded the body (size, depth, NUL); the handler parses the request's bytes
    with the body's model (:func:`lifecycle_run_request`). This hook only answers a body that is no object, and
    keeps the registry's generic schema validation off it. (The telemetry body is parsed from its bytes by
    :func:`parse_telemetry`, without this decoding.)
    """
    if not isinstance(payload, dict):
        raise _invalid(SchemaValidationError([{"path": "", "message": "Input should be an object"}]))


# The registry's name for the hook of the lifecycle run body (api/endpoints.py): it is parsed in its handler.
parse_lifecycle_run = object_body


async def parse_telemetry(raw: bytes) -> list[TelemetryIn]:
    """The registry's parser of the ``POST /v1/telemetry/events`` body, from its bytes (``Body.from_bytes``).

    The registry hands the bytes over undecoded (size, content type and NUL checked); pydantic reads them once,
    off the event loop (a full batch takes milliseconds of CPU). No body nested deeper than the registry's limit
    can match the models (metadata stops two levels below an event), as ``from_bytes`` requires.

    Raises:
        ApiError: 422 with one detail per problem.
    """
    try:
        return await asyncio.to_thread(parse_telemetry_bytes, raw)
    except SchemaValidationError as exc:
        raise _invalid(exc) from None


async def lifecycle_run_request(request: web.Request) -> LifecycleRunRequest:
    """Parse the ``POST /v1/lifecycle/runs`` body from the request's bytes (422 with the problems)."""
    try:
        return parse_run_request(await request.read())  # aiohttp kept the bytes the registry read
    except SchemaValidationError as exc:
        raise _invalid(exc) from None


def _store(
    engine: Engine, workspace: str, events: list[TelemetryIn], key: str | None, body: dict[str, Any]
) -> StoredBatch:
    digest = request_hash(body) if key is not None else ""
    # Behind this process's other SQLite writers (the worker's activities, the webhook dispatcher) rather than
    # polling the database's lock from SQLite's busy handler, and on one Core transaction: no ORM session.
    with one_writer(engine), engine.begin() as connection:
        return store_batch(
            connection=connection, workspace=workspace, events=events, idempotency_key=key, request_sha256=digest
        )


# ----- lifecycle runs ------------------------------------------------------------------------------------


async def trigger_lifecycle_run(request: web.Request, call: Call) -> web.Response:
    """Start one lifecycle stage for one account; ``Idempotency-Key`` returns the same run for the same body."""
    principal = call.principal
    req = await lifecycle_run_request(request)
    settings = request.app[SETTINGS]

    gate = req.gate or StageGateSettings()
    # QP_ALLOW_SELF_APPROVAL=false is a floor: the request may narrow who decides, never lift it, so the run
    # records the narrowed setting (and its workflow applies the same floor again when a decision arrives).
    allow_self_approval = gate.allow_self_approval
    if allow_self_approval and not settings.allow_self_approval:
        allow_self_approval = False

    arch = settings.lifecycle_models.arch if settings.lifecycle_models else None
    # Taken now, as the self-approval default is: the run keeps the model and budgets it was triggered with.
    narrative = (
        None
        if arch is None
        else LifecycleNarrative(model=arch, budgets=settings.lifecycle_budgets, limits=settings.lifecycle_limits)
    )

    def make_input(trigger: dict[str, Any]) -> LifecycleRunInput:
        return LifecycleRunInput(
            **trigger,
            stage=req.stage,
            account_id=req.account_id,
            inputs=req.inputs,
            gate_timeout_s=gate.timeout_s,
            gate_approvers=list(gate.approvers),
            gate_allow_self_approval=allow_self_approval,
            gate_required_approvals=gate.required_approvals,
            narrative=narrative,
        )

    started = await start_triggered(
        request,
        call,
        kind=RunKind.LIFECYCLE,
        make_input=make_input,
        correlation_id=req.correlation_id,
        search_attributes=[
            SearchAttributePair(SA_ACCOUNT_ID, req.account_id),
            SearchAttributePair(SA_STAGE, req.stage),
        ],
        summary=f"Lifecycle {req.stage} run of account {req.account_id}",
    )
    state = RunState.RUNNING
    if not started.created:
        # A repeated request answers with the run's current state, which may have moved on.
        status: RunStatus = await run_handle(request.app[TEMPORAL], principal.workspace, started.run_id).query(
            "status", result_type=RunStatus
        )
        state = status.state
    status_url, events_url = run_urls(request, started.run_id)
    accepted = LifecycleRunAccepted(
        run_id=started.run_id, status=state, status_url=status_url, events_url=events_url, created=started.created
    )
    return call.answer(accepted, headers={"Location": status_url})


# ----- telemetry -----------------------------------------------------------------------------------------


async def signal_account(
    client: Client,
    *,
    task_queue: str,
    workspace: str,
    account_id: str,
    accepted: int,
    options: RealizationOptions,
) -> None:
    """Signal-with-start the account's realization workflow: a refresh is due.

    Args:
        client: Temporal client.
        task_queue: Task queue of the workers.
        workspace: Caller's workspace.
        account_id: Canonical account UUID.
        accepted: Events of the account in the batch.
        options: Window and continue-as-new threshold for a workflow this call starts.
    """
    await signal_with_start(
        client,
        ACCOUNT_WORKFLOW,
        AccountRealizationInput(
            workspace=workspace,
            account_id=account_id,
            window_s=options.window_s,
            refreshes_per_run=options.refreshes_per_run,
            retry_initial_s=options.retry_initial_s,
        ),
        id=account_workflow_id(workspace, account_id),
        task_queue=task_queue,
        signal=TELEMETRY_SIGNAL,
        signal_args=[TelemetryIngested(accepted=accepted)],
        search_attributes=[
            SearchAttributePair(SA_WORKSPACE, workspace),
            SearchAttributePair(SA_RUN_KIND, RunKind.LIFECYCLE.value),
            SearchAttributePair(SA_ACCOUNT_ID, account_id),
            SearchAttributePair(SA_STAGE, "realization"),
        ],
        summary=f"Realization refreshes of account {account_id}",
    )


async def ingest_telemetry(request: web.Request, call: Call) -> web.Response:
    """Store one event or ``{"events": [...]}`` (at most 1000), then ask each touched account for a refresh.

    A retry stores nothing twice: events whose ``id`` is already stored, and a whole batch whose
    ``Idempotency-Key`` was stored with the same body, count as ``duplicates`` (the same key with another body is
    422 ``IDEMPOTENCY_KEY_REUSED``). ``accepted`` counts the request's events that are stored, now or before, so a
    retry answers as the first delivery did; refreshes are asked for again (they coalesce), which also heals a
    first delivery that stored its events but could not schedule them.
    """
    principal, key = call.principal, call.idempotency_key
    events: list[TelemetryIn] = call.parsed  # parsed from the request's bytes by the registry (parse_telemetry)
    try:
        stored = await asyncio.to_thread(_store, request.app[ENGINE], principal.workspace, events, key, call.body)
        TELEMETRY_ACCEPTED.inc(stored.stored)
    except IdempotencyKeyReused:
        raise ApiError(
            422, ErrorCode.IDEMPOTENCY_KEY_REUSED, "Idempotency-Key was already used with a different request body"
        ) from None
    except (OperationalError, InterfaceError, PoolTimeoutError) as exc:
        log.warning("telemetry store unavailable: %s", type(exc).__name__)
        raise ApiError(
            503,
            ErrorCode.SERVICE_UNAVAILABLE,
            "the telemetry store is unavailable; nothing was stored, retry later",
            headers={"Retry-After": DB_RETRY_AFTER_S},
        ) from None
    per_account = Counter(e.account_id for e in events)
    options = request.app.get(REALIZATION_OPTIONS) or RealizationOptions()
    outcomes = await asyncio.gather(
        *(
            signal_account(
                request.app[TEMPORAL],
                task_queue=request.app[SETTINGS].task_queue,
                workspace=principal.workspace,
                account_id=account,
                accepted=count,
                options=options,
            )
            for account, count in per_account.items()
        ),
        return_exceptions=True,
    )
    failed = 0
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, RPCError | asyncio.TimeoutError):
                raise outcome
            # The events are stored; the next batch (or a realization run) refreshes the account.
            failed += 1
            log.warning("realization refresh not scheduled: %s", type(outcome).__name__)
    accepted = TelemetryAccepted(
        accepted=len(events),
        duplicates=stored.duplicates,
        account_ids=sorted(per_account),
        accounts=[AccountAccepted(account_id=a, accepted=n) for a, n in sorted(per_account.items())],
        refreshes_scheduled=len(per_account) - failed,
    )
    return call.answer(accepted)


# ----- account event stream ------------------------------------------------------------------------------


async def account_events(request: web.Request, call: Call) -> web.Response:
    """The account's realization stream (``realization.updated`` from telemetry refreshes) after ``after``."""
    principal = call.principal
    try:
        account = canonical_account_id(request.match_info["account_id"])
    except ValueError:
        raise not_found("account") from None
    after = parse_after(request)
    stream = account_stream_id(principal.workspace, account)
    rows = await asyncio.to_thread(
        read_events, request.app[ENGINE], workspace=principal.workspace, stream_id=stream, after=after
    )
    handle = request.app[TEMPORAL].get_workflow_handle(account_workflow_id(principal.workspace, account))
    if rows:  # an empty page needs no answer from Temporal: an account without events is no error here
        rows, _ = await gapless_page(rows, after, lambda: workflow_open(handle))
    page = AccountEventList(
        account_id=account,
        stream_id=stream,
        events=[record_of(r) for r in rows],
        next_after=rows[-1].seq if rows else after,
    )
    return call.answer(page)
