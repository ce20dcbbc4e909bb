"""The outbox's claims: one claim holds a delivery until its lease runs out, and a stale claim records nothing."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import select

from quantapilot.db import session_scope, utcnow
from quantapilot.webhooks.contracts import is_outbox_owner
from quantapilot.webhooks.fanout import fan_out
from quantapilot.webhooks.outbox import claim_due, release_claims
from quantapilot.webhooks.outbox_record import record_results
from quantapilot.webhooks.tables import DeliveryOutcome, DeliveryResult, WebhookAttempt, WebhookDelivery
from tests.webhooks.support import KEYS, create_endpoint_row

LEASE_S = 60.0
PAYLOAD = {
    "id": "evt_outbox",
    "type": "webhook.endpoint_disabled",
    "created_at": "2024-03-01T12:00:00Z",
    "workspace": "ws1",
    "data": {},
}


def _one_delivery(engine: Engine) -> str:
    create_endpoint_row(engine)
    with session_scope(engine) as session:
        created = fan_out(
            session,
            workspace="ws1",
            event_type="webhook.endpoint_disabled",
            event_id="evt_outbox",
            payload=PAYLOAD,
            outbox=True,
        )
        assert created == 1
        row = session.exec(select(WebhookDelivery)).one()
        assert is_outbox_owner(row.workflow_id) and row.next_attempt_at is not None
        return row.id


def _claim(engine: Engine, token: str, *, later_s: float = 0.0) -> list[str]:
    with session_scope(engine) as session:
        batch = claim_due(
            session=session,
            token=token,
            now=utcnow() + timedelta(seconds=later_s),
            lease_s=LEASE_S,
            limit=10,
            keyring=KEYS,
            retry_scale=1.0,
            timeout_s=10.0,
        )
        return [c.delivery_id for c in batch.sends]


def test_outbox_claim_holds_until_the_lease_runs_out(db_engine: Engine) -> None:
    delivery_id = _one_delivery(db_engine)
    assert _claim(db_engine, "a") == [delivery_id]
    # Held: a second dispatcher gets nothing, now or just before the lease ends.
    assert _claim(db_engine, "b") == []
    assert _claim(db_engine, "b", later_s=LEASE_S - 5) == []
    # A dispatcher killed mid-batch: after the lease another one takes the delivery over.
    assert _claim(db_engine, "b", later_s=LEASE_S + 1) == [delivery_id]


def test_outbox_stale_claim_records_nothing(db_engine: Engine) -> None:
    delivery_id = _one_delivery(db_engine)
    with session_scope(db_engine) as session:
        stale = claim_due(
            session=session,
            token="a",
            now=utcnow(),
            lease_s=LEASE_S,
            limit=10,
            keyring=KEYS,
            retry_scale=1.0,
            timeout_s=10.0,
        ).sends[0]
    assert _claim(db_engine, "b", later_s=LEASE_S + 1) == [delivery_id]
    ok = DeliveryResult(outcome=DeliveryOutcome.DELIVERED, status_code=204, latency_ms=1.0)
    with session_scope(db_engine) as session:
        assert record_results(session=session, results=[(stale, ok)], now=utcnow()) == []
    with session_scope(db_engine) as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None
        assert (row.status, row.attempts, row.claim_token) == ("pending", 0, "b")
        assert session.exec(select(WebhookAttempt)).all() == []


def test_outbox_released_claim_is_due_again_at_once(db_engine: Engine) -> None:
    delivery_id = _one_delivery(db_engine)
    assert _claim(db_engine, "a") == [delivery_id]
    with session_scope(db_engine) as session:
        release_claims(session=session, claims=[(delivery_id, "other"), (delivery_id, "a")])
    assert _claim(db_engine, "b") == [delivery_id]
