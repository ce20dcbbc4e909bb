"""Drills of the outbox dispatcher: two dispatchers on PostgreSQL, a receiver down then up, many dead endpoints."""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from activities.events import record_outbox_event, store_event_with_deliveries
from quantapilot.db import create_all, make_engine, session_scope
from quantapilot.events.envelope import EventEnvelope
from quantapilot.secretbox import load_keyring
from quantapilot.settings import Settings
from quantapilot.webhooks.dispatcher import Dispatcher
from quantapilot.webhooks.endpoints import create_endpoint as store_endpoint
from quantapilot.webhooks.outbox_store import Lease, StoredEvent
from quantapilot.webhooks.tables import WebhookDelivery
from tests.support import eventually
from tests.webhook_e2e.conftest import StackFactory
from tests.webhook_e2e.support import (
    Receiver,
    all_status,
    assert_gapless_logs,
    create_endpoint,
    event_records,
    fast_run,
    finished_events,
    free_port,
    wait_deliveries,
)


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    """A fresh PostgreSQL database with the schema (whatever QP_TEST_DATABASE says)."""
    engine = make_engine(postgres_url)
    create_all(engine)
    yield engine
    engine.dispose()


#: The HTTP timeout of the two-dispatcher drill; its lease is three of them and its receiver's answers take up to 60%.
SLOW_TIMEOUT_S = 2.0


@pytest.fixture
async def slow_receiver() -> AsyncIterator[Receiver]:
    """A receiver that answers 200 after a random 0-60% of the HTTP timeout, so attempts of both dispatchers overlap."""

    async def slow(request: web.Request, count: int) -> web.StreamResponse:
        await asyncio.sleep(random.uniform(0, 0.6 * SLOW_TIMEOUT_S))
        return web.json_response({"ok": True})

    async with Receiver(behaviour=slow) as rec:
        yield rec


class _CountingHandoff:
    """A dispatcher as a store sees it, counting the deliveries handed to it."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self.handed = 0

    def lease(self) -> Lease | None:
        return self._dispatcher.lease()

    def adopt(self, lease: Lease | None, stored: StoredEvent | None, envelope: EventEnvelope | None) -> None:
        self.handed += len(stored.handed) if stored is not None else 0
        self._dispatcher.adopt(lease, stored, envelope)


@pytest.mark.postgres
@pytest.mark.parametrize("handoff", [False, True], ids=["claimed", "handed"])
async def test_webhooks_two_dispatchers_on_postgres_never_double_send(
    settings: Settings, postgres_url: str, pg_engine: Engine, slow_receiver: Receiver, handoff: bool
) -> None:
    # handed: each event is stored as record_event stores it, its deliveries handed (claimed in the event's own
    # transaction) to one of the two dispatchers in turn, while both also claim whatever is left.
    # The shortest lease the settings allow (3 HTTP timeouts) and attempts close to the timeout: the situation in
    # which an earlier design let a lease run out and a second dispatcher send the same delivery again. A 2 s
    # timeout (answers within 0-1.2 s, the same proportions as 1 s and 0-0.6 s): with 1 s, a loaded CI machine's
    # event-loop lag alone could push an answer past the timeout, and the retry that follows looked like a
    # double send (seen once under load).
    pg = settings.model_copy(
        update={
            "database_url": postgres_url,
            "webhook_allow_private": True,
            "webhook_retry_scale": 0.0005,
            "webhook_timeout_s": SLOW_TIMEOUT_S,
            "webhook_claim_lease_s": 3 * SLOW_TIMEOUT_S,
            "webhook_endpoint_concurrency": 2,
        }
    )
    keyring = load_keyring(pg)
    paths = [f"/e{n}" for n in range(4)]
    with session_scope(pg_engine) as session:
        for path in paths:
            store_endpoint(
                session=session, workspace="default", url=slow_receiver.url(path), keyring=keyring, allow_private=True
            )
    engines = [make_engine(postgres_url) for _ in range(2)]
    dispatchers = [Dispatcher(pg, e, keyring=keyring, client=None, task_queue="unused") for e in engines]
    events = event_records(40, prefix="drill")
    try:
        for dispatcher in dispatchers:
            await dispatcher.start()
        handed = 0
        for index, event in enumerate(events):  # recorded while both dispatchers drain
            if handoff:
                counting = _CountingHandoff(dispatchers[index % 2])
                assert await record_outbox_event(pg_engine, event, counting)
                handed += counting.handed
                continue
            await asyncio.to_thread(store_event_with_deliveries, pg_engine, event, outbox=True)
            for dispatcher in dispatchers:
                dispatcher.wake()
        expected = {(path, e.id) for path in paths for e in events}

        def delivered() -> set[tuple[str, str]]:
            return {(r.path, str(r.event["id"])) for r in slow_receiver.delivered()}

        # Handed over: at least the first event's four, before any endpoint had enough in flight.
        assert handed >= (len(paths) if handoff else 0)
        await eventually(lambda: asyncio.sleep(0, delivered()), lambda got: got >= expected, what="every delivery")
        # Past a whole lease: a claim that ran out would be re-sent now.
        await asyncio.sleep(pg.webhook_claim_lease_s + 1.0)
    finally:
        for dispatcher in dispatchers:
            await dispatcher.stop()
        for engine in engines:
            engine.dispose()
    sent = collections.Counter((r.path, str(r.event["id"])) for r in slow_receiver.received)
    assert set(sent) == expected
    assert [k for k, n in sent.items() if n > 1] == []
    with Session(pg_engine) as session:
        statuses = dict(
            session.exec(select(WebhookDelivery.status, func.count()).group_by(col(WebhookDelivery.status))).all()
        )
        attempts = list(session.exec(select(WebhookDelivery.attempts)).all())
    assert statuses == {"delivered": len(expected)}
    assert set(attempts) == {1}


async def test_webhooks_receiver_down_then_up_gets_every_event(make_stack: StackFactory) -> None:
    stack = await make_stack()
    api = stack.api
    port = free_port()
    endpoint = await create_endpoint(api, f"http://127.0.0.1:{port}/hook")
    run_ids = [await fast_run(api, f"down{n}") for n in range(3)]
    events = [e for run_id in run_ids for e in await finished_events(api, run_id)]
    expected = {e["id"] for e in events}

    def retried(rows: list[dict[str, Any]]) -> bool:
        counts = [int(r["attempt_count"]) for r in rows]
        return len(rows) == len(expected) and min(counts) >= 2

    # Nothing listens: every delivery fails, and is retried, while the receiver is down.
    rows = await wait_deliveries(api, endpoint["id"], retried)
    assert all(r["status"] == "pending" for r in rows)
    async with Receiver(port=port) as receiver:
        await eventually(
            lambda: asyncio.sleep(0, set(receiver.event_ids())),
            lambda got: got >= expected,
            timeout=60,
            what="every event delivered once the receiver is up",
        )
        rows = await wait_deliveries(api, endpoint["id"], all_status("delivered", len(expected)))
    assert {r["event_id"] for r in rows} == expected
    assert all(r.verified(endpoint["secret"]) for r in receiver.received)
    await assert_gapless_logs(api, run_ids)
