"""Writing and reading the event log: runs and account streams share the table, the cursor and the JSON shape.

A run numbers its events 1, 2, 3, ... before recording them, and two of them can be on their way at once (a pause
signal's ``run.paused`` while a step's event is still being written), so seq N+1 may commit before seq N. A page
therefore ends at the first missing number while the stream's workflow is open: the missing event is still being
written (the recording activity retries until it is), and a client polling with ``after`` picks it up next time
instead of moving its cursor past it. Once the workflow has closed nothing more can arrive, and a page runs past
a hole left by a cancelled recording.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from quantapilot.events.envelope import aware
from quantapilot.events.record import EventRecord, values_of
from quantapilot.events.table import RunEvent

EVENTS_PAGE = 500
SEQ_COLUMN_MAX = 2**31 - 1  # run_events.seq is an INTEGER column
_EVENTS: Table = RunEvent.__table__  # type: ignore[attr-defined]


def add_event(session: Session, event: EventRecord) -> bool:
    """Add an event to the session's transaction (not committed); a redo with the same id adds nothing.

    One Core ``INSERT ... ON CONFLICT (id) DO NOTHING RETURNING id``: no ORM object, no identity-map lookup and
    no unit-of-work flush (together about half of a stored event's CPU time before). Only the primary key is the
    conflict target, so a different event holding the same ``(run_id, seq)`` still raises; and a concurrent
    attempt of the same recording is waited for and then skipped (PostgreSQL checks the target index first, SQLite
    serialises writers).

    Returns:
        True when the event was added (the caller commits it, with whatever else belongs to the same transaction).

    Raises:
        IntegrityError: Another event holds the same ``(run_id, seq)``: the workflow's history disagrees with the
            log, which must never happen silently.
    """
    insert_fn = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert_fn(_EVENTS).on_conflict_do_nothing(index_elements=["id"]).returning(_EVENTS.c.id)
    try:
        added = session.execute(statement, values_of(event)).first()
    except IntegrityError:
        session.rollback()
        if session.get(RunEvent, event.id) is None:
            raise
        return False  # a concurrent attempt of the same recording got there first
    return added is not None


def last_event_at(session: Session, *, run_id: str, event_type: str, before_seq: int) -> datetime | None:
    """When the run's latest event of ``event_type`` before ``before_seq`` was created, if there is one."""
    return session.exec(
        select(RunEvent.created_at)
        .where(RunEvent.run_id == run_id, RunEvent.type == event_type, RunEvent.seq < before_seq)
        .order_by(col(RunEvent.seq).desc())
        .limit(1)
    ).first()


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


def stream_times(engine: Engine, *, workspace: str, stream_ids: Sequence[str]) -> dict[str, tuple[datetime, datetime]]:
    """When each stream's first and latest event were created (streams without events are left out).

    Args:
        engine: The service database.
        workspace: The streams' workspace.
        stream_ids: Run ids (one page of a run listing).
    """
    if not stream_ids:
        return {}
    created = col(RunEvent.created_at)
    with Session(engine) as session:
        rows = session.exec(
            select(RunEvent.run_id, func.min(created), func.max(created))
            .where(RunEvent.workspace == workspace, col(RunEvent.run_id).in_(list(stream_ids)))
            .group_by(col(RunEvent.run_id))
        ).all()
    return {run_id: (aware(first), aware(last)) for run_id, first, last in rows}


def up_to_first_gap(rows: list[RunEvent], after: int) -> tuple[list[RunEvent], bool]:
    """The rows that follow ``after`` without a missing sequence number, and whether one cut the page short."""
    for index, row in enumerate(rows):
        if row.seq != after + 1 + index:
            return rows[:index], True
    return rows, False


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
