"""Storing an event (add_event, one Core insert): a redo adds nothing, a different event at the same seq raises."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from activities.events import store_event_with_deliveries
from quantapilot.events.log import add_event, read_events
from quantapilot.events.record import EventRecord, record_of
from quantapilot.events.table import RunEvent
from quantapilot.models import RunKind


def _event(run_id: str, seq: int) -> EventRecord:
    return EventRecord(
        id=f"evt_{uuid.uuid4().hex}",
        run_id=run_id,
        workspace="default",
        run_kind=RunKind.REPOSITORY,
        seq=seq,
        type="run.started",
        correlation_id="corr-1",
        created_at=datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=UTC),
        data={"repo_url": "file:///r", "nested": {"n": [1, 2]}},
        trace_id="0" * 32,
    )


def test_add_event_stores_the_record_and_a_redo_adds_nothing(db_engine: Engine) -> None:
    event = _event("run-a", 1)
    assert store_event_with_deliveries(db_engine, event, outbox=True) == (True, [])
    assert store_event_with_deliveries(db_engine, event, outbox=True) == (False, [])
    rows = read_events(db_engine, workspace="default", stream_id="run-a", after=0)
    assert [record_of(row) for row in rows] == [event]


def test_add_event_refuses_another_event_at_the_same_seq(db_engine: Engine) -> None:
    first, other = _event("run-b", 1), _event("run-b", 1)
    with Session(db_engine) as session:
        assert add_event(session, first)
        session.commit()
    with Session(db_engine) as session, pytest.raises(IntegrityError):
        add_event(session, other)
    with Session(db_engine) as session:
        assert session.exec(select(RunEvent.id).where(RunEvent.run_id == "run-b")).all() == [first.id]
