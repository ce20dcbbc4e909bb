"""The API's side of the event log: the ``after`` cursor, and asking Temporal whether a stream's workflow runs.

Reading a page and its JSON shape belong to the event (:mod:`quantapilot.events.log`,
:func:`quantapilot.events.record.event_json`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from quantapilot.errors import ApiError, ErrorCode

MAX_SEQ = 2**63 - 1  # the largest cursor accepted (a signed 64-bit integer)


def parse_after(request: web.Request) -> int:
    """The ``after`` cursor (a sequence number, default 0); 400 when it is not one."""
    try:
        after = int(request.query.get("after", "0"))
    except ValueError:
        raise ApiError(400, ErrorCode.VALIDATION_ERROR, "after must be an integer") from None
    if not 0 <= after <= MAX_SEQ:
        raise ApiError(400, ErrorCode.VALIDATION_ERROR, f"after must be between 0 and {MAX_SEQ}")
    return after


async def workflow_open(handle: WorkflowHandle[Any, Any]) -> bool | None:
    """Whether the workflow is still running; None when Temporal does not know it (never started, or expired)."""
    try:
        description = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return description.status == WorkflowExecutionStatus.RUNNING
