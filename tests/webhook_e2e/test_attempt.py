"""One delivery attempt (the ``deliver_webhook`` activity) at the end of the schedule, on a real database.

The whole schedule end to end would take 24 timer firings, and the dev server fires timers with one-second
precision; the workflow's loop is covered by the other tests, the last attempt's verdict here.
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web
from sqlalchemy.engine import Engine
from sqlmodel import select
from temporalio.testing import ActivityEnvironment

from activities.webhooks import WebhookActivities
from quantapilot.db import session_scope, utcnow
from quantapilot.secretbox import load_keyring
from quantapilot.settings import Settings
from quantapilot.webhooks.contracts import THROTTLED, DeliverAttemptInput, delivery_workflow_id
from quantapilot.webhooks.deliveries import list_attempts
from quantapilot.webhooks.endpoints import create_endpoint
from quantapilot.webhooks.fanout import fan_out
from quantapilot.webhooks.tables import WebhookDelivery, WebhookEndpoint
from tests.webhook_e2e.support import Receiver


async def _setup(engine: Engine, url: str, settings: Settings) -> str:
    with session_scope(engine) as session:
        endpoint, _secret = create_endpoint(
            session=session, workspace="default", url=url, keyring=load_keyring(settings)
        )
        fan_out(
            session,
            workspace="default",
            event_type="run.started",
            event_id="evt_attempt",
            payload={
                "id": "evt_attempt",
                "type": "run.started",
                "created_at": "2025-01-01T00:00:00Z",
                "workspace": "default",
            },
        )
        delivery = session.exec(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)).one()
        return delivery.id


def _input(delivery_id: str, *, attempt: int, index: int) -> DeliverAttemptInput:
    return DeliverAttemptInput(
        delivery_id=delivery_id,
        attempt=attempt,
        schedule_index=index,
        workflow_id=delivery_workflow_id(delivery_id),
        retry_scale=1.0,
        timeout_s=5.0,
    )


def _throttle_passes(engine: Engine) -> None:
    # The Retry-After wait is over (here by moving the endpoint's throttle into the past).
    with session_scope(engine) as session:
        for endpoint in session.scalars(select(WebhookEndpoint)):
            endpoint.throttled_until = utcnow() - timedelta(seconds=1)
            session.add(endpoint)


async def test_webhooks_attempt_schedule_then_gives_up(settings: Settings, engine: Engine) -> None:
    async def busy(request: web.Request, count: int) -> web.StreamResponse:
        return web.Response(status=503, headers={"Retry-After": "99999"})

    async with Receiver(behaviour=busy) as receiver:
        delivery_id = await _setup(engine, receiver.url(), settings)
        activities = WebhookActivities(settings, engine)
        env = ActivityEnvironment()
        try:
            first = await env.run(activities.deliver_webhook, _input(delivery_id, attempt=1, index=1))
            # Retry-After is honoured up to the six-hour cap.
            assert not first.done and first.delay_s == 6 * 3600.0
            # A 503 with Retry-After also throttles the endpoint: an attempt made before then sends nothing.
            early = await env.run(activities.deliver_webhook, _input(delivery_id, attempt=2, index=2))
            assert (early.done, early.outcome, len(receiver.received)) == (False, THROTTLED, 1)
            assert early.delay_s is not None and 6 * 3600.0 - 60 < early.delay_s <= 6 * 3600.0
            _throttle_passes(engine)
            middle = await env.run(activities.deliver_webhook, _input(delivery_id, attempt=24, index=24))
            assert not middle.done and middle.delay_s == 6 * 3600.0
            _throttle_passes(engine)
            last = await env.run(activities.deliver_webhook, _input(delivery_id, attempt=25, index=25))
            assert last.done and last.outcome == "failed"
            # Once settled, a repeated attempt (an activity retry) sends nothing.
            again = await env.run(activities.deliver_webhook, _input(delivery_id, attempt=25, index=25))
            assert again.done and len(receiver.received) == 3
        finally:
            await activities.close()

    with session_scope(engine) as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        assert delivery.status == "failed" and delivery.next_retry_at is None
        assert delivery.last_error == "gave up after 25 attempts: HTTP 503"
        attempts = list_attempts(delivery_id, session=session, workspace="default")
        assert [(a.attempt, a.status_code) for a in attempts] == [(1, 503), (24, 503), (25, 503)]


async def test_webhooks_attempt_by_superseded_workflow_sends_nothing(settings: Settings, engine: Engine) -> None:
    async with Receiver() as receiver:
        delivery_id = await _setup(engine, receiver.url(), settings)
        stale = _input(delivery_id, attempt=1, index=1).model_copy(update={"workflow_id": "webhook-delivery/old"})
        activities = WebhookActivities(settings, engine)
        try:
            result = await ActivityEnvironment().run(activities.deliver_webhook, stale)
        finally:
            await activities.close()
    assert result.done and result.outcome == "superseded"
    assert receiver.received == []
