"""Claiming from the outbox honours its limit, on SQLite and on PostgreSQL.

The limit is what bounds a dispatcher (``QP_WEBHOOK_DISPATCH_INFLIGHT``, a claim batch) and what lets a second
dispatcher share the work. On PostgreSQL a claim written as ``UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE
SKIP LOCKED)`` was planned as a nested-loop semi-join on a young table: the subquery ran again for every row, each
time skipping the rows the statement had just claimed, and one claim of 6 took all 90 due rows.
"""

from __future__ import annotations

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from activities.events import store_event_with_deliveries
from quantapilot.db import session_scope, utcnow
from quantapilot.secretbox import KeyRing, generate_key, parse_key
from quantapilot.webhooks.endpoints import create_endpoint as store_endpoint
from quantapilot.webhooks.outbox import claim_due
from quantapilot.webhooks.tables import WebhookDelivery, WebhookEndpoint
from tests.webhook_e2e.support import event_records

KEYRING = KeyRing([parse_key(generate_key(), source="test")])


def _outbox(engine: Engine, *, endpoints: int, events: int) -> None:
    with session_scope(engine) as session:
        for n in range(endpoints):
            store_endpoint(
                session=session,
                workspace="default",
                url=f"http://127.0.0.1:9/e{n}",
                keyring=KEYRING,
                allow_private=True,
            )
    for event in event_records(events, prefix="claims"):
        store_event_with_deliveries(engine, event, outbox=True)


def _claim(engine: Engine, token: str, limit: int, *, failing: bool = False) -> list[str]:
    with session_scope(engine) as session:
        batch = claim_due(
            session=session,
            token=token,
            now=utcnow(),
            lease_s=60.0,
            limit=limit,
            keyring=KEYRING,
            retry_scale=1.0,
            timeout_s=1.0,
            failing=failing,
        )
        assert batch.settled == []
        return [c.delivery_id for c in batch.sends]


def _held(engine: Engine, token: str) -> int:
    with Session(engine) as session:
        return int(
            session.exec(
                select(func.count()).select_from(WebhookDelivery).where(col(WebhookDelivery.claim_token) == token)
            ).one()
        )


def test_webhooks_outbox_claim_takes_at_most_its_limit(db_engine: Engine) -> None:
    _outbox(db_engine, endpoints=3, events=30)
    claimed: list[str] = []
    for turn in range(3):
        token = f"claim-{turn}"
        ids = _claim(db_engine, token, 6)
        # Exactly the limit, in the answer and in the database (no row claimed without being handed out).
        assert len(ids) == 6
        assert _held(db_engine, token) == 6
        claimed += ids
    assert len(set(claimed)) == 18  # successive claims never take a row twice
    assert len(_claim(db_engine, "rest", 1000)) == 90 - 18


def test_webhooks_outbox_failing_claim_takes_one_per_endpoint_within_its_limit(db_engine: Engine) -> None:
    _outbox(db_engine, endpoints=3, events=10)
    with session_scope(db_engine) as session:
        for endpoint in session.exec(select(WebhookEndpoint)).all():
            endpoint.failing_since = utcnow()
            session.add(endpoint)
    ids = _claim(db_engine, "failing-2", 2, failing=True)
    assert len(ids) == 2
    assert _held(db_engine, "failing-2") == 2
    with Session(db_engine) as session:
        rows = session.exec(select(WebhookDelivery).where(col(WebhookDelivery.id).in_(ids))).all()
    assert len({r.endpoint_id for r in rows}) == 2  # a failing endpoint is probed one delivery at a time


def test_outbox_store_hands_no_delivery_to_workflows_and_a_redo_still_finds_them(db_engine: Engine) -> None:
    with session_scope(db_engine) as session:
        for n in range(2):
            store_endpoint(
                session=session,
                workspace="default",
                url=f"http://127.0.0.1:9/s{n}",
                keyring=KEYRING,
                allow_private=True,
            )
    outboxed, by_workflow = event_records(2, prefix="store")
    # The outbox mode: the event's two deliveries are in the outbox, none for a workflow to start.
    assert store_event_with_deliveries(db_engine, outboxed, outbox=True) == (True, [])
    with Session(db_engine) as session:
        rows = session.exec(select(WebhookDelivery).where(WebhookDelivery.event_id == outboxed.id)).all()
    assert len(rows) == 2 and all(r.next_attempt_at is not None for r in rows)
    # A first attempt in the workflow mode, then its redo in the outbox mode: the redo inserts nothing and still
    # hands back the deliveries whose workflows the first attempt may not have started.
    inserted, pending = store_event_with_deliveries(db_engine, by_workflow, outbox=False)
    assert inserted and len(pending) == 2
    assert store_event_with_deliveries(db_engine, by_workflow, outbox=True) == (False, pending)
