"""Recording run events durably (the run's event log served by ``GET /v1/runs/{id}/events``)."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from temporalio import activity

from activities.models import RECORD_EVENT
from quantapilot.db import RunEvent
from quantapilot.models import EventRecord


def store_event(engine: Engine, event: EventRecord) -> bool:
    """Insert an event once; a redo with the same id (an activity retry) is a no-op.

    Returns:
        True when this call inserted the row.
    """
    row = RunEvent(
        id=event.id,
        run_id=event.run_id,
        workspace=event.workspace,
        run_kind=event.run_kind.value,
        seq=event.seq,
        type=event.type,
        correlation_id=event.correlation_id,
        created_at=event.created_at,
        data=event.data,
    )
    with Session(engine) as session:
        session.add(row)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            existing = session.get(RunEvent, event.id)
            if existing is not None:
                return False
            # Same (run_id, seq) under another id: the workflow's history disagrees with the log, which must
            # never happen silently.
            raise
    return True


class EventActivities:
    """Event activities, built with the database engine.

    Args:
        engine: Database engine holding ``run_events``.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @activity.defn(name=RECORD_EVENT)
    async def record_event(self, event: EventRecord) -> None:
        """Write the event to the run's log (idempotent by event id)."""
        await asyncio.to_thread(store_event, self._engine, event)
