"""Fan-out of stored run events: each filter admits exactly its events, and the delivery rows are complete.

Through :func:`activities.events.store_event_with_deliveries`, the path every recorded event takes, in both
dispatch modes: the type, run-kind and repository filters (the repository looked up from the run's
``run.started`` for the events that do not carry it), disabled endpoints and other workspaces skipped, one
delivery per endpoint and event.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from activities.events import store_event_with_deliveries
from quantapilot.db import session_scope
from quantapilot.events.record import EventRecord
from quantapilot.models import RunKind
from quantapilot.webhooks import endpoints
from quantapilot.webhooks.contracts import delivery_workflow_id, outbox_owner
from quantapilot.webhooks.fanout import fan_out_run_event
from quantapilot.webhooks.starts import PendingDelivery
from quantapilot.webhooks.tables import WebhookDelivery
from tests.webhooks.support import create_endpoint_row

WANTED = "https://git.example.com/org/wanted"
OTHER = "https://git.example.com/org/other"


def _event(run_id: str, seq: int, event_type: str, *, kind: RunKind, **data: Any) -> EventRecord:
    return EventRecord(
        id=f"evt_{uuid.uuid4().hex}",
        run_id=run_id,
        workspace="ws1",
        run_kind=kind,
        seq=seq,
        type=event_type,
        created_at=datetime(2026, 12, 7, 2, 0, seq, tzinfo=UTC),
        data={"run_id": run_id, **data},
    )


def _endpoints(engine: Engine) -> dict[str, str]:
    """One endpoint per filter (and a disabled one, and another workspace's), by a readable name."""
    ids = {
        "all": create_endpoint_row(engine)[0],
        "gate_only": create_endpoint_row(engine, event_types=["gate_requested"])[0],
        "lifecycle": create_endpoint_row(engine, run_kinds=["lifecycle"])[0],
        "repository_kind": create_endpoint_row(engine, run_kinds=["repository"])[0],
        # Spelled differently from the run's URL: matching normalises both.
        "wanted": create_endpoint_row(engine, repositories=[WANTED.upper() + ".git"])[0],
        "other_repo": create_endpoint_row(engine, repositories=[OTHER])[0],
        "wanted_gate": create_endpoint_row(engine, event_types=["gate.requested"], repositories=[WANTED])[0],
        "disabled": create_endpoint_row(engine)[0],
        "other_workspace": create_endpoint_row(engine, workspace="ws2")[0],
    }
    with session_scope(engine) as session:
        endpoints.update_endpoint(ids["disabled"], session=session, workspace="ws1", enabled=False)
    return ids


def _delivered(engine: Engine, names: dict[str, str], event: EventRecord) -> set[str]:
    by_id = {v: k for k, v in names.items()}
    with Session(engine) as session:
        rows = session.exec(select(WebhookDelivery.endpoint_id).where(WebhookDelivery.event_id == event.id)).all()
    assert len(rows) == len(set(rows)), "one delivery per endpoint and event"
    return {by_id[r] for r in rows}


@pytest.mark.parametrize("outbox", [True, False], ids=["outbox", "workflow"])
def test_fanout_filters_admit_exactly_their_events(db_engine: Engine, outbox: bool) -> None:
    names = _endpoints(db_engine)
    started = _event("run-r", 1, "run.started", kind=RunKind.REPOSITORY, repo_url=WANTED)
    # The run's later events do not carry its repository: the repository filters still see it.
    gate = _event("run-r", 2, "gate.requested", kind=RunKind.REPOSITORY)
    done = _event("run-r", 3, "run.completed", kind=RunKind.REPOSITORY)
    elsewhere = _event("run-o", 1, "run.started", kind=RunKind.REPOSITORY, repo_url=OTHER + ".git")
    elsewhere_gate = _event("run-o", 2, "gate.requested", kind=RunKind.REPOSITORY)
    lifecycle = _event("run-l", 1, "run.started", kind=RunKind.LIFECYCLE)
    lifecycle_gate = _event("run-l", 2, "gate.requested", kind=RunKind.LIFECYCLE)
    expected = [
        (started, {"all", "repository_kind", "wanted"}),
        (gate, {"all", "gate_only", "repository_kind", "wanted", "wanted_gate"}),
        (done, {"all", "repository_kind", "wanted"}),
        (elsewhere, {"all", "repository_kind", "other_repo"}),
        (elsewhere_gate, {"all", "gate_only", "repository_kind", "other_repo"}),
        # A repository filter admits no lifecycle run (it has no repository).
        (lifecycle, {"all", "lifecycle"}),
        (lifecycle_gate, {"all", "gate_only", "lifecycle"}),
    ]
    for event, _want in expected:
        inserted, _pending = store_event_with_deliveries(db_engine, event, outbox=outbox)
        assert inserted
    got = {f"{e.type}@{e.run_id}": _delivered(db_engine, names, e) for e, _want in expected}
    assert got == {f"{e.type}@{e.run_id}": want for e, want in expected}


def test_fanout_repository_unknown_before_run_started_is_stored(db_engine: Engine) -> None:
    # An event stored before its run's run.started (two recordings on their way at once): no repository is
    # known yet, so a repository filter does not admit it; the later events see the repository.
    names = _endpoints(db_engine)
    early = _event("run-e", 2, "gate.requested", kind=RunKind.REPOSITORY)
    started = _event("run-e", 1, "run.started", kind=RunKind.REPOSITORY, repo_url=WANTED)
    later = _event("run-e", 3, "gate.requested", kind=RunKind.REPOSITORY)
    for event in (early, started, later):
        store_event_with_deliveries(db_engine, event, outbox=True)
    assert _delivered(db_engine, names, early) == {"all", "gate_only", "repository_kind"}
    assert _delivered(db_engine, names, later) == {"all", "gate_only", "repository_kind", "wanted", "wanted_gate"}


@pytest.mark.parametrize("outbox", [True, False], ids=["outbox", "workflow"])
def test_fanout_delivery_rows_hold_every_column(db_engine: Engine, outbox: bool) -> None:
    endpoint_id, _ = create_endpoint_row(db_engine)
    event = _event("run-c", 1, "run_started", kind=RunKind.REPOSITORY, repo_url=WANTED)
    inserted, pending = store_event_with_deliveries(db_engine, event, outbox=outbox)
    assert inserted
    with Session(db_engine) as session:
        row = session.exec(select(WebhookDelivery)).one()
    assert row.workflow_id == (outbox_owner(row.id) if outbox else delivery_workflow_id(row.id))
    assert pending == ([] if outbox else [PendingDelivery(row.id, delivery_workflow_id(row.id))])
    assert row.created_at is not None
    assert (row.next_attempt_at is not None) == outbox
    assert row.model_dump(exclude={"id", "workflow_id", "created_at", "next_attempt_at"}) == {
        "endpoint_id": endpoint_id,
        "workspace": "ws1",
        "event_id": event.id,
        # Stored in the dotted spelling, whatever alias the event used.
        "event_type": "run.started",
        "run_id": "run-c",
        "status": "pending",
        "attempts": 0,
        "last_status_code": None,
        "last_latency_ms": None,
        "last_error": None,
        "next_retry_at": None,
        "delivered_at": None,
        "payload": None,
        "claim_token": None,
        "claimed_until": None,
        "schedule_base": 0,
    }
    # A redo of the event creates nothing more and reports the same pending deliveries.
    assert store_event_with_deliveries(db_engine, event, outbox=outbox) == (False, pending)


@pytest.mark.parametrize("outbox", [True, False], ids=["outbox", "workflow"])
def test_fanout_twice_creates_each_delivery_once(db_engine: Engine, outbox: bool) -> None:
    create_endpoint_row(db_engine)
    create_endpoint_row(db_engine)
    event = _event("run-t", 1, "run.started", kind=RunKind.REPOSITORY, repo_url=WANTED)
    with session_scope(db_engine) as session:
        assert fan_out_run_event(session, event, outbox=outbox) == 2
        assert fan_out_run_event(session, event, outbox=outbox) == 0
    with Session(db_engine) as session:
        ids = session.exec(select(col(WebhookDelivery.id))).all()
    assert len(ids) == 2
