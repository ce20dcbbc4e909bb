"""Starting run workflows: the only place that does (webhook delivery and AMQP workflows are started by theirs).

Idempotency rides on Temporal's workflow-id semantics: the workflow id is derived from (workspace, kind,
Idempotency-Key), started with ``REJECT_DUPLICATE`` reuse and ``FAIL`` conflict policies, so a second start of the
same id - concurrent, or after the first run closed - is refused by the server, and we answer with the existing
run after checking that its stored request hash matches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from quantapilot.errors import ApiError, ErrorCode
from quantapilot.models import RunKind
from quantapilot.runs.ids import WORKFLOW_TYPE, new_run_id, workflow_id
from quantapilot.temporal import SA_CORRELATION_ID, SA_RUN_KIND, SA_STATE, SA_WORKSPACE

MEMO_REQUEST_HASH = "request_sha256"
# A run that nobody decides stays open; gates carry their own timeouts.
RUN_EXECUTION_TIMEOUT = timedelta(days=365)


def request_hash(body: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a validated body (key order and spacing do not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class StartedRun:
    """Result of :func:`start_run`."""

    run_id: str
    workflow_id: str
    created: bool


async def start_run(
    client: Client,
    *,
    kind: RunKind,
    workspace: str,
    idempotency_key: str | None,
    body: dict[str, Any],
    make_input: Callable[[str, str], Any],
    task_queue: str,
    search_attributes: Sequence[SearchAttributePair[Any]],
    correlation_id: str | None,
    summary: str,
) -> StartedRun:
    """Start a run once per (workspace, Idempotency-Key).

    Args:
        client: Temporal client.
        kind: Run kind (it names the workflow type and the workflow id).
        workspace: Caller's workspace.
        idempotency_key: The header value, or None for a fresh run.
        body: Validated request body (its hash guards key reuse with another body).
        make_input: ``(run_id, request_sha256) -> workflow input``.
        task_queue: Task queue.
        search_attributes: The kind's own initial search attributes; the run's workspace, kind, ``running``
            state and correlation id are added here, for every kind alike.
        correlation_id: The caller's correlation id, if any.
        summary: Static summary shown in the Web UI.

    Raises:
        ApiError: 422 ``IDEMPOTENCY_KEY_REUSED`` when the key was used with another body.
    """
    digest = request_hash(body)
    run_id = new_run_id(kind, workspace, idempotency_key)
    wid = workflow_id(kind, workspace, run_id)
    attributes = [
        SearchAttributePair(SA_WORKSPACE, workspace),
        SearchAttributePair(SA_RUN_KIND, kind.value),
        *search_attributes,
        SearchAttributePair(SA_STATE, "running"),
        *([SearchAttributePair(SA_CORRELATION_ID, correlation_id)] if correlation_id else []),
    ]
    try:
        await client.start_workflow(
            WORKFLOW_TYPE[kind],
            make_input(run_id, digest),
            id=wid,
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            memo={MEMO_REQUEST_HASH: digest},
            search_attributes=TypedSearchAttributes(attributes),
            static_summary=summary,
            execution_timeout=RUN_EXECUTION_TIMEOUT,
        )
        return StartedRun(run_id=run_id, workflow_id=wid, created=True)
    except WorkflowAlreadyStartedError:
        if idempotency_key is None:
            raise  # a random id collided: practically impossible, and not a client error
    memo = await (await client.get_workflow_handle(wid).describe()).memo()
    if memo.get(MEMO_REQUEST_HASH) != digest:
        raise ApiError(
            422,
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
            "Idempotency-Key was already used with a different request body",
        )
    return StartedRun(run_id=run_id, workflow_id=wid, created=False)


async def signal_with_start(
    client: Client,
    workflow: str,
    arg: Any,
    *,
    id: str,
    task_queue: str,
    signal: str,
    signal_args: Sequence[Any],
    search_attributes: list[SearchAttributePair[Any]],
    summary: str,
) -> None:
    """Signal a long-lived workflow (an account's realization refreshes), starting it when it is not running.

    Args:
        client: Temporal client.
        workflow: Workflow type name.
        arg: Input of the workflow if this call starts it.
        id: Workflow id (one per workspace and account).
        task_queue: Task queue of the workers.
        signal: Signal name.
        signal_args: Arguments of the signal.
        search_attributes: Search attributes of a workflow this call starts.
        summary: Static summary shown in the Web UI.
    """
    await client.start_workflow(
        workflow,
        arg,
        id=id,
        task_queue=task_queue,
        start_signal=signal,
        start_signal_args=signal_args,
        search_attributes=TypedSearchAttributes(search_attributes),
        static_summary=summary,
    )
