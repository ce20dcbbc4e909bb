"""Event delivery activities: fan-out of events into deliveries, one webhook attempt, one AMQP publication.

Fan-out (:func:`fan_out`) runs inside the transaction that stores an event, so an event and its deliveries
exist together or not at all; starting the delivery workflows happens after the commit
(:func:`start_delivery_workflows`) and is idempotent (one workflow id per delivery, duplicates rejected), so
an activity retried after a crash between the two simply starts what is missing.

A delivery row names the workflow that owns it (``workflow_id``); a redelivery hands the row to a new workflow
and an older one that wakes up later stops without sending.

An attempt that disables its endpoint (410, unsafe URL, failing for five days) records the
``webhook.endpoint_disabled`` event in the same transaction: as an unsent row of the disabled endpoint's own
delivery log (the durable record, there even when nobody subscribes) and as deliveries to the subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from quantapilot.db import RunEvent, session_scope, utcnow
from quantapilot.models import EventRecord
from quantapilot.observability import WEBHOOK_DELIVERIES
from quantapilot.secretbox import load_keyring
from quantapilot.settings import Settings
from quantapilot.webhooks.amqp import AmqpPublisher
from quantapilot.webhooks.contracts import (
    DELIVER_WEBHOOK,
    PUBLISH_EVENT_AMQP,
    AmqpPublishInput,
    DeliverAttemptInput,
    DeliverAttemptResult,
    delivery_workflow_id,
)
from quantapilot.webhooks.schedule import DISABLE_AFTER, RETRY_AFTER_CAP_S, next_delay
from quantapilot.webhooks.sender import DeliveryOutcome, DeliveryResult, EventEnvelope, post_event, prepare_request
from quantapilot.webhooks.starts import PendingDelivery, start_amqp_publish, start_delivery_workflows
from quantapilot.webhooks.tables import (
    DISABLED_FAILING,
    DISABLED_UNSAFE,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    active_secrets,
    disable_endpoint,
    ensure_delivery,
    mark_delivered,
    mark_disabled,
    mark_failed,
    mark_gone,
    mark_retrying,
    matching_endpoints,
    record_attempt,
    record_own_event,
)

log = logging.getLogger("quantapilot.webhooks")

ENDPOINT_DISABLED = "webhook.endpoint_disabled"
_DISABLED_EVENT_NAMESPACE = uuid.UUID("0d7c4b8e-6a55-4f63-9a3e-5b2f1c7d9e10")


# ----- envelopes -----------------------------------------------------------------------------------------------


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every timestamp we store is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def envelope_of_record(event: EventRecord) -> EventEnvelope:
    """Build the envelope consumers receive for a run event."""
    return EventEnvelope(
        id=event.id,
        type=event.type,
        created_at=_aware(event.created_at),
        workspace=event.workspace,
        run_id=event.run_id,
        seq=event.seq,
        correlation_id=event.correlation_id,
        data=dict(event.data),
    )


def envelope_of_row(row: RunEvent) -> EventEnvelope:
    """Rebuild the envelope of a stored run event (the same bytes on every attempt)."""
    return EventEnvelope(
        id=row.id,
        type=row.type,
        created_at=_aware(row.created_at),
        workspace=row.workspace,
        run_id=row.run_id,
        seq=row.seq,
        correlation_id=row.correlation_id,
        data=dict(row.data),
        trace_id=row.trace_id,
    )


def disabled_event_id(endpoint_id: str, delivery_id: str, attempt: int) -> str:
    """Id of the ``webhook.endpoint_disabled`` event caused by one attempt (stable across activity retries)."""
    name = f"{endpoint_id}/{delivery_id}/{attempt}"
    return f"evt_{uuid.uuid5(_DISABLED_EVENT_NAMESPACE, name).hex}"


def disabled_envelope(endpoint: WebhookEndpoint, delivery: WebhookDelivery, attempt: int) -> EventEnvelope:
    """The ``webhook.endpoint_disabled`` event for an endpoint disabled by a delivery's attempt.

    Built only from stored fields, so an activity retry rebuilds the same event. The URL is left out: it
    is the tenant's and may carry a token in its query.
    """
    return EventEnvelope(
        id=disabled_event_id(endpoint.id, delivery.id, attempt),
        type=ENDPOINT_DISABLED,
        created_at=_aware(endpoint.updated_at),
        workspace=endpoint.workspace,
        data={
            "endpoint_id": endpoint.id,
            "reason": endpoint.disabled_reason,
            "delivery_id": delivery.id,
            "event_id": delivery.event_id,
            "last_status_code": delivery.last_status_code,
            "last_error": delivery.last_error,
        },
    )


# ----- fan-out -------------------------------------------------------------------------------------------------


def _run_repository(session: Session, event: EventRecord) -> str | None:
    value = event.data.get("repo_url")
    if isinstance(value, str):
        return value
    started = session.exec(
        select(RunEvent).where(RunEvent.run_id == event.run_id, RunEvent.type == "run.started").limit(1)
    ).first()
    if started is not None and isinstance(started.data.get("repo_url"), str):
        return str(started.data["repo_url"])
    return None


def fan_out(
    session: Session,
    *,
    workspace: str,
    event_type: str,
    event_id: str,
    run_id: str | None = None,
    run_kind: str | None = None,
    repository: str | None = None,
    payload: dict[str, Any] | None = None,
) -> int:
    """Create the deliveries of one event for the matching enabled endpoints of its workspace (flush only).

    Args:
        session: The session of the transaction that stores the event.
        workspace: The event's workspace; only its endpoints receive the event.
        event_type: Dotted type.
        event_id: Event id (a delivery is unique per endpoint and event).
        run_id: The event's run, if any.
        run_kind: The run's kind, for run-kind filters.
        repository: The run's repository, for repository filters.
        payload: The envelope to store with each delivery for events that are not in ``run_events``.

    Returns:
        How many deliveries this call created.
    """
    try:
        endpoints = matching_endpoints(
            session=session, workspace=workspace, event_type=event_type, run_kind=run_kind, repository=repository
        )
    except ValueError:
        # A type outside the published list cannot be subscribed to; the run's log still has it.
        log.warning("event type %s is not deliverable by webhook", event_type[:64])
        return 0
    created = 0
    for endpoint in endpoints:
        delivery, new = ensure_delivery(
            session=session, endpoint=endpoint, event_id=event_id, event_type=event_type, run_id=run_id
        )
        if delivery.workflow_id is None:
            delivery.workflow_id = delivery_workflow_id(delivery.id)
            delivery.payload = payload
            session.add(delivery)
        created += int(new)
    session.flush()
    return created


def fan_out_run_event(session: Session, event: EventRecord) -> int:
    """Create the deliveries of a run event; the repository is looked up only when a filter needs it."""
    kind = event.run_kind.value
    # Repository filters are rare: matching by type alone (no run kind: the kind and repository filters pass)
    # tells whether any endpoint wants the event at all and whether the run's repository must be looked up.
    candidates = matching_endpoints(session=session, workspace=event.workspace, event_type=event.type)
    if not candidates:
        return 0
    needs_repository = kind == "repository" and any(e.repositories for e in candidates)
    repository = _run_repository(session, event) if needs_repository else None
    return fan_out(
        session,
        workspace=event.workspace,
        event_type=event.type,
        event_id=event.id,
        run_id=event.run_id,
        run_kind=kind,
        repository=repository,
    )


def pending_deliveries(session: Session, event_id: str) -> list[PendingDelivery]:
    """Deliveries of an event still waiting to be made (their workflows may or may not exist yet)."""
    rows = session.exec(
        select(WebhookDelivery)
        .where(WebhookDelivery.event_id == event_id)
        .where(WebhookDelivery.status == DeliveryStatus.PENDING.value)
        .order_by(col(WebhookDelivery.id))
    )
    return [PendingDelivery(row.id, row.workflow_id or delivery_workflow_id(row.id)) for row in rows if row.workflow_id]


# ----- one attempt ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    url: str
    secrets: list[str]
    envelope: EventEnvelope


@dataclass(frozen=True)
class _Final:
    result: DeliverAttemptResult
    # A webhook.endpoint_disabled event this attempt recorded, to be started after the commit.
    disabled: EventEnvelope | None = None
    pending: tuple[PendingDelivery, ...] = ()


def _final(outcome: str, *, disabled: EventEnvelope | None = None, session: Session | None = None) -> _Final:
    pending: tuple[PendingDelivery, ...] = ()
    if disabled is not None and session is not None:
        pending = tuple(pending_deliveries(session, disabled.id))
    return _Final(DeliverAttemptResult(done=True, outcome=outcome), disabled, pending)


@contextlib.asynccontextmanager
async def _heartbeats() -> AsyncIterator[None]:
    """Heartbeat while an attempt runs longer than a third of the heartbeat timeout (fast ones send none)."""
    timeout = activity.info().heartbeat_timeout if activity.in_activity() else None
    if not timeout:
        yield
        return
    interval = max(timeout.total_seconds() / 3, 0.2)

    async def _beat() -> None:
        while True:
            await asyncio.sleep(interval)
            activity.heartbeat()

    task = asyncio.create_task(_beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class WebhookActivities:
    """Delivery and publication activities, built with the settings and the database engine.

    Args:
        settings: Service settings (HTTP timeout, private-address policy, AMQP broker, the secret key).
        engine: Database engine holding the webhook tables and ``run_events``.

    Raises:
        SecretKeyError: No usable key to decrypt the signing secrets with.
    """

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        self._keyring = load_keyring(settings)
        # Shared by every attempt and publication of this worker, closed by the worker's shutdown (close()).
        self._http: aiohttp.ClientSession | None = None
        self._amqp = AmqpPublisher.from_settings(settings)

    def _session(self) -> aiohttp.ClientSession:
        # Created lazily: a session belongs to the event loop the activities run on.
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(trust_env=False)
        return self._http

    async def close(self) -> None:
        """Close the shared HTTP session and AMQP connection."""
        if self._http is not None:
            await self._http.close()
        if self._amqp is not None:
            await self._amqp.close()

    # -- database steps (run in a thread) --

    def _event_envelope(self, session: Session, delivery: WebhookDelivery) -> EventEnvelope | None:
        if delivery.payload is not None:
            return EventEnvelope.model_validate(delivery.payload)
        row = session.get(RunEvent, delivery.event_id)
        return envelope_of_row(row) if row is not None else None

    def _prepare(self, inp: DeliverAttemptInput) -> _Prepared | _Final:
        with session_scope(self._engine) as session:
            delivery = session.get(WebhookDelivery, inp.delivery_id)
            if delivery is None:
                return _final("missing")  # the endpoint was deleted with its deliveries
            if delivery.workflow_id is not None and delivery.workflow_id != inp.workflow_id:
                return _final("superseded")
            endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
            if endpoint is None:  # pragma: no cover - the foreign key prevents it
                return _final("missing")
            if delivery.status != DeliveryStatus.PENDING.value:
                return self._settled(session, endpoint, delivery, inp.attempt)
            if not endpoint.enabled:
                mark_disabled(delivery.id, session=session)
                return _final(DeliveryStatus.DISABLED.value)
            # A secret no configured key opens raises here: the attempt fails and is retried on the schedule,
            # so deliveries resume once the operator configures the key.
            secrets = active_secrets(endpoint.id, session=session, keyring=self._keyring)
            envelope = self._event_envelope(session, delivery)
            if not secrets or envelope is None:
                mark_failed(delivery.id, session=session, error="event or signing secret missing")
                return _final(DeliveryStatus.FAILED.value)
            return _Prepared(url=endpoint.url, secrets=secrets, envelope=envelope)

    def _settled(self, session: Session, endpoint: WebhookEndpoint, delivery: WebhookDelivery, attempt: int) -> _Final:
        """A delivery already finished: by this very attempt before a crash, or by another workflow."""
        if not endpoint.enabled and delivery.attempts == attempt:
            row = session.exec(
                select(WebhookAttempt).where(
                    WebhookAttempt.delivery_id == delivery.id, WebhookAttempt.attempt == attempt
                )
            ).first()
            # This attempt disabled the endpoint (same instant) and may have died before announcing it.
            if row is not None and _aware(row.at) == _aware(endpoint.updated_at):
                return _final(delivery.status, disabled=disabled_envelope(endpoint, delivery, attempt), session=session)
        return _final(delivery.status)

    def _record(self, inp: DeliverAttemptInput, result: DeliveryResult) -> _Final:
        with session_scope(self._engine) as session:
            delivery = session.get(WebhookDelivery, inp.delivery_id)
            if delivery is None:
                return _final("missing")
            if delivery.workflow_id is not None and delivery.workflow_id != inp.workflow_id:
                return _final("superseded")
            if delivery.status != DeliveryStatus.PENDING.value:
                return _final(delivery.status)
            at = utcnow()
            record_attempt(delivery.id, session=session, attempt=inp.attempt, result=result, now=at)
            endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
            assert endpoint is not None  # the foreign key guarantees it
            outcome = result.outcome
            if outcome is DeliveryOutcome.DELIVERED:
                mark_delivered(delivery.id, session=session, now=at)
                return _final(DeliveryStatus.DELIVERED.value)
            if outcome is DeliveryOutcome.GONE:
                disabled = mark_gone(delivery.id, session=session, now=at)
                return self._after_disable(session, endpoint, delivery, inp.attempt, DeliveryStatus.GONE, disabled)
            if outcome is DeliveryOutcome.REJECTED_UNSAFE:
                # The name now resolves somewhere we must not go (DNS rebinding, or a re-pointed record).
                mark_failed(delivery.id, session=session, error=result.error)
                disabled = disable_endpoint(endpoint.id, session=session, reason=DISABLED_UNSAFE, now=at)
                return self._after_disable(session, endpoint, delivery, inp.attempt, DeliveryStatus.FAILED, disabled)
            # Not scaled with the retry delays: the threshold is about the receiver's outage, not our schedule.
            if endpoint.failing_since is not None and at - endpoint.failing_since >= DISABLE_AFTER:
                mark_failed(delivery.id, session=session, error=result.error)
                disabled = disable_endpoint(endpoint.id, session=session, reason=DISABLED_FAILING, now=at)
                return self._after_disable(session, endpoint, delivery, inp.attempt, DeliveryStatus.FAILED, disabled)
            delay = next_delay(inp.schedule_index)
            if delay is None:
                mark_failed(delivery.id, session=session, error=f"gave up after {inp.attempt} attempts: {result.error}")
                return _final(DeliveryStatus.FAILED.value)
            delay *= inp.retry_scale
            if result.retry_after_s is not None and result.retry_after_s > 0:
                # The receiver's wish is honoured as asked (not scaled), within the schedule's cap.
                delay = max(delay, min(result.retry_after_s, RETRY_AFTER_CAP_S))
            mark_retrying(delivery.id, session=session, next_retry_at=at + timedelta(seconds=delay), now=at)
            return _Final(DeliverAttemptResult(done=False, outcome="retry", delay_s=delay))

    def _after_disable(
        self,
        session: Session,
        endpoint: WebhookEndpoint,
        delivery: WebhookDelivery,
        attempt: int,
        status: DeliveryStatus,
        disabled: bool,
    ) -> _Final:
        if not disabled:
            return _final(status.value)
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
        fan_out(session, workspace=endpoint.workspace, event_type=envelope.type, event_id=envelope.id, payload=payload)
        return _final(status.value, disabled=envelope, session=session)

    async def _announce(self, final: _Final) -> None:
        """Start the deliveries (and AMQP publication) of a ``webhook.endpoint_disabled`` event."""
        if final.disabled is None:
            return
        client = activity.client()
        task_queue = activity.info().task_queue
        await start_delivery_workflows(client, task_queue=task_queue, settings=self._settings, deliveries=final.pending)
        if self._settings.amqp_url:
            await start_amqp_publish(client, task_queue=task_queue, envelope=final.disabled)

    # -- activities --

    @activity.defn(name=DELIVER_WEBHOOK)
    async def deliver_webhook(self, inp: DeliverAttemptInput) -> DeliverAttemptResult:
        """Make one attempt: sign with every active secret, POST, record, and decide what comes next."""
        async with _heartbeats():
            prepared = await asyncio.to_thread(self._prepare, inp)
            if isinstance(prepared, _Final):
                await self._announce(prepared)
                return prepared.result
            body, headers = prepare_request(prepared.envelope, secrets=prepared.secrets, attempt=inp.attempt)
            result = await post_event(
                self._session(),
                prepared.url,
                body,
                headers,
                timeout_s=inp.timeout_s,
                allow_private=self._settings.webhook_allow_private,
            )
            WEBHOOK_DELIVERIES.labels(result.outcome.value).inc()
            final = await asyncio.to_thread(self._record, inp, result)
            await self._announce(final)
            return final.result

    @activity.defn(name=PUBLISH_EVENT_AMQP)
    async def publish_event_amqp(self, inp: AmqpPublishInput) -> None:
        """Publish one event to the exchange and wait for the broker's confirmation (raises to retry)."""
        publisher = self._amqp
        if publisher is None:
            # Retryable on purpose: a worker started without QP_AMQP_URL must not drop the event.
            raise ApplicationError("the AMQP sink is not configured on this worker", type="AMQP_NOT_CONFIGURED")
        envelope = EventEnvelope.model_validate(inp.envelope)
        headers = {"workspace": envelope.workspace, "run_id": envelope.run_id or "", "seq": str(envelope.seq or "")}
        # One connection per worker, reconnected on demand after a broker failure.
        await publisher.publish(envelope.type, envelope.to_body(), message_id=envelope.id, headers=headers)
