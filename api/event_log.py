"""Reading an event log page: runs and account streams share the table, the cursor and the JSON shape."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

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
