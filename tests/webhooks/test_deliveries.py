"""Delivery rows (created once per event and endpoint, the own-event record) on real SQLite and PostgreSQL."""

from __future__ import annotations

import threading

from sqlalchemy.engine import Engine
from sqlmodel import Session

from quantapilot.db import session_scope
from quantapilot.webhooks import deliveries, endpoints
from quantapilot.webhooks import delivery as delivery_state
from quantapilot.webhooks.tables import DeliveryStatus
from tests.webhooks.support import T0, create_endpoint_row


def test_deliveries_ensure_delivery_is_idempotent(db_engine: Engine) -> None:
    endpoint_id, _ = create_endpoint_row(db_engine)
    with session_scope(db_engine) as session:
        endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
        first, created = deliveries.ensure_delivery(
            session=session, endpoint=endpoint, event_id="ev_1", event_type="run_started", run_id="run_1", now=T0
        )
        again, created_again = deliveries.ensure_delivery(
            session=session, endpoint=endpoint, event_id="ev_1", event_type="run.started", run_id="run_1"
        )
    assert created
    assert not created_again
    assert again.id == first.id
    assert first.id.startswith("wd_")
    assert first.status == DeliveryStatus.PENDING
    assert first.event_type == "run.started"
    assert first.workspace == "ws1"
    with Session(db_engine) as session:
        [only] = deliveries.list_deliveries(endpoint_id, session=session, workspace="ws1")
    assert only.id == first.id
    assert only.created_at == T0


def test_deliveries_ensure_delivery_concurrent_creates_once(db_engine: Engine) -> None:
    endpoint_id, _ = create_endpoint_row(db_engine)
    barrier = threading.Barrier(4)
    outcomes: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with session_scope(db_engine) as session:
                endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
                barrier.wait(timeout=10)
                delivery, created = deliveries.ensure_delivery(
                    session=session, endpoint=endpoint, event_id="ev_race", event_type="run.failed"
                )
                outcomes.append((delivery.id, created))
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(outcomes) == 4
    assert len({delivery_id for delivery_id, _ in outcomes}) == 1
    assert sum(created for _, created in outcomes) == 1


def test_deliveries_record_own_event_keeps_it_unsent_once(db_engine: Engine) -> None:
    endpoint_id, _ = create_endpoint_row(db_engine, event_types=["run.started"])
    payload = {"id": "evt_off", "type": "webhook.endpoint_disabled", "data": {"reason": "gone"}}
    with session_scope(db_engine) as session:
        endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
        delivery_state.disable_endpoint(endpoint_id, session=session, reason=delivery_state.DISABLED_GONE, now=T0)
        first = deliveries.record_own_event(
            endpoint,
            session=session,
            event_id="evt_off",
            event_type="webhook_endpoint_disabled",
            payload=payload,
            now=T0,
        )
        # An activity retried after a crash records nothing twice and does not reopen the row.
        again = deliveries.record_own_event(
            endpoint, session=session, event_id="evt_off", event_type="webhook.endpoint_disabled", payload={}, now=T0
        )
        assert again.id == first.id
    with Session(db_engine) as session:
        (row,) = deliveries.list_deliveries(endpoint_id, session=session, workspace="ws1")
        assert (row.event_type, row.status, row.attempts, row.run_id) == (
            "webhook.endpoint_disabled",
            DeliveryStatus.DISABLED,
            0,
            None,
        )
        assert row.payload == payload and row.workflow_id is None and row.created_at == T0
