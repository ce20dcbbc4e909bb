"""Deliveries handed by a store straight to its process's dispatcher, claimed: sent once, and never lost.

- A worker that dies after the store committed (the deliveries claimed for it) and before sending them: another
  dispatcher sends them once the lease has run out, exactly once, and not before.
- An endpoint with enough in flight gets its next deliveries stored unclaimed; until a claim has taken them, no
  fresh event's delivery to it is handed over ahead of them.
"""

from __future__ import annotations

import asyncio
import collections
import time

import pytest
from aiohttp import web
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from activities.events import record_outbox_event
from quantapilot.db import session_scope
from quantapilot.secretbox import load_keyring
from quantapilot.settings import Settings
from quantapilot.webhooks.dispatcher import Dispatcher
from quantapilot.webhooks.endpoints import create_endpoint as store_endpoint
from quantapilot.webhooks.outbox_store import StoredEvent, store_outbox_event
from quantapilot.webhooks.tables import WebhookDelivery
from tests.support import eventually
from tests.webhook_e2e.support import Receiver, event_records


def _statuses(engine: Engine) -> list[tuple[str, int]]:
    with Session(engine) as session:
        return [(r.status, r.attempts) for r in session.exec(select(WebhookDelivery)).all()]


async def test_webhooks_handed_deliveries_of_a_dead_worker_are_sent_once_after_the_lease(
    settings: Settings, engine: Engine
) -> None:
    short = settings.model_copy(
        update={"webhook_allow_private": True, "webhook_timeout_s": 1.0, "webhook_claim_lease_s": 3.0}
    )
    keyring = load_keyring(short)
    async with Receiver() as receiver:
        secrets: dict[str, str] = {}
        with session_scope(engine) as session:
            for path in ("/a", "/b"):
                _endpoint, secrets[path] = store_endpoint(
                    session=session, workspace="default", url=receiver.url(path), keyring=keyring, allow_private=True
                )
        dead = Dispatcher(short, engine, keyring=keyring, client=None, task_queue="unused")
        await dead.start()
        lease = dead.lease()
        assert lease is not None
        [event] = event_records(1, prefix="handoff-crash")
        stored = await asyncio.to_thread(store_outbox_event, engine, event, lease=lease)
        assert stored is not None and len(stored.handed) == 2
        # The worker dies here: committed and claimed, never adopted, never sent.
        await dead.stop()
        survivor = Dispatcher(short, engine, keyring=keyring, client=None, task_queue="unused")
        await survivor.start()
        try:
            survivor.wake()
            await asyncio.sleep(1.0)
            if time.monotonic() < lease.started + short.webhook_claim_lease_s - 0.2:
                assert receiver.received == []  # the lease still holds: nobody else sends
            await eventually(
                lambda: asyncio.to_thread(_statuses, engine),
                lambda s: s == [("delivered", 1)] * 2,
                timeout=30,
                what="both deliveries sent by the survivor",
            )
        finally:
            await survivor.stop()
    assert time.monotonic() >= lease.started + short.webhook_claim_lease_s
    sent = collections.Counter((r.path, str(r.event["id"])) for r in receiver.received)
    assert sent == {("/a", event.id): 1, ("/b", event.id): 1}
    assert all(r.verified(secrets[r.path]) for r in receiver.received)


async def test_webhooks_saturated_endpoint_hands_nothing_over_until_its_backlog_is_claimed(
    settings: Settings, engine: Engine
) -> None:
    one = settings.model_copy(update={"webhook_allow_private": True, "webhook_endpoint_concurrency": 1})
    keyring = load_keyring(one)
    release = asyncio.Event()

    async def held(request: web.Request, count: int) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"ok": True})

    async with Receiver(behaviour=held) as receiver:
        with session_scope(engine) as session:
            store_endpoint(
                session=session, workspace="default", url=receiver.url(), keyring=keyring, allow_private=True
            )
        dispatcher = Dispatcher(one, engine, keyring=keyring, client=None, task_queue="unused")
        await dispatcher.start()
        try:
            events = event_records(4, prefix="handoff-backlog")
            # Two in flight (twice the endpoint's concurrency of one): the third and fourth are stored unclaimed.
            for event in events:
                assert await record_outbox_event(engine, event, dispatcher)
            lease = dispatcher.lease()
            assert lease is not None and len(lease.exclude) == 1
            release.set()
            await eventually(
                lambda: asyncio.to_thread(_statuses, engine),
                lambda s: s == [("delivered", 1)] * 4,
                timeout=30,
                what="every delivery",
            )
            # Claimed and sent: its backlog is gone, and the next event's delivery is handed over again.
            await eventually(
                lambda: asyncio.sleep(0, dispatcher.lease()),
                lambda lease: lease is not None and not lease.exclude,
                what="the endpoint handed deliveries again",
            )
            # The rule itself: a store that left a delivery unclaimed keeps its endpoint out of the next leases
            # (however little it has in flight) until a claim, which this adoption wakes, has taken what was due.
            dispatcher.adopt(dispatcher.lease(), StoredEvent(1, [], ["we_left"]), None)
            after = dispatcher.lease()
            assert after is not None and after.exclude == {"we_left"}
            await eventually(
                lambda: asyncio.sleep(0, dispatcher.lease()),
                lambda lease: lease is not None and not lease.exclude,
                what="the backlog cleared by a claim",
            )
        finally:
            await dispatcher.stop()
    assert sorted(str(r.event["id"]) for r in receiver.received) == sorted(e.id for e in events)


async def test_webhooks_handed_deliveries_of_a_cancelled_recording_are_sent_at_once(
    settings: Settings, engine: Engine
) -> None:
    # A long lease: the deliveries must go out now, not when it has run out.
    long = settings.model_copy(update={"webhook_allow_private": True, "webhook_claim_lease_s": 120.0})
    keyring = load_keyring(long)
    async with Receiver() as receiver:
        with session_scope(engine) as session:
            store_endpoint(
                session=session, workspace="default", url=receiver.url(), keyring=keyring, allow_private=True
            )
        dispatcher = Dispatcher(long, engine, keyring=keyring, client=None, task_queue="unused")
        await dispatcher.start()
        try:
            [event] = event_records(1, prefix="handoff-cancel")
            recording = asyncio.create_task(record_outbox_event(engine, event, dispatcher))
            await asyncio.sleep(0)  # the store is under way in its thread
            recording.cancel()
            with pytest.raises(asyncio.CancelledError):
                await recording
            await eventually(
                lambda: asyncio.to_thread(_statuses, engine),
                lambda s: s == [("delivered", 1)],
                timeout=20,
                what="the handed delivery sent although its recording was cancelled",
            )
        finally:
            await dispatcher.stop()
    assert [str(r.event["id"]) for r in receiver.received] == [event.id]
