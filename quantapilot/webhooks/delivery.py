"""The webhook delivery state machine: what each attempt's outcome does to a delivery and to its endpoint.

A delivery row is ``pending`` until one attempt settles it. The sender reports every attempt
(:func:`~quantapilot.webhooks.sender.post_event`), classified by :func:`classify_answer`; :func:`record_outcome`
decides what follows:

- ``delivered`` (a 2xx within the timeout): the delivery is ``delivered`` and the endpoint's failing streak
  ends (``failing_since`` cleared).
- ``gone`` (410): the delivery is ``gone`` and the endpoint is disabled at once (reason ``gone``).
- ``aborted`` (a non-2xx answer carrying ``webhook-delivery: abort``, :data:`ABORT_HEADER`): the receiver
  asks us to stop retrying this message; the delivery ``failed`` at once, the reason in its ``last_error``, and
  the endpoint is left as it is (it answered on purpose, so it is not counted as failing).
- ``rejected_unsafe`` (the URL now resolves to a refused address: DNS rebinding, a re-pointed record): the
  delivery ``failed`` and the endpoint is disabled (``unsafe_url``).
- ``retry`` (any other status, 4xx and 5xx alike, redirects, timeouts, connection and DNS errors): the endpoint's
  failing streak starts if it has not; an endpoint failing for :data:`~quantapilot.webhooks.schedule.DISABLE_AFTER`
  (:func:`failing_too_long`) is disabled (``failing``) and the delivery ``failed``; otherwise the delivery stays
  ``pending`` and waits on the retry schedule (:func:`retry_delay`), until :data:`~quantapilot.webhooks.schedule.
  MAX_ATTEMPTS` attempts give it up (``failed``).

A ``retry`` answered ``429`` or ``503`` with ``Retry-After`` also throttles the endpoint
(:func:`throttle_endpoint`): until that time no delivery of the endpoint is attempted; each one's next
attempt answers ``throttled`` (nothing sent, nothing recorded, :data:`~quantapilot.webhooks.contracts.THROTTLED`)
and its workflow waits out the rest and makes the same attempt then.

Before sending, :func:`prepare_attempt` stops a delivery whose endpoint is disabled (``disabled``), whose event
or signing secret is missing (``failed``), whose signing secret no configured key decrypts (``failed`` and the
endpoint disabled, :data:`DISABLED_UNDECRYPTABLE`), that another workflow owns (``superseded``: a redelivery
handed the row on) or that is already settled. The secrets that sign are the endpoint's unexpired ones
(:func:`quantapilot.webhooks.rotation.active_secrets`; a rotation lets the previous secrets sign alongside the
new one for the overlap). :func:`quantapilot.webhooks.recovery.redeliver` puts a settled delivery back to pending
under a fresh workflow.

An attempt that disables its endpoint records the ``webhook.endpoint_disabled`` event in the same transaction:
as an unsent row of the disabled endpoint's own delivery log (the durable record, there even when nobody
subscribes) and as deliveries to the subscribers, whose workflows the caller starts after the commit.

Every function takes the session keyword-only and only flushes: the caller owns the transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import Row, select
from sqlmodel import Session, col

from quantapilot.db import utcnow
from quantapilot.events.envelope import EventEnvelope, aware, envelope_of_record
from quantapilot.events.record import EventRecord
from quantapilot.events.table import RunEvent
from quantapilot.secretbox import KeyRing, SecretDecryptError
from quantapilot.webhooks.contracts import THROTTLED, DeliverAttemptInput, DeliverAttemptResult, is_outbox_owner
from quantapilot.webhooks.deliveries import delivery_by_id, record_attempt, record_own_event
from quantapilot.webhooks.envelopes import disabled_envelope
from quantapilot.webhooks.fanout import fan_out, pending_deliveries
from quantapilot.webhooks.rotation import active_secrets
from quantapilot.webhooks.schedule import DISABLE_AFTER, RETRY_AFTER_CAP_S, next_delay
from quantapilot.webhooks.starts import PendingDelivery
from quantapilot.webhooks.tables import (
    DeliveryOutcome,
    DeliveryResult,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookNotFoundError,
)

log = logging.getLogger("quantapilot.webhooks")

DISABLED_GONE: Final = "gone"
DISABLED_FAILING: Final = "failing"
DISABLED_UNSAFE: Final = "unsafe_url"
# No configured key opens one of the endpoint's signing secrets (the key ring was rotated without the old key in
# QP_SECRET_PREVIOUS_KEYS, or the row was tampered with). Also the start of the delivery's ``last_error``: a stable
# code a client can match, followed by a sentence for people.
DISABLED_UNDECRYPTABLE: Final = "secret_undecryptable"
SECRET_UNDECRYPTABLE_ERROR: Final = (
    f"{DISABLED_UNDECRYPTABLE}: no configured key decrypts this endpoint's signing secret "
    "(operator: QP_SECRET_KEY / QP_SECRET_PREVIOUS_KEYS); nothing was sent"
)

# Svix's convention: a receiver answers ``webhook-delivery: abort`` (with any non-2xx status) to stop the
# retries of one message, e.g. one it can never process, without disabling the endpoint.
ABORT_HEADER: Final = "webhook-delivery"
ABORT_VALUE: Final = "abort"
ABORTED_ERROR: Final = "the receiver asked to stop retrying (webhook-delivery: abort)"

# The statuses whose Retry-After speaks for the whole endpoint (rate limited, overloaded), not one message.
THROTTLE_STATUSES: Final = frozenset({429, 503})


# --- the rules ---------------------------------------------------------------------------------------------


def failing_too_long(endpoint: WebhookEndpoint, *, now: datetime | None = None) -> bool:
    """Tell whether an endpoint has been failing for :data:`~quantapilot.webhooks.schedule.DISABLE_AFTER`.

    Not scaled with the retry delays: the threshold is about the receiver's outage, not our schedule.
    """
    if endpoint.failing_since is None:
        return False
    return (now or utcnow()) - endpoint.failing_since >= DISABLE_AFTER


def classify_answer(status_code: int | None, *, delivery_header: str | None = None) -> DeliveryOutcome:
    """How an attempt ended, from the receiver's HTTP status (None: no answer came).

    A 2xx within the timeout is delivered; 410 Gone is the receiver asking for no more (the endpoint gets
    disabled); any other answer with ``webhook-delivery: abort`` (:data:`ABORT_HEADER`, value compared without
    case) is aborted (no retry of this delivery); everything else (other 4xx, 5xx, redirects, which are never
    followed, and no answer at all: timeouts, refused connections, DNS failures) is retried on the schedule. A
    URL refused by the safety check never reaches the network (``rejected_unsafe``, decided by the sender).

    Args:
        status_code: The answer's status, None when no answer came.
        delivery_header: The answer's ``webhook-delivery`` header, if any.
    """
    if status_code is None:
        return DeliveryOutcome.RETRY
    if 200 <= status_code < 300:
        return DeliveryOutcome.DELIVERED
    if status_code == 410:
        return DeliveryOutcome.GONE
    if delivery_header is not None and delivery_header.strip().lower() == ABORT_VALUE:
        return DeliveryOutcome.ABORTED
    return DeliveryOutcome.RETRY


def retry_delay(schedule_index: int, *, retry_scale: float, retry_after_s: float | None) -> float | None:
    """Seconds to wait before the next attempt of a workflow, or None once the schedule is exhausted.

    Args:
        schedule_index: Position in the retry schedule of the attempt that just failed (from 1).
        retry_scale: Multiplies the backoff (1.0 in production; tests use a tiny value).
        retry_after_s: The receiver's ``Retry-After``, if it sent one.
    """
    delay = next_delay(schedule_index)
    if delay is None:
        return None
    delay *= retry_scale
    if retry_after_s is not None and retry_after_s > 0:
        # The receiver's wish is honoured as asked (not scaled), within the schedule's cap.
        delay = max(delay, min(retry_after_s, RETRY_AFTER_CAP_S))
    return delay


def throttle_endpoint(endpoint: WebhookEndpoint, result: DeliveryResult, *, now: datetime) -> bool:
    """Hold all of an endpoint's deliveries after a ``429``/``503`` with ``Retry-After`` (flush is the caller's).

    The wait is the receiver's, unscaled and capped like :func:`retry_delay`'s; a later, shorter answer never
    shortens a throttle already set.

    Returns:
        True when the answer throttles the endpoint.
    """
    wait = result.retry_after_s
    if result.status_code not in THROTTLE_STATUSES or wait is None or wait <= 0:
        return False
    until = now + timedelta(seconds=min(wait, RETRY_AFTER_CAP_S))
    if endpoint.throttled_until is None or aware(endpoint.throttled_until) < until:
        endpoint.throttled_until = until
    return True


def throttle_wait(endpoint: WebhookEndpoint, *, now: datetime) -> float | None:
    """Seconds the endpoint's deliveries still wait (:func:`throttle_endpoint`), or None when not throttled."""
    if endpoint.throttled_until is None:
        return None
    left = (aware(endpoint.throttled_until) - now).total_seconds()
    return left if left > 0 else None


# --- transitions -------------------------------------------------------------------------------------------


def _endpoint_of(delivery: WebhookDelivery, *, session: Session) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
    if endpoint is None:  # pragma: no cover - the foreign key prevents it
        raise WebhookNotFoundError("webhook endpoint")
    return endpoint


def mark_delivered(delivery_id: str, *, session: Session, now: datetime | None = None) -> WebhookDelivery:
    """Mark a delivery delivered; a success also ends the endpoint's failing streak."""
    delivery = delivery_by_id(delivery_id, session=session)
    at = now or utcnow()
    delivery.status = DeliveryStatus.DELIVERED.value
    delivery.delivered_at = at
    delivery.next_retry_at = None
    endpoint = _endpoint_of(delivery, session=session)
    endpoint.failing_since = None
    session.add_all([delivery, endpoint])
    session.flush()
    return delivery


def mark_retrying(
    delivery_id: str, *, session: Session, next_retry_at: datetime, now: datetime | None = None
) -> WebhookDelivery:
    """Keep a delivery pending until ``next_retry_at`` and start the endpoint's failing streak if needed."""
    delivery = delivery_by_id(delivery_id, session=session)
    delivery.status = DeliveryStatus.PENDING.value
    delivery.next_retry_at = next_retry_at
    endpoint = _endpoint_of(delivery, session=session)
    if endpoint.failing_since is None:
        endpoint.failing_since = now or utcnow()
    session.add_all([delivery, endpoint])
    session.flush()
    return delivery


def mark_failed(delivery_id: str, *, session: Session, error: str | None = None) -> WebhookDelivery:
    """Give a delivery up (retries exhausted, or the URL is refused)."""
    delivery = delivery_by_id(delivery_id, session=session)
    delivery.status = DeliveryStatus.FAILED.value
    delivery.next_retry_at = None
    if error is not None:
        delivery.last_error = error
    session.add(delivery)
    session.flush()
    return delivery


def mark_gone(delivery_id: str, *, session: Session, now: datetime | None = None) -> bool:
    """Mark a delivery gone (the receiver answered 410) and disable its endpoint.

    Returns:
        True if this call disabled the endpoint (record ``webhook.endpoint_disabled`` once, then).
    """
    delivery = delivery_by_id(delivery_id, session=session)
    delivery.status = DeliveryStatus.GONE.value
    delivery.next_retry_at = None
    session.add(delivery)
    return disable_endpoint(delivery.endpoint_id, session=session, reason=DISABLED_GONE, now=now)


def mark_disabled(delivery_id: str, *, session: Session) -> WebhookDelivery:
    """Stop a delivery because its endpoint is disabled (it can still be redelivered later)."""
    delivery = delivery_by_id(delivery_id, session=session)
    delivery.status = DeliveryStatus.DISABLED.value
    delivery.next_retry_at = None
    session.add(delivery)
    session.flush()
    return delivery


def disable_endpoint(endpoint_id: str, *, session: Session, reason: str, now: datetime | None = None) -> bool:
    """Disable an endpoint (worker side: 410, failing too long, unsafe URL).

    Returns:
        True if it was enabled before (so the caller records ``webhook.endpoint_disabled`` exactly once).
    """
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or not endpoint.enabled:
        return False
    endpoint.enabled = False
    endpoint.disabled_reason = reason
    endpoint.updated_at = now or utcnow()
    session.add(endpoint)
    session.flush()
    return True


# --- one attempt -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedAttempt:
    """What an attempt sends: to where, signed with which secrets, which event."""

    url: str
    secrets: list[str]
    envelope: EventEnvelope


@dataclass(frozen=True)
class AttemptVerdict:
    """What an attempt decided, and what the caller starts after the commit.

    Attributes:
        result: The answer to the delivery workflow.
        disabled: The ``webhook.endpoint_disabled`` event this attempt recorded, to announce (AMQP).
        pending: That event's deliveries, whose workflows the caller starts.
    """

    result: DeliverAttemptResult
    disabled: EventEnvelope | None = None
    pending: tuple[PendingDelivery, ...] = ()


def _done(outcome: str, *, disabled: EventEnvelope | None = None, session: Session | None = None) -> AttemptVerdict:
    pending: tuple[PendingDelivery, ...] = ()
    if disabled is not None and session is not None:
        pending = tuple(pending_deliveries(session, disabled.id))
    return AttemptVerdict(DeliverAttemptResult(done=True, outcome=outcome), disabled, pending)


def _owned(session: Session, inp: DeliverAttemptInput) -> WebhookDelivery | AttemptVerdict:
    delivery = session.get(WebhookDelivery, inp.delivery_id)
    if delivery is None:
        return _done("missing")  # the endpoint was deleted with its deliveries
    if delivery.workflow_id is not None and delivery.workflow_id != inp.workflow_id:
        return _done("superseded")
    return delivery


def event_envelope(payload: dict[str, Any] | None, event: RunEvent | Row[Any] | None) -> EventEnvelope | None:
    """The envelope a delivery sends: its own ``payload`` if it keeps one, else its run event's (None: gone).

    Args:
        payload: The delivery's ``payload`` column.
        event: The delivery's ``run_events`` row, if there is one (only read when ``payload`` is None): a model
            instance, or a Core row of all its columns (the outbox's batch load, which skips the ORM's per-row
            cost); both are read by attribute, the same way.
    """
    if payload is not None:
        return EventEnvelope.model_validate(payload)
    if event is None:
        return None
    return envelope_of_record(EventRecord.model_validate(event, from_attributes=True))


def _event_envelope(session: Session, delivery: WebhookDelivery) -> EventEnvelope | None:
    event = session.get(RunEvent, delivery.event_id) if delivery.payload is None else None
    return event_envelope(delivery.payload, event)


def prepare_attempt(
    session: Session, inp: DeliverAttemptInput, *, keyring: KeyRing
) -> PreparedAttempt | AttemptVerdict:
    """Load what an attempt sends, or settle the delivery without sending.

    A signing secret that no configured key opens (:class:`~quantapilot.secretbox.SecretDecryptError`) settles
    the delivery ``failed`` (``last_error`` :data:`SECRET_UNDECRYPTABLE_ERROR`, nothing sent, no attempt recorded)
    and disables the endpoint (:data:`DISABLED_UNDECRYPTABLE`, with its ``webhook.endpoint_disabled`` event): retrying
    cannot help until an operator restores the key, and an endpoint that stays enabled would keep every one of
    its deliveries retrying for days. Once the key is back: re-enable the endpoint and recover the window.
    """
    owned = _owned(session, inp)
    if isinstance(owned, AttemptVerdict):
        return owned
    delivery = owned
    endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
    if endpoint is None:  # pragma: no cover - the foreign key prevents it
        return _done("missing")
    if delivery.status != DeliveryStatus.PENDING.value:
        return _settled(session, endpoint, delivery, inp.attempt)
    if not endpoint.enabled:
        mark_disabled(delivery.id, session=session)
        return _done(DeliveryStatus.DISABLED.value)
    at = utcnow()
    wait = throttle_wait(endpoint, now=at)
    if wait is not None:
        # Not an attempt: nothing is sent or recorded; the log shows when it is due.
        delivery.next_retry_at = at + timedelta(seconds=wait)
        session.add(delivery)
        session.flush()
        return AttemptVerdict(DeliverAttemptResult(done=False, outcome=THROTTLED, delay_s=wait))
    try:
        secrets = active_secrets(endpoint.id, session=session, keyring=keyring)
    except SecretDecryptError as exc:
        return _undecryptable(session, endpoint, delivery, inp.attempt, exc)
    envelope = _event_envelope(session, delivery)
    if not secrets or envelope is None:
        mark_failed(delivery.id, session=session, error="event or signing secret missing")
        return _done(DeliveryStatus.FAILED.value)
    return PreparedAttempt(url=endpoint.url, secrets=secrets, envelope=envelope)


def _undecryptable(
    session: Session, endpoint: WebhookEndpoint, delivery: WebhookDelivery, attempt: int, exc: SecretDecryptError
) -> AttemptVerdict:
    """Settle a delivery whose endpoint's signing secret no configured key opens, and disable the endpoint."""
    # The detail (secret row and key id) is for the operator's log; the tenant's delivery log gets the stable text.
    log.error("webhook delivery %s: cannot decrypt a signing secret of endpoint %s: %s", delivery.id, endpoint.id, exc)
    mark_failed(delivery.id, session=session, error=SECRET_UNDECRYPTABLE_ERROR)
    disabled = disable_endpoint(endpoint.id, session=session, reason=DISABLED_UNDECRYPTABLE)
    return _after_disable(session, endpoint, delivery, attempt, DeliveryStatus.FAILED, disabled)


def _settled(session: Session, endpoint: WebhookEndpoint, delivery: WebhookDelivery, attempt: int) -> AttemptVerdict:
    """A delivery already finished: by this very attempt before a crash, or by another workflow."""
    if not endpoint.enabled and delivery.attempts == attempt:
        row = session.scalars(
            select(WebhookAttempt).where(
                col(WebhookAttempt.delivery_id) == delivery.id, col(WebhookAttempt.attempt) == attempt
            )
        ).first()
        # This attempt disabled the endpoint (same instant) and may have died before announcing it.
        if row is not None and aware(row.at) == aware(endpoint.updated_at):
            return _done(delivery.status, disabled=disabled_envelope(endpoint, delivery, attempt), session=session)
    return _done(delivery.status)


def record_outcome(session: Session, inp: DeliverAttemptInput, result: DeliveryResult) -> AttemptVerdict:
    """Record an attempt's result and move the delivery (and its endpoint) to what follows from it."""
    owned = _owned(session, inp)
    if isinstance(owned, AttemptVerdict):
        return owned
    delivery = owned
    if delivery.status != DeliveryStatus.PENDING.value:
        return _done(delivery.status)
    at = utcnow()
    record_attempt(delivery.id, session=session, attempt=inp.attempt, result=result, now=at)
    endpoint = _endpoint_of(delivery, session=session)
    outcome = result.outcome
    if outcome is DeliveryOutcome.DELIVERED:
        mark_delivered(delivery.id, session=session, now=at)
        return _done(DeliveryStatus.DELIVERED.value)
    if outcome is DeliveryOutcome.GONE:
        disabled = mark_gone(delivery.id, session=session, now=at)
        return _after_disable(session, endpoint, delivery, inp.attempt, DeliveryStatus.GONE, disabled)
    if outcome is DeliveryOutcome.ABORTED:
        mark_failed(delivery.id, session=session, error=result.error)
        return _done(DeliveryStatus.FAILED.value)
    reason = DISABLED_UNSAFE if outcome is DeliveryOutcome.REJECTED_UNSAFE else None
    if reason is None and failing_too_long(endpoint, now=at):
        reason = DISABLED_FAILING
    if reason is not None:
        mark_failed(delivery.id, session=session, error=result.error)
        disabled = disable_endpoint(endpoint.id, session=session, reason=reason, now=at)
        return _after_disable(session, endpoint, delivery, inp.attempt, DeliveryStatus.FAILED, disabled)
    if throttle_endpoint(endpoint, result, now=at):
        session.add(endpoint)
    delay = retry_delay(inp.schedule_index, retry_scale=inp.retry_scale, retry_after_s=result.retry_after_s)
    if delay is None:
        mark_failed(delivery.id, session=session, error=f"gave up after {inp.attempt} attempts: {result.error}")
        return _done(DeliveryStatus.FAILED.value)
    mark_retrying(delivery.id, session=session, next_retry_at=at + timedelta(seconds=delay), now=at)
    return AttemptVerdict(DeliverAttemptResult(done=False, outcome="retry", delay_s=delay))


def _after_disable(
    session: Session,
    endpoint: WebhookEndpoint,
    delivery: WebhookDelivery,
    attempt: int,
    status: DeliveryStatus,
    disabled: bool,
) -> AttemptVerdict:
    if not disabled:
        return _done(status.value)
    envelope = disabled_envelope(endpoint, delivery, attempt)
    payload = envelope.model_dump(mode="json")
    log.warning("webhook endpoint %s disabled: %s", endpoint.id, endpoint.disabled_reason)
    # The durable record, in this transaction: the event in the disabled endpoint's own delivery log (never
    # sent there), so operators find it even when no other endpoint subscribes to it.
    record_own_event(
        endpoint,
        session=session,
        event_id=envelope.id,
        event_type=envelope.type,
        payload=payload,
        now=endpoint.updated_at,
    )
    # Its deliveries go the way the disabling one went: through the outbox, or each by its own workflow.
    fan_out(
        session,
        workspace=endpoint.workspace,
        event_type=envelope.type,
        event_id=envelope.id,
        payload=payload,
        outbox=is_outbox_owner(delivery.workflow_id),
    )
    return _done(status.value, disabled=envelope, session=session)
