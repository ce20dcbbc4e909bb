"""Event delivery activities: one webhook attempt and one AMQP publication (Temporal adapters).

What an attempt does to its delivery and endpoint (retries, disabling, redelivery ownership) is
:mod:`quantapilot.webhooks.delivery`; this module loads and records through it in a thread, sends in between
with :func:`~quantapilot.webhooks.sender.post_event`, heartbeats, and starts the workflows of a
``webhook.endpoint_disabled`` event an attempt recorded, after its commit.
"""

from __future__ import annotations

import asyncio

import aiohttp
from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeats import heartbeating
from quantapilot.db import session_scope
from quantapilot.events.envelope import EventEnvelope
from quantapilot.observability import WEBHOOK_DELIVERIES
from quantapilot.review.links import with_review_url
from quantapilot.secretbox import load_keyring
from quantapilot.settings import Settings
from quantapilot.webhooks.amqp import AmqpPublisher
from quantapilot.webhooks.contracts import (
    DELIVER_WEBHOOK,
    PUBLISH_EVENT_AMQP,
    AmqpPublishInput,
    DeliverAttemptInput,
    DeliverAttemptResult,
)
from quantapilot.webhooks.delivery import AttemptVerdict, PreparedAttempt, prepare_attempt, record_outcome
from quantapilot.webhooks.sender import post_event, prepare_request
from quantapilot.webhooks.starts import start_amqp_publish, start_delivery_workflows
from quantapilot.webhooks.tables import DeliveryResult


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

    def _prepare(self, inp: DeliverAttemptInput) -> PreparedAttempt | AttemptVerdict:
        with session_scope(self._engine) as session:
            return prepare_attempt(session, inp, keyring=self._keyring)

    def _record(self, inp: DeliverAttemptInput, result: DeliveryResult) -> AttemptVerdict:
        with session_scope(self._engine) as session:
            return record_outcome(session, inp, result)

    async def _announce(self, final: AttemptVerdict) -> None:
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
        async with heartbeating(at_start=False):
            prepared = await asyncio.to_thread(self._prepare, inp)
            if isinstance(prepared, AttemptVerdict):
                await self._announce(prepared)
                return prepared.result
            # gate.requested gains its review_url here, at delivery: never in a history, a row or a log line.
            envelope = with_review_url(self._settings, prepared.envelope)
            body, headers = prepare_request(envelope, secrets=prepared.secrets, attempt=inp.attempt)
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
        envelope = with_review_url(self._settings, EventEnvelope.model_validate(inp.envelope))
        headers = {"workspace": envelope.workspace, "run_id": envelope.run_id or "", "seq": str(envelope.seq or "")}
        # One connection per worker, reconnected on demand after a broker failure.
        await publisher.publish(envelope.type, envelope.to_body(), message_id=envelope.id, headers=headers)
