"""Reading an event log page: runs and account streams share the table, the cursor and the JSON shape.

A run numbers its events 1, 2, 3, ... before recording them, and two of them can be on their way at once (a pause
signal's ``run.paused`` while a step's event is still being written), so seq N+1 may commit before seq N. A page
therefore ends at the first missing number while the stream's workflow is open: the missing event is still being
written (the recording activity retries until it is), and a client polling with ``after`` picks it up next time
instead of moving its cursor past it. Once the workflow has closed nothing more can arrive, and a page runs past
a hole left by a cancelled recording.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from quantapilot.db import RunEvent
from quantapilot.errors import ApiError, ErrorCode
from quantapilot.models import EventRecord, RunKind

EVENTS_PAGE = 500
MAX_SEQ = 2**63 - 1  # the largest cursor accepted (a signed 64-bit integer)
SEQ_COLUMN_MAX = 2**31 - 1  # run_events.seq is an INTEGER column


def parse_after(request: web.Request) -> int:
    """The ``after`` cursor (a sequence number, default 0); 400 when it is not one."""
    try:
        after = int(request.query.get("after", "0"))
    except ValueError:
        raise ApiError(400, ErrorCode.VALIDATION_ERROR, "after must be an integer") from None
    if not 0 <= after <= MAX_SEQ:
        raise ApiError(400, ErrorCode.VALIDATION_ERROR, f"after must be between 0 and {MAX_SEQ}")
    return after


def read_events(engine: Engine, *, workspace: str, stream_id: str, after: int) -> list[RunEvent]:
    """Up to :data:`EVENTS_PAGE` events of one run (or account stream) after ``after``, in order."""
    if after >= SEQ_COLUMN_MAX:
        # Nothing can follow: and PostgreSQL would refuse to bind a larger value to the 32-bit column.
        return []
    with Session(engine) as session:
        query = (
            select(RunEvent)
            .where(RunEvent.workspace == workspace, RunEvent.run_id == stream_id, col(RunEvent.seq) > after)
            .order_by(col(RunEvent.seq))
            .limit(EVENTS_PAGE)
        )
        return list(session.exec(query))


def up_to_first_gap(rows: list[RunEvent], after: int) -> tuple[list[RunEvent], bool]:
    """The rows that follow ``after`` without a missing sequence number, and whether one cut the page short."""
    for index, row in enumerate(rows):
        if row.seq != after + 1 + index:
            return rows[:index], True
    return rows, False


async def workflow_open(handle: WorkflowHandle[Any, Any]) -> bool | None:
    """Whether the workflow is still running; None when Temporal does not know it (never started, or expired)."""
    try:
        description = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return description.status == WorkflowExecutionStatus.RUNNING


async def gapless_page(
    rows: list[RunEvent], after: int, is_open: Callable[[], Awaitable[bool | None]]
) -> tuple[list[RunEvent], bool | None]:
    """The page to serve: ``rows`` up to the first gap while the stream's workflow is open (see the module).

    Args:
        rows: What :func:`read_events` returned.
        after: The cursor.
        is_open: Asks Temporal whether the stream's workflow runs (only called when needed).

    Returns:
        The rows to serve, and the workflow's state when it was asked (True open, False closed, None unknown).
    """
    served, gap = up_to_first_gap(rows, after)
    if not gap and rows:
        return rows, True
    state = await is_open()
    return (served if gap and state else rows), state


def event_json(row: RunEvent) -> dict[str, Any]:
    """An event as the API serves it."""
    return EventRecord(
        id=row.id,
        run_id=row.run_id,
        workspace=row.workspace,
        run_kind=RunKind(row.run_kind),
        seq=row.seq,
        type=row.type,
        correlation_id=row.correlation_id,
        created_at=row.created_at,
        data=row.data,
        trace_id=row.trace_id,
    ).model_dump(mode="json")
