"""Drill: the database goes away while the webhook outbox dispatcher is delivering, then comes back.

Events are recorded with their deliveries pending and a dispatcher is draining them (a few claimed, sending and
recording at a time) when the database starts refusing connections and drops the open ones: claims, lease
renewals and recordings all fail for longer than a lease. Once it is back, every delivery arrives at least once
(counted by delivery id at the receiver), none is lost, each delivery's log is consistent (attempts 1..n, the last
one delivered, every recorded attempt one that reached the receiver), and the same dispatcher, never restarted,
delivers events recorded after the outage.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import psycopg
import pytest
from aiohttp import web
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from activities.events import store_event_with_deliveries
from quantapilot.db import make_engine, session_scope
from quantapilot.events.record import EventRecord
from quantapilot.secretbox import load_keyring
from quantapilot.settings import Settings
from quantapilot.webhooks.dispatcher import Dispatcher
from quantapilot.webhooks.endpoints import create_endpoint as store_endpoint
from quantapilot.webhooks.tables import WebhookAttempt, WebhookDelivery
from tests.dbfixtures import own_postgres_database
from tests.drills.helpers import refuse_connections
from tests.support import eventually
from tests.webhook_e2e.support import Receiver, event_records

ENDPOINTS = 3
EVENTS = 30
# Longer than a lease (3 s below): claims taken before the outage run out during it.
OUTAGE_S = 5.0


@dataclass(frozen=True)
class OutageDatabase:
    """A PostgreSQL database of the drill's own (its connections are refused, then restored)."""

    url: str
    name: str
    engine: Engine


@pytest.fixture
def outage_database() -> Iterator[OutageDatabase]:
    with own_postgres_database() as (url, name, engine):
        try:
            yield OutageDatabase(url=url, name=name, engine=engine)
        finally:
            refuse_connections(name, refuse=False)  # whatever the test left, so the drop can close them


@pytest.fixture
async def paced_receiver() -> AsyncIterator[Receiver]:
    """A receiver that answers 200 after 0.2 s: the batch is still being sent when the database goes."""

    async def paced(request: web.Request, count: int) -> web.StreamResponse:
        await asyncio.sleep(0.2)
        return web.json_response({"ok": True})

    async with Receiver(behaviour=paced) as rec:
        yield rec


def _record(engine: Engine, events: list[EventRecord]) -> None:
    for event in events:
        store_event_with_deliveries(engine, event, outbox=True)


def _delivery_ids(engine: Engine, paths: dict[str, str]) -> dict[tuple[str, str], str]:
    """(receiver path, event id) -> delivery id, for every delivery stored."""
    with Session(engine) as session:
        rows = session.exec(select(WebhookDelivery)).all()
    return {(paths[r.endpoint_id], r.event_id): r.id for r in rows}


def _received_by_delivery(receiver: Receiver, ids: dict[tuple[str, str], str]) -> tuple[collections.Counter[str], ...]:
    """Requests and 2xx answers per delivery id."""
    sent: collections.Counter[str] = collections.Counter()
    ok: collections.Counter[str] = collections.Counter()
    for r in receiver.received:
        delivery_id = ids[(r.path, str(r.event["id"]))]
        sent[delivery_id] += 1
        if 200 <= r.status < 300:
            ok[delivery_id] += 1
    return sent, ok


@pytest.mark.slow
@pytest.mark.postgres
async def test_drill_database_outage_during_dispatch_loses_no_delivery(
    settings: Settings, outage_database: OutageDatabase, paced_receiver: Receiver
) -> None:
    url, name, engine = outage_database.url, outage_database.name, outage_database.engine
    drill = settings.model_copy(
        update={
            "database_url": url,
            "webhook_allow_private": True,
            "webhook_retry_scale": 0.0005,
            "webhook_timeout_s": 1.0,
            "webhook_claim_lease_s": 3.0,
            "webhook_endpoint_concurrency": 2,
            # A few claimed at a time: when the database goes, some deliveries are mid-attempt, some answered but
            # not recorded, and most not claimed yet.
            "webhook_dispatch_inflight": 6,
        }
    )
    keyring = load_keyring(drill)
    paths: dict[str, str] = {}
    secrets: dict[str, str] = {}
    with session_scope(engine) as session:
        for n in range(ENDPOINTS):
            endpoint, secret = store_endpoint(
                session=session,
                workspace="default",
                url=paced_receiver.url(f"/e{n}"),
                keyring=keyring,
                allow_private=True,
            )
            paths[endpoint.id], secrets[f"/e{n}"] = f"/e{n}", secret
    before = event_records(EVENTS, prefix="outage")
    await asyncio.to_thread(_record, engine, before)
    ids = _delivery_ids(engine, paths)
    assert len(ids) == ENDPOINTS * EVENTS

    # The dispatcher has its own engine and pool, as a worker's has.
    dispatcher_engine = make_engine(url)
    dispatcher = Dispatcher(drill, dispatcher_engine, keyring=keyring, client=None, task_queue="unused")
    try:
        await dispatcher.start()
        dispatcher.wake()
        await eventually(
            lambda: asyncio.sleep(0, len(paced_receiver.received)), lambda n: n >= 6, what="dispatch under way"
        )
        refuse_connections(name, refuse=True)
        try:
            arrived_before = {(r.path, str(r.event["id"])) for r in paced_receiver.delivered()}
            # The outage is real: nobody gets a connection.
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=3).close()
            await asyncio.sleep(OUTAGE_S)
        finally:
            refuse_connections(name, refuse=False)
        # The outage came mid-dispatch: most deliveries had not arrived.
        assert len(arrived_before) < len(ids) // 2, len(arrived_before)

        await eventually(
            lambda: asyncio.sleep(0, {ids[(r.path, str(r.event["id"]))] for r in paced_receiver.delivered()}),
            lambda got: got >= set(ids.values()),
            timeout=90,
            what="every delivery after the outage",
        )

        # The same dispatcher (never restarted) delivers what is recorded after the outage.
        after = event_records(3, prefix="after")
        await asyncio.to_thread(_record, engine, after)
        dispatcher.wake()
        ids = _delivery_ids(engine, paths)
        assert len(ids) == ENDPOINTS * (EVENTS + len(after))

        def settled() -> dict[str, str]:
            with Session(engine) as session:
                return {r.id: r.status for r in session.exec(select(WebhookDelivery)).all()}

        await eventually(
            lambda: asyncio.sleep(0, settled()),
            lambda statuses: len(statuses) == len(ids) and set(statuses.values()) == {"delivered"},
            timeout=90,
            what="every delivery recorded delivered",
        )
    finally:
        await dispatcher.stop()
        dispatcher_engine.dispose()

    sent, ok = _received_by_delivery(paced_receiver, ids)
    # Every delivery arrived at least once; nothing else arrived.
    assert set(ok) == set(ids.values()) == set(sent)
    assert [d for d in ids.values() if ok[d] < 1] == []
    assert all(r.verified(secrets[r.path]) for r in paced_receiver.received)

    with Session(engine) as session:
        rows = {r.id: r for r in session.exec(select(WebhookDelivery)).all()}
        attempts = session.exec(select(WebhookAttempt).order_by(col(WebhookAttempt.attempt))).all()
    by_delivery: dict[str, list[WebhookAttempt]] = collections.defaultdict(list)
    for attempt in attempts:
        by_delivery[attempt.delivery_id].append(attempt)
    for delivery_id, row in rows.items():
        log = by_delivery[delivery_id]
        # Gapless attempts 1..n, n the row's count, the last one the delivery; no claim or retry left behind.
        assert [a.attempt for a in log] == list(range(1, row.attempts + 1)), delivery_id
        assert row.attempts >= 1 and log[-1].outcome == "delivered", (delivery_id, [a.outcome for a in log])
        assert (row.status, row.next_attempt_at, row.claim_token, row.claimed_until) == ("delivered", None, None, None)
        assert row.delivered_at is not None
        # Every recorded attempt reached the receiver (it was up throughout); a request can be unrecorded (its
        # claim ran out during the outage and the delivery was sent again: at least once, never lost).
        assert row.attempts <= sent[delivery_id], (delivery_id, row.attempts, sent[delivery_id])
