"""Recovery of an endpoint's window (which deliveries, how many, ownership) on real SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from quantapilot.db import session_scope
from quantapilot.webhooks import deliveries, endpoints, recovery
from quantapilot.webhooks.tables import DeliveryStatus, WebhookDelivery, WebhookNotFoundError
from tests.webhooks.support import T0, create_endpoint_row


def _delivery(engine: Engine, endpoint_id: str, event_id: str, status: DeliveryStatus, minutes: int) -> str:
    with session_scope(engine) as session:
        endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
        row, _ = deliveries.ensure_delivery(
            session=session,
            endpoint=endpoint,
            event_id=event_id,
            event_type="run.started",
            now=T0 + timedelta(minutes=minutes),
        )
        row.status = status.value
        row.attempts = 3
        row.workflow_id = f"webhook-delivery/{row.id}"
        session.add(row)
        return row.id


def test_recovery_resends_only_undelivered_rows_of_the_window(db_engine: Engine) -> None:
    endpoint_id, _ = create_endpoint_row(db_engine)
    other_id, _ = create_endpoint_row(db_engine)
    ids = {
        "failed": _delivery(db_engine, endpoint_id, "ev_1", DeliveryStatus.FAILED, 10),
        "gone": _delivery(db_engine, endpoint_id, "ev_2", DeliveryStatus.GONE, 11),
        "disabled": _delivery(db_engine, endpoint_id, "ev_3", DeliveryStatus.DISABLED, 12),
        "delivered": _delivery(db_engine, endpoint_id, "ev_4", DeliveryStatus.DELIVERED, 13),
        "pending": _delivery(db_engine, endpoint_id, "ev_5", DeliveryStatus.PENDING, 14),
        "before": _delivery(db_engine, endpoint_id, "ev_6", DeliveryStatus.FAILED, 5),
        "at_until": _delivery(db_engine, endpoint_id, "ev_7", DeliveryStatus.FAILED, 20),
        "other_endpoint": _delivery(db_engine, other_id, "ev_1", DeliveryStatus.FAILED, 10),
    }
    window = {"since": T0 + timedelta(minutes=10), "until": T0 + timedelta(minutes=20)}

    def _recover(limit: int) -> recovery.Recovery:
        with session_scope(db_engine) as session:
            return recovery.recover(
                endpoint_id, session=session, workspace="ws1", workflow_id=lambda d: f"new/{d}", limit=limit, **window
            )

    # Two per call: the oldest first, and the answer says more are left.
    first = _recover(2)
    assert [r.delivery.id for r in first.redeliveries] == [ids["failed"], ids["gone"]] and first.more
    assert all(r.first_attempt == 4 and r.workflow_id == f"new/{r.delivery.id}" for r in first.redeliveries)
    second = _recover(2)
    assert [r.delivery.id for r in second.redeliveries] == [ids["disabled"]] and not second.more
    assert _recover(2).redeliveries == ()
    with Session(db_engine) as session:
        rows = {row.id: row for row in session.exec(select(WebhookDelivery))}
    for name in ("failed", "gone", "disabled"):
        row = rows[ids[name]]
        assert (row.status, row.workflow_id) == ("pending", f"new/{row.id}"), name
    for name, status in (
        ("delivered", "delivered"),
        ("pending", "pending"),
        ("before", "failed"),
        ("at_until", "failed"),
        ("other_endpoint", "failed"),
    ):
        row = rows[ids[name]]
        assert (row.status, row.workflow_id) == (status, f"webhook-delivery/{row.id}"), name


def test_recovery_refuses_empty_window_unknown_and_disabled_endpoints(db_engine: Engine) -> None:
    endpoint_id, _ = create_endpoint_row(db_engine)
    with session_scope(db_engine) as session:
        with pytest.raises(ValueError, match="until must be after since"):
            recovery.recover(endpoint_id, session=session, workspace="ws1", since=T0, until=T0, workflow_id=str)
        with pytest.raises(WebhookNotFoundError):
            recovery.recover(
                endpoint_id, session=session, workspace="ws2", since=T0, until=T0 + timedelta(1), workflow_id=str
            )
        endpoints.update_endpoint(endpoint_id, session=session, workspace="ws1", enabled=False)
        with pytest.raises(recovery.EndpointDisabledError):
            recovery.recover(
                endpoint_id, session=session, workspace="ws1", since=T0, until=T0 + timedelta(1), workflow_id=str
            )
