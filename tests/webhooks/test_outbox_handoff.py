"""Deliveries stored already claimed for this process's dispatcher (store_outbox_event with a Lease).

The claim is written in the event's own transaction on the deliveries of healthy endpoints only; it holds against
any other claim until the lease runs out, and then the rows are claimed like any left by a dead dispatcher (the
crash cover). Every other delivery is stored unclaimed, for the claim loop. On SQLite and PostgreSQL (db_engine).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from quantapilot.db import session_scope, utcnow
from quantapilot.events.envelope import aware
from quantapilot.events.record import EventRecord
from quantapilot.models import RunKind
from quantapilot.secretbox import KeyRing
from quantapilot.webhooks import endpoints
from quantapilot.webhooks.outbox import claim_due
from quantapilot.webhooks.outbox_store import Lease, store_outbox_event
from quantapilot.webhooks.rotation import active_secrets, rotate_secret
from quantapilot.webhooks.tables import WebhookDelivery, WebhookEndpoint
from tests.webhooks.support import KEYS, URL, create_endpoint_row

LEASE_S = 60.0


def _event(run_id: str = "run-h", seq: int = 1) -> EventRecord:
    return EventRecord(
        id=f"evt_{uuid.uuid4().hex}",
        run_id=run_id,
        workspace="ws1",
        run_kind=RunKind.REPOSITORY,
        seq=seq,
        type="run.started",
        correlation_id="corr-1",
        created_at=datetime(2026, 12, 7, 1, 2, 3, tzinfo=UTC),
        data={"repo_url": "https://git.example.com/acme/app.git"},
    )


def _lease(*, limit: int = 100, exclude: frozenset[str] = frozenset(), keyring: KeyRing = KEYS) -> Lease:
    return Lease(
        token=uuid.uuid4().hex,
        until=utcnow() + timedelta(seconds=LEASE_S),
        started=time.monotonic(),
        keyring=keyring,
        limit=limit,
        exclude=exclude,
    )


def _rows(engine: Engine) -> dict[str, WebhookDelivery]:
    with Session(engine) as session:
        return {r.endpoint_id: r for r in session.exec(select(WebhookDelivery))}


def _claim(engine: Engine, *, later_s: float = 0.0, failing: bool = False) -> set[str]:
    with session_scope(engine) as session:
        batch = claim_due(
            session=session,
            token=uuid.uuid4().hex,
            now=utcnow() + timedelta(seconds=later_s),
            lease_s=10 * LEASE_S,  # these claims outlast the handed one's
            limit=100,
            keyring=KEYS,
            retry_scale=1.0,
            timeout_s=10.0,
            failing=failing,
        )
        return {c.endpoint_id for c in batch.sends}


def test_outbox_handoff_claims_healthy_endpoints_deliveries_in_the_events_transaction(db_engine: Engine) -> None:
    healthy, secret = create_endpoint_row(db_engine)
    failing = create_endpoint_row(db_engine)[0]
    throttled = create_endpoint_row(db_engine)[0]
    excluded = create_endpoint_row(db_engine)[0]
    with session_scope(db_engine) as session:
        failing_row = session.get(WebhookEndpoint, failing)
        throttled_row = session.get(WebhookEndpoint, throttled)
        assert failing_row is not None and throttled_row is not None
        failing_row.failing_since = utcnow() - timedelta(seconds=1)
        throttled_row.throttled_until = utcnow() + timedelta(hours=1)
        session.add_all([failing_row, throttled_row])
    lease = _lease(exclude=frozenset({excluded}))
    stored = store_outbox_event(db_engine, _event(), lease=lease)
    assert stored is not None and stored.created == 4
    assert [(h.endpoint_id, h.url, h.secrets) for h in stored.handed] == [(healthy, URL, [secret])]
    assert sorted(stored.left) == sorted([failing, throttled, excluded])
    rows = _rows(db_engine)
    assert rows[healthy].id == stored.handed[0].delivery_id
    assert rows[healthy].claim_token == lease.token
    until = rows[healthy].claimed_until
    assert until is not None and abs((aware(until) - lease.until).total_seconds()) < 0.001
    for other in (failing, throttled, excluded):
        assert rows[other].claim_token is None and rows[other].claimed_until is None
        assert rows[other].next_attempt_at is not None  # due, for the claim loop
    # Another dispatcher's claims take every other delivery, never the handed one while its lease holds...
    assert _claim(db_engine) == {excluded}
    assert _claim(db_engine, failing=True) == {failing}
    assert _claim(db_engine, later_s=LEASE_S / 2) == set()
    # ... and once it has run out (its process died before sending), the handed one is claimed like any other.
    assert _claim(db_engine, later_s=LEASE_S + 1) == {healthy}


def test_outbox_handoff_signs_with_every_active_secret_newest_first(db_engine: Engine) -> None:
    endpoint_id, _secret = create_endpoint_row(db_engine)
    with session_scope(db_engine) as session:
        rotate_secret(endpoint_id, session=session, workspace="ws1", overlap=timedelta(hours=1), keyring=KEYS)
        wanted = active_secrets(endpoint_id, session=session, keyring=KEYS)
    assert len(wanted) == 2
    stored = store_outbox_event(db_engine, _event(), lease=_lease())
    assert stored is not None and [h.secrets for h in stored.handed] == [wanted]


def test_outbox_handoff_leaves_what_it_cannot_prepare_to_the_claim_loop(db_engine: Engine) -> None:
    first = create_endpoint_row(db_engine)[0]
    second = create_endpoint_row(db_engine)[0]
    # A limit of one: the dispatcher had one free slot; the second endpoint's delivery waits, due and unclaimed.
    stored = store_outbox_event(db_engine, _event("run-l"), lease=_lease(limit=1))
    assert stored is not None and stored.created == 2 and len(stored.handed) == 1
    [taken] = [h.endpoint_id for h in stored.handed]
    [left] = {first, second} - {taken}
    assert _rows(db_engine)[left].claim_token is None
    # A key that opens no secret: nothing handed; the claim loop's prepare_attempt decides (fails and disables).
    stranger = KeyRing([bytes(range(1, 33))])
    stored = store_outbox_event(db_engine, _event("run-k"), lease=_lease(keyring=stranger))
    assert stored is not None and stored.created == 2 and stored.handed == []
    assert sorted(stored.left) == sorted([first, second])


def test_outbox_handoff_redo_hands_nothing(db_engine: Engine) -> None:
    create_endpoint_row(db_engine)
    event = _event("run-r")
    first = store_outbox_event(db_engine, event, lease=_lease())
    assert first is not None and len(first.handed) == 1
    assert store_outbox_event(db_engine, event, lease=_lease()) is None
    assert len(_rows(db_engine)) == 1


def test_outbox_handoff_skips_disabled_endpoints(db_engine: Engine) -> None:
    endpoint_id = create_endpoint_row(db_engine)[0]
    with session_scope(db_engine) as session:
        endpoints.update_endpoint(endpoint_id, session=session, workspace="ws1", enabled=False)
    stored = store_outbox_event(db_engine, _event("run-d"), lease=_lease())
    assert stored is not None and stored.created == 0 and stored.handed == []
