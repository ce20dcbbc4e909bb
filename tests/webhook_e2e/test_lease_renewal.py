"""Lease renewal: a claim whose attempts take longer than its lease stays with its dispatcher.

One dispatcher claims a batch of deliveries to one endpoint that it sends one at a time to a slow receiver, so the
batch takes well over a lease (``webhook_claim_lease_s``) to get through. The dispatcher renews its claim while the
attempts run; a second dispatcher, started once the batch is claimed, must not take any of it over. Without the
renewal the first dispatcher would stop sending once its lease might run out (and log that it left them for
re-claim), the second would re-claim them, and the endpoint would see two attempts at once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from datetime import datetime

import pytest
from aiohttp import web
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from activities.events import store_event_with_deliveries
from quantapilot.db import make_engine, session_scope
from quantapilot.events.envelope import aware
from quantapilot.events.record import EventRecord
from quantapilot.secretbox import load_keyring
from quantapilot.settings import Settings
from quantapilot.webhooks.dispatcher import Dispatcher
from quantapilot.webhooks.endpoints import create_endpoint as store_endpoint
from quantapilot.webhooks.sender import ATTEMPT_HEADER
from quantapilot.webhooks.tables import WebhookAttempt, WebhookDelivery
from tests.support import eventually
from tests.webhook_e2e.support import Receiver, event_records

DELIVERIES = 24
ANSWER_S = 0.3  # per attempt, one at a time: the batch takes over 7 s, beyond the 6 s lease


def _record(engine: Engine, events: list[EventRecord]) -> None:
    for event in events:
        store_event_with_deliveries(engine, event, outbox=True)


def _claims(engine: Engine) -> tuple[int, set[str], datetime | None]:
    """Rows claimed, their claim tokens, and the latest lease end."""
    with Session(engine) as session:
        rows = session.exec(select(WebhookDelivery).where(col(WebhookDelivery.claim_token).is_not(None))).all()
    until = max((aware(r.claimed_until) for r in rows if r.claimed_until is not None), default=None)
    return len(rows), {str(r.claim_token) for r in rows}, until


def _statuses(engine: Engine) -> dict[str, tuple[str, int]]:
    with Session(engine) as session:
        return {r.id: (r.status, r.attempts) for r in session.exec(select(WebhookDelivery)).all()}


async def test_webhooks_lease_renewal_keeps_a_slow_batch_with_its_dispatcher(
    settings: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="quantapilot.webhooks")
    lease = settings.model_copy(
        update={
            # Far above ANSWER_S, so a loaded machine does not time attempts out; the lease is the shortest allowed.
            "webhook_timeout_s": 2.0,
            "webhook_claim_lease_s": 6.0,
            "webhook_endpoint_concurrency": 1,
        }
    )
    in_flight = 0
    most = 0

    async def slow(request: web.Request, count: int) -> web.StreamResponse:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await asyncio.sleep(ANSWER_S)
        finally:
            in_flight -= 1
        return web.json_response({"ok": True})

    async with Receiver(behaviour=slow) as receiver:
        with session_scope(engine) as session:
            _endpoint, secret = store_endpoint(
                session=session,
                workspace="default",
                url=receiver.url(),
                keyring=load_keyring(lease),
                allow_private=True,
            )
        events = event_records(DELIVERIES, prefix="lease")
        await asyncio.to_thread(_record, engine, events)
        engines = [make_engine(lease.database_url) for _ in range(2)]
        first, second = (
            Dispatcher(lease, e, keyring=load_keyring(lease), client=None, task_queue="unused") for e in engines
        )
        offset = time.time() - time.monotonic()  # receipt times are monotonic
        try:
            await first.start()
            first.wake()
            _held, tokens, first_until = await eventually(
                lambda: asyncio.to_thread(_claims, engine),
                lambda c: c[0] == DELIVERIES,
                what="the whole batch claimed by the first dispatcher",
            )
            assert len(tokens) == 1 and first_until is not None
            await second.start()  # from now on it polls for due or expired claims
            second.wake()
            # The renewal is visible in the database: under the same claim, the lease moves past where it was put.
            await eventually(
                lambda: asyncio.to_thread(_claims, engine),
                lambda c: c[1] == tokens and c[2] is not None and (c[2] - first_until).total_seconds() >= 1.0,
                timeout=30,
                what="the lease renewed",
            )
            await eventually(
                lambda: asyncio.to_thread(_statuses, engine),
                lambda s: len(s) == DELIVERIES and all(status == "delivered" for status, _ in s.values()),
                timeout=60,
                what="every delivery recorded",
            )
            # Give the second dispatcher a lease's worth of turns to take anything over (it must not).
            await asyncio.sleep(1.0)
        finally:
            for dispatcher in (first, second):
                await dispatcher.stop()
            for e in engines:
                e.dispose()

    # The batch outlived its first lease: without renewal it could not have stayed with one dispatcher.
    last = max(r.at for r in receiver.received) + offset
    assert last > first_until.timestamp(), (last, first_until)
    with Session(engine) as session:
        rows = {r.event_id: r for r in session.exec(select(WebhookDelivery)).all()}
        log = [(a.delivery_id, a.attempt, a.outcome, a.error) for a in session.exec(select(WebhookAttempt)).all()]
    sent = collections.Counter((str(r.event["id"]), int(r.headers[ATTEMPT_HEADER])) for r in receiver.received)
    # No attempt was sent twice, and every request was an attempt its delivery recorded: nobody sent outside the
    # claim. (An attempt timed out on a loaded machine is retried as the next attempt, which is no double send.)
    assert [k for k, n in sent.items() if n > 1] == [], (log, caplog.text)
    assert set(sent) == {(e.id, n) for e in events for n in range(1, rows[e.id].attempts + 1)}, log
    assert {row.status for row in rows.values()} == {"delivered"}
    assert most == 1  # only the first dispatcher's one-at-a-time gate ever sent to the endpoint
    assert all(r.verified(secret) for r in receiver.received)
    problems = [
        r.getMessage() for r in caplog.records if "lease too short" in r.getMessage() or "claim lost" in r.getMessage()
    ]
    assert problems == []
