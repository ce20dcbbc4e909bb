"""The delivery state machine: its pure rules (classifying answers, the retry delay) and its transitions on real
SQLite and PostgreSQL (rotation overlap, attempts, disabling, failing too long, redelivery)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from quantapilot.db import session_scope
from quantapilot.webhooks import deliveries, endpoints, recovery, rotation
from quantapilot.webhooks import delivery as delivery_state
from quantapilot.webhooks.delivery import classify_answer, retry_delay
from quantapilot.webhooks.schedule import DISABLE_AFTER, MAX_ATTEMPTS, RETRY_AFTER_CAP_S, nominal_delay
from quantapilot.webhooks.tables import (
    DeliveryOutcome,
    DeliveryResult,
    DeliveryStatus,
    WebhookEndpoint,
    WebhookNotFoundError,
)
from tests.webhooks.support import KEYS, T0, create_endpoint_row


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, DeliveryOutcome.DELIVERED),
        (204, DeliveryOutcome.DELIVERED),
        (299, DeliveryOutcome.DELIVERED),
        (410, DeliveryOutcome.GONE),
        (301, DeliveryOutcome.RETRY),
        (400, DeliveryOutcome.RETRY),
        (404, DeliveryOutcome.RETRY),
        (429, DeliveryOutcome.RETRY),
        (500, DeliveryOutcome.RETRY),
        (503, DeliveryOutcome.RETRY),
        (None, DeliveryOutcome.RETRY),
    ],
)
def test_delivery_classify_answer(status: int | None, outcome: DeliveryOutcome) -> None:
    assert classify_answer(status) is outcome


@pytest.mark.parametrize(
    ("status", "header", "outcome"),
    [
        (400, "abort", DeliveryOutcome.ABORTED),
        (500, " Abort ", DeliveryOutcome.ABORTED),
        (429, "ABORT", DeliveryOutcome.ABORTED),
        (500, "retry", DeliveryOutcome.RETRY),
        (500, "", DeliveryOutcome.RETRY),
        # A success is a success and 410 still disables the endpoint, whatever the header says.
        (200, "abort", DeliveryOutcome.DELIVERED),
        (410, "abort", DeliveryOutcome.GONE),
        (None, "abort", DeliveryOutcome.RETRY),
    ],
)
def test_delivery_classify_answer_abort_header(status: int | None, header: str, outcome: DeliveryOutcome) -> None:
    assert classify_answer(status, delivery_header=header) is outcome


def test_delivery_retry_delay_scaled_within_jitter() -> None:
    for index in (1, 5, MAX_ATTEMPTS - 1):
        delay = retry_delay(index, retry_scale=0.5, retry_after_s=None)
        assert delay is not None
        nominal = nominal_delay(index)
        assert 0.5 * nominal / 2 <= delay <= 0.5 * nominal


def test_delivery_retry_delay_honours_retry_after_unscaled_and_capped() -> None:
    # Retry-After is the receiver's wish: not scaled with the schedule, at least as long as asked.
    delay = retry_delay(1, retry_scale=0.001, retry_after_s=120)
    assert delay == 120
    assert retry_delay(1, retry_scale=1.0, retry_after_s=10 * RETRY_AFTER_CAP_S) == RETRY_AFTER_CAP_S
    # A zero or negative wish changes nothing.
    small = retry_delay(1, retry_scale=0.001, retry_after_s=0)
    assert small is not None and small <= 0.001 * nominal_delay(1)


def test_delivery_retry_delay_gives_up_at_the_end_of_the_schedule() -> None:
    assert retry_delay(MAX_ATTEMPTS, retry_scale=1.0, retry_after_s=None) is None
    assert retry_delay(MAX_ATTEMPTS, retry_scale=1.0, retry_after_s=60) is None


def test_delivery_rotate_secret_overlap_then_only_new(db_engine: Engine) -> None:
    endpoint_id, old = create_endpoint_row(db_engine)
    rotated_at = T0 + timedelta(days=1)
    with session_scope(db_engine) as session:
        new = rotation.rotate_secret(
            endpoint_id, session=session, workspace="ws1", keyring=KEYS, overlap=timedelta(hours=24), now=rotated_at
        )
    assert new != old
    with Session(db_engine) as session:
        during = rotation.active_secrets(
            endpoint_id, session=session, keyring=KEYS, now=rotated_at + timedelta(hours=23)
        )
        after = rotation.active_secrets(
            endpoint_id, session=session, keyring=KEYS, now=rotated_at + timedelta(hours=24)
        )
    assert during == [new, old]
    assert after == [new]
    # A second rotation deletes the expired secret and never extends the previous one's life.
    with session_scope(db_engine) as session:
        newest = rotation.rotate_secret(
            endpoint_id,
            session=session,
            workspace="ws1",
            overlap=timedelta(hours=1),
            keyring=KEYS,
            now=rotated_at + timedelta(hours=30),
        )
    with Session(db_engine) as session:
        at = rotated_at + timedelta(hours=30, minutes=30)
        assert rotation.active_secrets(endpoint_id, session=session, keyring=KEYS, now=at) == [newest, new]
        assert rotation.active_secrets(endpoint_id, session=session, keyring=KEYS, now=at + timedelta(hours=1)) == [
            newest
        ]
        with pytest.raises(ValueError, match="negative"):
            rotation.rotate_secret(
                endpoint_id, session=session, workspace="ws1", keyring=KEYS, overlap=timedelta(hours=-1)
            )


def test_delivery_rotate_with_zero_overlap_revokes_old(db_engine: Engine) -> None:
    endpoint_id, old = create_endpoint_row(db_engine)
    with session_scope(db_engine) as session:
        new = rotation.rotate_secret(
            endpoint_id, session=session, workspace="ws1", keyring=KEYS, overlap=timedelta(0), now=T0
        )
    with Session(db_engine) as session:
        assert rotation.active_secrets(endpoint_id, session=session, keyring=KEYS, now=T0) == [new]
    assert old != new


def test_delivery_attempts_and_status_transitions(db_engine: Engine) -> None:
    endpoint_id, _ = create_endpoint_row(db_engine)
    with session_scope(db_engine) as session:
        endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
        delivery, _ = deliveries.ensure_delivery(
            session=session, endpoint=endpoint, event_id="ev_1", event_type="run.started"
        )
        delivery_id = delivery.id
    fail = DeliveryResult(outcome=DeliveryOutcome.RETRY, status_code=500, latency_ms=12.5, error="HTTP 500")
    ok = DeliveryResult(outcome=DeliveryOutcome.DELIVERED, status_code=200, latency_ms=3.0)
    retry_at = T0 + timedelta(seconds=30)
    with session_scope(db_engine) as session:
        deliveries.record_attempt(delivery_id, session=session, attempt=1, result=fail, now=T0)
        delivery_state.mark_retrying(delivery_id, session=session, next_retry_at=retry_at, now=T0)
    with Session(db_engine) as session:
        [row] = deliveries.list_deliveries(endpoint_id, session=session, workspace="ws1")
        assert (row.status, row.attempts, row.last_status_code, row.next_retry_at) == ("pending", 1, 500, retry_at)
        assert endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1").failing_since == T0
    with session_scope(db_engine) as session:
        # The same attempt recorded twice (activity retried after a crash) stays one row.
        deliveries.record_attempt(delivery_id, session=session, attempt=2, result=fail, now=retry_at)
        deliveries.record_attempt(delivery_id, session=session, attempt=2, result=ok, now=retry_at)
        delivery_state.mark_delivered(delivery_id, session=session, now=retry_at)
    with Session(db_engine) as session:
        attempts = deliveries.list_attempts(delivery_id, session=session, workspace="ws1")
        assert [(a.attempt, a.outcome, a.status_code) for a in attempts] == [(1, "retry", 500), (2, "delivered", 200)]
        assert attempts[0].error == "HTTP 500"
        assert attempts[0].latency_ms == 12.5
        delivery = deliveries.get_delivery(delivery_id, session=session, workspace="ws1")
        assert delivery.status == DeliveryStatus.DELIVERED
        assert delivery.delivered_at == retry_at
        assert delivery.next_retry_at is None
        assert delivery.last_error is None
        assert endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1").failing_since is None
        with pytest.raises(WebhookNotFoundError):
            deliveries.list_attempts(delivery_id, session=session, workspace="ws2")
        with pytest.raises(WebhookNotFoundError):
            deliveries.record_attempt("wd_missing", session=session, attempt=1, result=ok)


def test_delivery_gone_disables_endpoint_once_and_redeliver(db_engine: Engine) -> None:
    endpoint_id, _ = create_endpoint_row(db_engine)
    with session_scope(db_engine) as session:
        endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
        first, _ = deliveries.ensure_delivery(
            session=session, endpoint=endpoint, event_id="ev_1", event_type="run.started"
        )
        second, _ = deliveries.ensure_delivery(
            session=session, endpoint=endpoint, event_id="ev_2", event_type="run.paused"
        )
        assert delivery_state.mark_gone(first.id, session=session, now=T0) is True
        assert delivery_state.mark_gone(second.id, session=session, now=T0) is False
    with Session(db_engine) as session:
        endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
        assert not endpoint.enabled
        assert endpoint.disabled_reason == delivery_state.DISABLED_GONE
        assert endpoints.matching_endpoints(session=session, workspace="ws1", event_type="run.started") == []
        gone = deliveries.list_deliveries(endpoint_id, session=session, workspace="ws1", status=DeliveryStatus.GONE)
        assert {d.id for d in gone} == {first.id, second.id}
    with session_scope(db_engine) as session:
        delivery_state.mark_failed(first.id, session=session, error="gave up")
        delivery_state.mark_disabled(second.id, session=session)
        with pytest.raises(WebhookNotFoundError):
            recovery.redeliver(first.id, session=session, workspace="ws2", workflow_id="wf-2")
        with pytest.raises(recovery.EndpointDisabledError):
            recovery.redeliver(first.id, session=session, workspace="ws1", workflow_id="wf-2")
        endpoints.update_endpoint(endpoint_id, session=session, workspace="ws1", enabled=True)
        again = recovery.redeliver(first.id, session=session, workspace="ws1", workflow_id="wf-2")
    assert again.delivery.status == DeliveryStatus.PENDING
    assert again.delivery.workflow_id == again.workflow_id == "wf-2"
    assert again.previous_workflow_id is None
    assert again.first_attempt == 1
    with Session(db_engine) as session:
        assert deliveries.get_delivery(first.id, session=session, workspace="ws1").status == "pending"
        assert deliveries.get_delivery(second.id, session=session, workspace="ws1").status == "disabled"


def test_delivery_failing_too_long(db_engine: Engine) -> None:
    endpoint_id, _ = create_endpoint_row(db_engine)
    with session_scope(db_engine) as session:
        endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
        assert not delivery_state.failing_too_long(endpoint, now=T0)
        delivery, _ = deliveries.ensure_delivery(
            session=session, endpoint=endpoint, event_id="e", event_type="run.failed"
        )
        delivery_state.mark_retrying(delivery.id, session=session, next_retry_at=T0, now=T0)
        # A later failure does not move the start of the streak.
        delivery_state.mark_retrying(delivery.id, session=session, next_retry_at=T0, now=T0 + timedelta(days=1))
    with Session(db_engine) as session:
        endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
        assert endpoint.failing_since == T0
        assert not delivery_state.failing_too_long(endpoint, now=T0 + DISABLE_AFTER - timedelta(seconds=1))
        assert delivery_state.failing_too_long(endpoint, now=T0 + DISABLE_AFTER)


def _answer(status: int, retry_after: float | None) -> DeliveryResult:
    return DeliveryResult(
        outcome=DeliveryOutcome.RETRY, status_code=status, latency_ms=1.0, retry_after_s=retry_after, error="HTTP"
    )


def test_delivery_429_and_503_with_retry_after_throttle_the_endpoint() -> None:
    endpoint = WebhookEndpoint(id="we_1", workspace="ws1", url="https://example.com/hook")
    assert delivery_state.throttle_wait(endpoint, now=T0) is None
    # A 500's Retry-After, or a 429 without one, speaks for that delivery only.
    assert not delivery_state.throttle_endpoint(endpoint, _answer(500, 60), now=T0)
    assert not delivery_state.throttle_endpoint(endpoint, _answer(429, None), now=T0)
    assert endpoint.throttled_until is None
    assert delivery_state.throttle_endpoint(endpoint, _answer(429, 60), now=T0)
    assert delivery_state.throttle_wait(endpoint, now=T0 + timedelta(seconds=15)) == 45
    # A shorter answer later never shortens it; a longer one extends it, within the cap.
    assert delivery_state.throttle_endpoint(endpoint, _answer(503, 1), now=T0 + timedelta(seconds=1))
    assert endpoint.throttled_until == T0 + timedelta(seconds=60)
    assert delivery_state.throttle_endpoint(endpoint, _answer(503, 10 * RETRY_AFTER_CAP_S), now=T0)
    assert endpoint.throttled_until == T0 + timedelta(seconds=RETRY_AFTER_CAP_S)
    assert delivery_state.throttle_wait(endpoint, now=T0 + timedelta(seconds=RETRY_AFTER_CAP_S)) is None
