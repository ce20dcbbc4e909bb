"""Starting runs idempotently and talking to running workflows.

Idempotency rides on Temporal's workflow-id semantics: the workflow id is derived from (workspace, kind,
Idempotency-Key), started with ``REJECT_DUPLICATE`` reuse and ``FAIL`` conflict policies, so a second start of the
same id - concurrent, or after the first run closed - is refused by the server, and we answer with the existing
run after checking that its stored request hash matches.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from quantapilot.errors import ApiError, ErrorCode, not_found
from quantapilot.models import RunKind

KIND_PREFIX = {RunKind.REPOSITORY: "rr_", RunKind.LIFECYCLE: "lc_"}
WORKFLOW_PREFIX = {RunKind.REPOSITORY: "repo-run", RunKind.LIFECYCLE: "lifecycle-run"}
RUN_ID_RE = re.compile(r"^(rr|lc)_[0-9a-f]{32}$")
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
MEMO_REQUEST_HASH = "request_sha256"


def request_hash(body: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a validated body (key order and spacing do not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def new_run_id(kind: RunKind, workspace: str, idempotency_key: str | None) -> str:
    """A run id: derived from the key when there is one (same key, same id), random otherwise."""
    if idempotency_key is None:
        return KIND_PREFIX[kind] + uuid.uuid4().hex
    digest = hashlib.sha256(f"{workspace}\x00{kind.value}\x00{idempotency_key}".encode()).hexdigest()
    return KIND_PREFIX[kind] + digest[:32]


def kind_of(run_id: str) -> RunKind | None:
    """The kind encoded in a run id, or None when the id is malformed."""
    if not RUN_ID_RE.match(run_id):
        return None
    return RunKind.REPOSITORY if run_id.startswith("rr_") else RunKind.LIFECYCLE


def workflow_id_for(kind: RunKind, workspace: str, run_id: str) -> str:
    """Workflow id of a run: ``<kind>/<workspace>/<run_id>``, readable in the Web UI."""
    return f"{WORKFLOW_PREFIX[kind]}/{workspace}/{run_id}"


def parse_idempotency_key(value: str | None) -> str | None:
    """Validate the ``Idempotency-Key`` header (printable ASCII, at most 255 characters)."""
    if value is None:
        return None
    if not IDEMPOTENCY_KEY_RE.match(value):
        raise ApiError(400, ErrorCode.VALIDATION_ERROR, "Idempotency-Key must be 1-255 printable ASCII characters")
    return value


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
    workflow: str,
    make_input: Any,
    task_queue: str,
    search_attributes: list[SearchAttributePair[Any]],
    summary: str,
) -> StartedRun:
    """Start a run once per (workspace, Idempotency-Key).

    Args:
        client: Temporal client.
        kind: Run kind.
        workspace: Caller's workspace.
        idempotency_key: The header value, or None for a fresh run.
        body: Validated request body (its hash guards key reuse with another body).
        workflow: Workflow type name.
        make_input: ``(run_id, request_sha256) -> workflow input``.
        task_queue: Task queue.
        search_attributes: Initial search attributes.
        summary: Static summary shown in the Web UI.

    Raises:
        ApiError: 422 ``IDEMPOTENCY_KEY_REUSED`` when the key was used with another body.
    """
    digest = request_hash(body)
    run_id = new_run_id(kind, workspace, idempotency_key)
    wid = workflow_id_for(kind, workspace, run_id)
    try:
        await client.start_workflow(
            workflow,
            make_input(run_id, digest),
            id=wid,
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            memo={MEMO_REQUEST_HASH: digest},
            search_attributes=TypedSearchAttributes(search_attributes),
            static_summary=summary,
            # A run that nobody decides stays open; gates carry their own timeouts.
            execution_timeout=timedelta(days=365),
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


def run_handle(client: Client, workspace: str, run_id: str) -> WorkflowHandle[Any, Any]:
    """Handle of a run in the caller's workspace; 404 for a malformed id."""
    kind = kind_of(run_id)
    if kind is None:
        raise not_found("run")
    return client.get_workflow_handle(workflow_id_for(kind, workspace, run_id))


def is_not_found(err: RPCError) -> bool:
    """Tell whether an RPC error means the workflow does not exist."""
    return err.status == RPCStatusCode.NOT_FOUND
