"""Storing an event with its outbox deliveries on one Core connection (store_outbox_event), on SQLite and PostgreSQL.

One due delivery per matching enabled endpoint, written with the event or not at all: a redo adds nothing, a
different event at the same seq raises and leaves nothing, and an endpoint changed by another transaction counts
for the next event.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from activities.events import store_event_with_deliveries
from quantapilot.db import session_scope
from quantapilot.events.record import EventRecord
from quantapilot.events.table import RunEvent
from quantapilot.models import RunKind
from quantapilot.webhooks import endpoints
from quantapilot.webhooks.contracts import is_outbox_owner
from quantapilot.webhooks.fanout import fan_out_run_event
from quantapilot.webhooks.outbox_store import StoredEvent, store_outbox_event
from quantapilot.webhooks.tables import WebhookDelivery
from tests.webhooks.support import create_endpoint_row

REPO = "https://git.example.com/acme/app.git"


def _event(run_id: str, seq: int, *, event_type: str = "run.started", data: dict | None = None) -> EventRecord:
    return EventRecord(
        id=f"evt_{uuid.uuid4().hex}",
        run_id=run_id,
        workspace="ws1",
        run_kind=RunKind.REPOSITORY,
        seq=seq,
        type=event_type,
        correlation_id="corr-1",
        created_at=datetime(2026, 12, 7, 1, 2, 3, tzinfo=UTC),
        data={"repo_url": REPO} if data is None else data,
        trace_id="0" * 32,
    )


def _deliveries(engine: Engine, event_id: str | None = None) -> list[WebhookDelivery]:
    with Session(engine) as session:
        query = select(WebhookDelivery).order_by(col(WebhookDelivery.endpoint_id))
        if event_id is not None:
            query = query.where(WebhookDelivery.event_id == event_id)
        return list(session.exec(query))


def _endpoint_set(engine: Engine) -> dict[str, str]:
    """Endpoints of every kind a stored event meets: matching or not, enabled or not, filtered or not."""
    ids = {
        "all": create_endpoint_row(engine)[0],
        "typed": create_endpoint_row(engine, event_types=["run.started", "gate.decided"])[0],
        "other_type": create_endpoint_row(engine, event_types=["run.completed"])[0],
        "kind": create_endpoint_row(engine, run_kinds=["repository"])[0],
        "other_kind": create_endpoint_row(engine, run_kinds=["lifecycle"])[0],
        "repo": create_endpoint_row(engine, repositories=[REPO])[0],
        "other_repo": create_endpoint_row(engine, repositories=["https://git.example.com/acme/other.git"])[0],
        "disabled": create_endpoint_row(engine)[0],
        "other_workspace": create_endpoint_row(engine, workspace="ws2")[0],
    }
    with session_scope(engine) as session:
        endpoints.update_endpoint(ids["disabled"], session=session, workspace="ws1", enabled=False)
    return ids


def test_outbox_store_makes_one_due_delivery_per_matching_enabled_endpoint(db_engine: Engine) -> None:
    ids = _endpoint_set(db_engine)
    started = _event("run-1", 1)
    assert store_outbox_event(db_engine, started) == StoredEvent(4)
    # A later event of the run: its repository comes from run.started's data.
    later = _event("run-1", 2, event_type="gate.decided", data={})
    assert store_outbox_event(db_engine, later) == StoredEvent(4)
    wanted = sorted(ids[name] for name in ("all", "typed", "kind", "repo"))
    for event in (started, later):
        rows = _deliveries(db_engine, event.id)
        assert sorted(r.endpoint_id for r in rows) == wanted
        for row in rows:
            assert row.status == "pending" and row.attempts == 0 and row.schedule_base == 0
            assert row.workspace == "ws1" and row.run_id == "run-1" and row.event_type == event.type
            assert row.workflow_id is not None and is_outbox_owner(row.workflow_id) and row.workflow_id.endswith(row.id)
            assert row.next_attempt_at is not None and row.payload is None
            assert row.claim_token is None and row.claimed_until is None
    with Session(db_engine) as session:
        assert session.get(RunEvent, started.id) is not None


def test_outbox_store_delivers_to_the_endpoints_the_orm_fan_out_picks(db_engine: Engine) -> None:
    _endpoint_set(db_engine)
    ours, theirs = _event("run-a", 1), _event("run-b", 1)
    store_outbox_event(db_engine, ours)
    with session_scope(db_engine) as session:
        session.add(RunEvent(**ours.model_dump() | {"id": theirs.id, "run_id": "run-b"}))
        session.flush()
        fan_out_run_event(session, theirs, outbox=True)

    def shape(event_id: str) -> list[tuple[str, str, str | None, bool]]:
        return [
            (r.endpoint_id, r.status, r.event_type, is_outbox_owner(r.workflow_id))
            for r in _deliveries(db_engine, event_id)
        ]

    assert shape(ours.id) == shape(theirs.id) != []


def test_outbox_store_sees_an_endpoint_changed_in_another_transaction_for_the_next_event(db_engine: Engine) -> None:
    first_id = create_endpoint_row(db_engine)[0]
    first = _event("run-c", 1)
    assert store_outbox_event(db_engine, first) == StoredEvent(1)
    # Another transaction disables the first endpoint and adds a second, between two events of the run.
    second_id = create_endpoint_row(db_engine)[0]
    with session_scope(db_engine) as session:
        endpoints.update_endpoint(first_id, session=session, workspace="ws1", enabled=False)
    second = _event("run-c", 2, event_type="gate.decided", data={})
    assert store_outbox_event(db_engine, second) == StoredEvent(1)
    assert [r.endpoint_id for r in _deliveries(db_engine, first.id)] == [first_id]
    assert [r.endpoint_id for r in _deliveries(db_engine, second.id)] == [second_id]


def test_outbox_store_redo_adds_nothing(db_engine: Engine) -> None:
    create_endpoint_row(db_engine)
    create_endpoint_row(db_engine)
    event = _event("run-d", 1)
    assert store_event_with_deliveries(db_engine, event, outbox=True) == (True, [])
    before = [(r.id, r.endpoint_id) for r in _deliveries(db_engine)]
    assert len(before) == 2
    assert store_outbox_event(db_engine, event) is None
    assert store_event_with_deliveries(db_engine, event, outbox=True) == (False, [])
    assert [(r.id, r.endpoint_id) for r in _deliveries(db_engine)] == before


def test_outbox_store_seq_conflict_raises_and_leaves_nothing(db_engine: Engine) -> None:
    create_endpoint_row(db_engine)
    first, other = _event("run-e", 1), _event("run-e", 1)
    assert store_outbox_event(db_engine, first) == StoredEvent(1)
    with pytest.raises(IntegrityError):
        store_outbox_event(db_engine, other)
    with pytest.raises(IntegrityError):
        store_event_with_deliveries(db_engine, other, outbox=True)
    with Session(db_engine) as session:
        assert session.exec(select(RunEvent.id).where(RunEvent.run_id == "run-e")).all() == [first.id]
    assert _deliveries(db_engine, other.id) == []
    assert [r.event_id for r in _deliveries(db_engine)] == [first.id]
