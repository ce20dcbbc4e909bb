"""An endpoint whose signing secret no configured key decrypts (the key ring was rotated away from its key).

Before, such a delivery was put back on the retry schedule at every claim and retried for days, while nothing
could ever be sent. Now it settles at once: the delivery ``failed`` with ``last_error`` starting with the stable
code ``secret_undecryptable``, nothing sent, no attempt recorded, and the endpoint disabled with that reason (and
its ``webhook.endpoint_disabled`` event). Once the operator restores the key: re-enable, redeliver (or recover).
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.events import store_event_with_deliveries
from activities.webhooks import WebhookActivities
from quantapilot.db import session_scope
from quantapilot.secretbox import KeyRing, generate_key, parse_key
from quantapilot.settings import Settings
from quantapilot.webhooks.contracts import DeliverAttemptInput, delivery_workflow_id, outbox_owner
from quantapilot.webhooks.delivery import DISABLED_UNDECRYPTABLE, SECRET_UNDECRYPTABLE_ERROR
from quantapilot.webhooks.dispatcher import Dispatcher
from quantapilot.webhooks.endpoints import create_endpoint as store_endpoint
from quantapilot.webhooks.endpoints import update_endpoint
from quantapilot.webhooks.envelopes import ENDPOINT_DISABLED
from quantapilot.webhooks.fanout import fan_out
from quantapilot.webhooks.recovery import redeliver
from quantapilot.webhooks.tables import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tests.support import eventually
from tests.webhook_e2e.support import Receiver, event_records


def _ring(*keys: str) -> KeyRing:
    return KeyRing([parse_key(k, source="test") for k in keys])


def _delivery_of(engine: Engine, endpoint_id: str) -> WebhookDelivery:
    """The endpoint's one delivery of a run event (not its own ``webhook.endpoint_disabled`` record)."""
    with Session(engine) as session:
        return session.exec(
            select(WebhookDelivery).where(
                col(WebhookDelivery.endpoint_id) == endpoint_id, col(WebhookDelivery.event_type) != ENDPOINT_DISABLED
            )
        ).one()


def _attempts(engine: Engine, delivery_id: str) -> int:
    with Session(engine) as session:
        return len(session.exec(select(WebhookAttempt).where(col(WebhookAttempt.delivery_id) == delivery_id)).all())


async def _run_dispatcher(settings: Settings, engine: Engine, keyring: KeyRing) -> Dispatcher:
    dispatcher = Dispatcher(settings, engine, keyring=keyring, client=None, task_queue="unused")
    await dispatcher.start()
    dispatcher.wake()
    return dispatcher


async def test_webhooks_undecryptable_secret_fails_delivery_and_disables_endpoint(
    settings: Settings, engine: Engine, receiver: Receiver
) -> None:
    old_key, new_key = generate_key(), generate_key()
    with session_scope(engine) as session:
        # Stored under a key the dispatcher no longer has; the watcher's secret is under the current key.
        lost, lost_secret = store_endpoint(
            session=session, workspace="default", url=receiver.url("/lost"), keyring=_ring(old_key), allow_private=True
        )
        watcher, watcher_secret = store_endpoint(
            session=session, workspace="default", url=receiver.url("/watch"), keyring=_ring(new_key), allow_private=True
        )
        lost_id, watcher_id = lost.id, watcher.id
    [event] = event_records(1, prefix="secret")
    await asyncio.to_thread(store_event_with_deliveries, engine, event, outbox=True)

    dispatcher = await _run_dispatcher(settings, engine, _ring(new_key))
    try:

        def watched() -> list[dict[str, Any]]:
            return [r.event for r in receiver.delivered("/watch")]

        seen = await eventually(
            lambda: asyncio.sleep(0, watched()),
            lambda got: {e["type"] for e in got} >= {event.type, ENDPOINT_DISABLED},
            what="the event and the endpoint_disabled event at the watcher",
        )
        settled = await eventually(
            lambda: asyncio.sleep(0, _delivery_of(engine, lost_id)),
            lambda d: d.status != "pending",
            what="the undecryptable delivery settled",
        )
        # Several claim turns later it is still settled: nothing puts it back on the schedule.
        await asyncio.sleep(1.0)
    finally:
        await dispatcher.stop()

    assert (settled.status, settled.last_error) == ("failed", SECRET_UNDECRYPTABLE_ERROR)
    assert SECRET_UNDECRYPTABLE_ERROR.startswith(f"{DISABLED_UNDECRYPTABLE}: ")
    row = _delivery_of(engine, lost_id)
    assert (row.status, row.attempts, row.next_attempt_at, row.claim_token) == ("failed", 0, None, None)
    assert _attempts(engine, lost_id) == 0
    assert receiver.delivered("/lost") == []
    with Session(engine) as session:
        endpoint = session.get(WebhookEndpoint, lost_id)
        assert endpoint is not None
        assert (endpoint.enabled, endpoint.disabled_reason) == (False, DISABLED_UNDECRYPTABLE)
    [disabled] = [e for e in seen if e["type"] == ENDPOINT_DISABLED]
    assert disabled["data"]["endpoint_id"] == lost_id
    assert disabled["data"]["reason"] == DISABLED_UNDECRYPTABLE
    assert disabled["data"]["delivery_id"] == row.id
    assert disabled["data"]["last_error"] == SECRET_UNDECRYPTABLE_ERROR
    assert all(r.verified(watcher_secret) for r in receiver.delivered("/watch"))
    # The operator's detail (which key is missing) is never in what the tenant sees.
    assert _ring(old_key).primary_id not in str(disabled) + (row.last_error or "")
    assert watcher_id != lost_id

    # The operator puts the old key back (as a previous key), re-enables the endpoint and redelivers: it arrives.
    with session_scope(engine) as session:
        update_endpoint(lost_id, session=session, workspace="default", enabled=True)
        redeliver(row.id, session=session, workspace="default", workflow_id=outbox_owner(row.id))
    dispatcher = await _run_dispatcher(settings, engine, _ring(new_key, old_key))
    try:
        await eventually(
            lambda: asyncio.sleep(0, receiver.delivered("/lost")), lambda got: len(got) == 1, what="the redelivery"
        )
    finally:
        await dispatcher.stop()
    [arrived] = receiver.delivered("/lost")
    assert arrived.event["id"] == event.id
    assert arrived.verified(lost_secret)


async def test_webhooks_undecryptable_secret_settles_the_workflow_path_attempt(
    client: Client, settings: Settings, engine: Engine, receiver: Receiver
) -> None:
    """The same verdict for a delivery owned by a delivery workflow: its attempt is done, not retried."""
    old_key, new_key = generate_key(), generate_key()
    with session_scope(engine) as session:
        endpoint, _ = store_endpoint(
            session=session, workspace="default", url=receiver.url(), keyring=_ring(old_key), allow_private=True
        )
        endpoint_id = endpoint.id
        fan_out(
            session,
            workspace="default",
            event_type="run.started",
            event_id="evt_undecryptable",
            payload={
                "id": "evt_undecryptable",
                "type": "run.started",
                "created_at": "2025-01-01T00:00:00Z",
                "workspace": "default",
            },
        )
    delivery = _delivery_of(engine, endpoint_id)
    activities = WebhookActivities(settings.model_copy(update={"secret_key": new_key}), engine)
    inp = DeliverAttemptInput(
        delivery_id=delivery.id,
        attempt=1,
        schedule_index=1,
        workflow_id=delivery.workflow_id or delivery_workflow_id(delivery.id),
        retry_scale=1.0,
        timeout_s=5.0,
    )
    try:
        result = await ActivityEnvironment(client=client).run(activities.deliver_webhook, inp)
    finally:
        await activities.close()
    assert (result.done, result.outcome) == (True, "failed")
    row = _delivery_of(engine, endpoint_id)
    assert (row.status, row.last_error, row.attempts) == ("failed", SECRET_UNDECRYPTABLE_ERROR, 0)
    with Session(engine) as session:
        stored = session.get(WebhookEndpoint, endpoint_id)
        assert stored is not None and (stored.enabled, stored.disabled_reason) == (False, DISABLED_UNDECRYPTABLE)
    assert receiver.received == []
