"""The outbox's set-based claim and record: a batch mixing every kind of answer records each one as the delivery
state machine decides it, in order per endpoint, and the bulk path is fenced by the claim token like the rest."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from quantapilot.db import session_scope, utcnow
from quantapilot.events.envelope import aware
from quantapilot.secretbox import KeyRing
from quantapilot.webhooks import rotation
from quantapilot.webhooks.delivery import (
    DISABLED_GONE,
    DISABLED_UNDECRYPTABLE,
    SECRET_UNDECRYPTABLE_ERROR,
    prepare_attempt,
    record_outcome,
)
from quantapilot.webhooks.fanout import fan_out
from quantapilot.webhooks.outbox import Claimed, apply_verdict, claim_due
from quantapilot.webhooks.outbox_record import record_results
from quantapilot.webhooks.rotation import active_secrets_of
from quantapilot.webhooks.tables import (
    DeliveryOutcome,
    DeliveryResult,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from tests.webhooks.support import KEYS, create_endpoint_row

LEASE_S = 60.0
OK = DeliveryResult(outcome=DeliveryOutcome.DELIVERED, status_code=204, latency_ms=1.5)
GONE = DeliveryResult(outcome=DeliveryOutcome.GONE, status_code=410, latency_ms=2.0, error="HTTP 410")
BUSY = DeliveryResult(
    outcome=DeliveryOutcome.RETRY, status_code=503, latency_ms=3.0, retry_after_s=30.0, error="HTTP 503"
)
FAILED = DeliveryResult(outcome=DeliveryOutcome.RETRY, status_code=500, latency_ms=4.0, error="HTTP 500")


def _payload(event_id: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": "webhook.endpoint_disabled",
        "created_at": "2024-03-01T12:00:00Z",
        "workspace": "ws1",
        "data": {"n": event_id},
    }


def _endpoints(engine: Engine, count: int) -> list[str]:
    return [create_endpoint_row(engine)[0] for _ in range(count)]


def _events(engine: Engine, count: int) -> None:
    """``count`` events, each delivered to every endpoint of ws1 through the outbox."""
    with session_scope(engine) as session:
        for n in range(count):
            event_id = f"evt_batch_{n}"
            fan_out(
                session,
                workspace="ws1",
                event_type="webhook.endpoint_disabled",
                event_id=event_id,
                payload=_payload(event_id),
                outbox=True,
            )


def _claim(engine: Engine, token: str, *, later_s: float = 0.0) -> list[Claimed]:
    with session_scope(engine) as session:
        batch = claim_due(
            session=session,
            token=token,
            now=utcnow() + timedelta(seconds=later_s),
            lease_s=LEASE_S,
            limit=100,
            keyring=KEYS,
            retry_scale=1.0,
            timeout_s=10.0,
        )
        assert batch.settled == []
        return batch.sends


def _record(engine: Engine, results: list[tuple[Claimed, DeliveryResult]]) -> list[str]:
    with session_scope(engine) as session:
        return [v.result.outcome for v in record_results(session=session, results=results, now=utcnow())]


def _delivery(engine: Engine, delivery_id: str) -> WebhookDelivery:
    with session_scope(engine) as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None
        return row


def _endpoint(engine: Engine, endpoint_id: str) -> WebhookEndpoint:
    with session_scope(engine) as session:
        row = session.get(WebhookEndpoint, endpoint_id)
        assert row is not None
        return row


def _attempts(engine: Engine, delivery_id: str) -> list[tuple[int, str, int | None]]:
    with session_scope(engine) as session:
        rows = session.exec(
            select(WebhookAttempt)
            .where(col(WebhookAttempt.delivery_id) == delivery_id)
            .order_by(col(WebhookAttempt.attempt))
        )
        return [(r.attempt, r.outcome, r.status_code) for r in rows]


def test_outbox_batch_claim_prepares_what_prepare_attempt_would(db_engine: Engine) -> None:
    _endpoints(db_engine, 2)
    _events(db_engine, 3)
    sends = _claim(db_engine, "a")
    assert len(sends) == 6
    with session_scope(db_engine) as session:
        for claimed in sends:
            # The claim's joined loads give exactly what the per-row path prepares (url, secrets, envelope).
            assert prepare_attempt(session, claimed.inp, keyring=KEYS) == claimed.prepared
            assert claimed.inp.attempt == 1 and claimed.inp.schedule_index == 1


def test_outbox_batch_claim_settles_disabled_and_throttled_endpoints_through_the_state_machine(
    db_engine: Engine,
) -> None:
    healthy, disabled, throttled = _endpoints(db_engine, 3)
    _events(db_engine, 1)
    with session_scope(db_engine) as session:
        off = session.get(WebhookEndpoint, disabled)
        slow = session.get(WebhookEndpoint, throttled)
        assert off is not None and slow is not None
        off.enabled = False
        slow.throttled_until = utcnow() + timedelta(seconds=300)
        session.add_all([off, slow])
    with session_scope(db_engine) as session:
        batch = claim_due(
            session=session,
            token="a",
            now=utcnow(),
            lease_s=LEASE_S,
            limit=100,
            keyring=KEYS,
            retry_scale=1.0,
            timeout_s=10.0,
        )
    assert [c.endpoint_id for c in batch.sends] == [healthy]
    assert sorted(v.result.outcome for v in batch.settled) == sorted([DeliveryStatus.DISABLED.value, "throttled"])
    with session_scope(db_engine) as session:
        rows = {r.endpoint_id: r for r in session.exec(select(WebhookDelivery))}
    assert rows[disabled].status == DeliveryStatus.DISABLED.value and rows[disabled].next_attempt_at is None
    throttled_row = rows[throttled]
    assert throttled_row.status == DeliveryStatus.PENDING.value and throttled_row.claim_token is None
    assert throttled_row.next_attempt_at is not None
    assert aware(throttled_row.next_attempt_at) > utcnow() + timedelta(seconds=200)
    assert rows[healthy].claim_token == "a"


def test_outbox_batch_mixing_success_gone_and_retry_after_records_each(db_engine: Engine) -> None:
    ok_endpoint, gone_endpoint, busy_endpoint = _endpoints(db_engine, 3)
    _events(db_engine, 2)
    sends = _claim(db_engine, "a")
    answer = {ok_endpoint: OK, gone_endpoint: GONE, busy_endpoint: BUSY}
    results = [(c, answer[c.endpoint_id]) for c in sends]
    outcomes = _record(db_engine, results)
    assert len(outcomes) == 6
    expected = {ok_endpoint: "delivered", gone_endpoint: "gone", busy_endpoint: "retry"}
    assert outcomes == [expected[c.endpoint_id] for c, _ in results]
    for claimed, result in results:
        row = _delivery(db_engine, claimed.delivery_id)
        assert row.claim_token is None and row.claimed_until is None
        assert row.attempts == 1 and row.last_status_code == result.status_code
        assert _attempts(db_engine, row.id) == [(1, result.outcome.value, result.status_code)]
        if claimed.endpoint_id == ok_endpoint:
            assert (row.status, row.next_attempt_at) == (DeliveryStatus.DELIVERED.value, None)
            assert row.delivered_at is not None and row.last_latency_ms == 1.5
        elif claimed.endpoint_id == gone_endpoint:
            assert (row.status, row.next_attempt_at) == (DeliveryStatus.GONE.value, None)
        else:
            # Retry-After (30 s, unscaled) sets both the delivery's next attempt and the endpoint's throttle.
            assert row.status == DeliveryStatus.PENDING.value and row.next_attempt_at is not None
            assert aware(row.next_attempt_at) >= utcnow() + timedelta(seconds=25)
    assert _endpoint(db_engine, ok_endpoint).failing_since is None
    gone = _endpoint(db_engine, gone_endpoint)
    assert (gone.enabled, gone.disabled_reason) == (False, DISABLED_GONE)
    busy = _endpoint(db_engine, busy_endpoint)
    assert busy.enabled and busy.failing_since is not None and busy.throttled_until is not None
    # The 410 recorded webhook.endpoint_disabled once: in the disabled endpoint's own log and, through the
    # outbox, to the other endpoints of the workspace.
    with session_scope(db_engine) as session:
        announced = session.exec(
            select(WebhookDelivery).where(col(WebhookDelivery.event_type) == "webhook.endpoint_disabled")
        ).all()
    own = [r for r in announced if r.endpoint_id == gone_endpoint and r.status == DeliveryStatus.DISABLED.value]
    assert len(own) == 1


def test_outbox_bulk_success_writes_what_record_outcome_writes(db_engine: Engine) -> None:
    bulk_endpoint, reference_endpoint = _endpoints(db_engine, 2)
    _events(db_engine, 1)
    sends = {c.endpoint_id: c for c in _claim(db_engine, "a")}
    assert _record(db_engine, [(sends[bulk_endpoint], OK)]) == ["delivered"]
    # The reference: the per-row path (the state machine, then the outbox's own bookkeeping).
    reference = sends[reference_endpoint]
    with session_scope(db_engine) as session:
        verdict = record_outcome(session, reference.inp, OK)
        row = session.get(WebhookDelivery, reference.delivery_id)
        assert row is not None
        apply_verdict(row, verdict, now=utcnow())
        session.add(row)
    assert verdict.result.outcome == "delivered"
    columns = [
        "status",
        "attempts",
        "last_status_code",
        "last_latency_ms",
        "last_error",
        "next_retry_at",
        "next_attempt_at",
        "claim_token",
        "claimed_until",
        "workflow_id",
        "schedule_base",
    ]
    bulk = _delivery(db_engine, sends[bulk_endpoint].delivery_id)
    ref = _delivery(db_engine, reference.delivery_id)
    assert {c: getattr(bulk, c) for c in columns} == {
        c: (getattr(ref, c) if c != "workflow_id" else bulk.workflow_id) for c in columns
    }
    assert bulk.workflow_id is not None and bulk.workflow_id.endswith(bulk.id)
    assert bulk.delivered_at is not None and ref.delivered_at is not None
    assert _attempts(db_engine, bulk.id) == _attempts(db_engine, ref.id) == [(1, "delivered", 204)]
    assert _endpoint(db_engine, bulk_endpoint).failing_since is None


def test_outbox_batch_keeps_the_order_of_one_endpoints_answers(db_engine: Engine) -> None:
    (endpoint_id,) = _endpoints(db_engine, 1)
    _events(db_engine, 4)
    first, second, third, fourth = _claim(db_engine, "a")
    # A failure then a success: the success ends the failing streak the failure started.
    assert _record(db_engine, [(first, FAILED), (second, OK)]) == ["retry", "delivered"]
    assert _endpoint(db_engine, endpoint_id).failing_since is None
    # A success then a failure: the endpoint is failing afterwards.
    assert _record(db_engine, [(third, OK), (fourth, FAILED)]) == ["delivered", "retry"]
    assert _endpoint(db_engine, endpoint_id).failing_since is not None


def test_outbox_success_on_a_failing_endpoint_ends_its_streak(db_engine: Engine) -> None:
    (endpoint_id,) = _endpoints(db_engine, 1)
    _events(db_engine, 1)
    with session_scope(db_engine) as session:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        assert endpoint is not None
        endpoint.failing_since = utcnow() - timedelta(hours=1)
        session.add(endpoint)
    with session_scope(db_engine) as session:
        sends = claim_due(
            session=session,
            token="a",
            now=utcnow(),
            lease_s=LEASE_S,
            limit=100,
            keyring=KEYS,
            retry_scale=1.0,
            timeout_s=10.0,
            failing=True,
        ).sends
    assert len(sends) == 1 and sends[0].failing
    assert _record(db_engine, [(sends[0], OK)]) == ["delivered"]
    assert _endpoint(db_engine, endpoint_id).failing_since is None
    assert _delivery(db_engine, sends[0].delivery_id).status == DeliveryStatus.DELIVERED.value


def test_outbox_bulk_path_is_fenced_by_the_claim_token(db_engine: Engine) -> None:
    _endpoints(db_engine, 2)
    _events(db_engine, 1)
    stale = _claim(db_engine, "a")
    assert len(stale) == 2
    # One lease ran out and another dispatcher took the delivery over; the other is still held under "a".
    taken = stale[0]
    with session_scope(db_engine) as session:
        row = session.get(WebhookDelivery, taken.delivery_id)
        assert row is not None
        row.claim_token = "b"
        session.add(row)
    assert _record(db_engine, [(c, OK) for c in stale]) == ["delivered"]
    lost = _delivery(db_engine, taken.delivery_id)
    assert (lost.status, lost.attempts, lost.claim_token) == (DeliveryStatus.PENDING.value, 0, "b")
    assert _attempts(db_engine, taken.delivery_id) == []
    kept = _delivery(db_engine, stale[1].delivery_id)
    assert (kept.status, kept.attempts, kept.claim_token) == (DeliveryStatus.DELIVERED.value, 1, None)
    # Recording the same answers again records nothing more: the claims are spent.
    assert _record(db_engine, [(c, OK) for c in stale]) == []


def test_outbox_delivery_answered_twice_in_one_batch_is_recorded_once(db_engine: Engine) -> None:
    _endpoints(db_engine, 1)
    _events(db_engine, 1)
    (old,) = _claim(db_engine, "a")
    # The same dispatcher's lease ran out and it re-claimed the delivery under a new token.
    (new,) = _claim(db_engine, "b", later_s=LEASE_S + 1)
    assert new.delivery_id == old.delivery_id
    assert _record(db_engine, [(old, OK), (new, OK)]) == ["delivered"]
    row = _delivery(db_engine, new.delivery_id)
    assert (row.status, row.attempts, row.claim_token) == (DeliveryStatus.DELIVERED.value, 1, None)
    assert _attempts(db_engine, row.id) == [(1, "delivered", 204)]


def test_outbox_active_secrets_of_matches_active_secrets_and_leaves_out_unopenable(db_engine: Engine) -> None:
    first, second = _endpoints(db_engine, 2)
    other_keys = KeyRing([bytes(range(1, 33))])
    with session_scope(db_engine) as session:
        new = rotation.rotate_secret(first, session=session, workspace="ws1", overlap=timedelta(hours=1), keyring=KEYS)
        assert new
        both = active_secrets_of([first, second], session=session, keyring=KEYS)
        assert both == {e: rotation.active_secrets(e, session=session, keyring=KEYS) for e in (first, second)}
        assert len(both[first]) == 2 and both[first][0] == new
        # No configured key opens them: left out, so the claim prepares those attempts one by one.
        assert active_secrets_of([first, second], session=session, keyring=other_keys) == {}


def test_outbox_claim_with_a_secret_no_key_opens_settles_failed_and_disables(db_engine: Engine) -> None:
    # The claim's one-query secrets leave the endpoint out, so its delivery goes through prepare_attempt, which
    # settles it (docs/WEBHOOKS.md): failed with the stable error, nothing sent, the endpoint disabled.
    (endpoint_id,) = _endpoints(db_engine, 1)
    _events(db_engine, 1)
    with session_scope(db_engine) as session:
        (delivery_id,) = session.exec(select(WebhookDelivery.id)).all()
    with session_scope(db_engine) as session:
        batch = claim_due(
            session=session,
            token="a",
            now=utcnow(),
            lease_s=LEASE_S,
            limit=100,
            keyring=KeyRing([bytes(range(1, 33))]),
            retry_scale=1.0,
            timeout_s=10.0,
        )
    assert batch.sends == []
    assert [v.result.outcome for v in batch.settled] == [DeliveryStatus.FAILED.value]
    row = _delivery(db_engine, delivery_id)
    assert (row.status, row.claim_token, row.attempts, row.next_attempt_at) == (
        DeliveryStatus.FAILED.value,
        None,
        0,
        None,
    )
    assert row.last_error == SECRET_UNDECRYPTABLE_ERROR
    endpoint = _endpoint(db_engine, endpoint_id)
    assert (endpoint.enabled, endpoint.disabled_reason) == (False, DISABLED_UNDECRYPTABLE)
