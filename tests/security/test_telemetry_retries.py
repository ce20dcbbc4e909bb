"""A telemetry sender's retry is stored once: by the events' ids, or by the request's Idempotency-Key."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select
from temporalio.client import Client

from api.app import create_app
from api.lifecycle_routes import REALIZATION_OPTIONS, RealizationOptions
from quantapilot.lifecycle.telemetry import TelemetryEvent
from quantapilot.settings import Settings
from quantapilot.tokens import create_token
from tests.lifecycle_e2e.helpers import KPI, approved_target, run_stage, wait_realization
from tests.security.support import assert_envelope
from tests.support import Api

pytestmark = pytest.mark.usefixtures("worker")

OPPORTUNITY_INPUTS = {
    "discoveryNotes": "Sales pipeline conversion is slow. Too much manual work in spreadsheets. Budget approved.",
    "persona": "CFO",
    "benchmarks": [{"kpi": KPI, "value": 100, "unit": "pct"}],
}


@pytest.fixture
async def lc(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    client: Client,
    engine: Engine,
    settings: Settings,
) -> Api:
    """The API with account refreshes at most every 0.2 s, and an all-scopes token."""
    app = create_app(settings, client=client, engine=engine)
    app[REALIZATION_OPTIONS] = RealizationOptions(window_s=0.2)
    token, _ = create_token(engine, workspace="default", subject="sender")
    return Api(client=await aiohttp_client(app), token=token)


async def account_with_targets(api: Api) -> str:
    account = str(uuid.uuid4())
    await run_stage(api, account, "opportunity", OPPORTUNITY_INPUTS)
    await approved_target(api, account)
    return account


def batch(account: str, values: list[float], *, ids: list[str] | None = None) -> dict[str, Any]:
    at = datetime.now(UTC) - timedelta(hours=1)
    events = []
    for i, value in enumerate(values):
        event = {
            "accountId": account,
            "kpi": KPI,
            "value": value,
            "timestamp": (at + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z"),
        }
        if ids is not None:
            event["id"] = ids[i]
        events.append(event)
    return {"events": events}


def stored(engine: Engine, account: str) -> int:
    with Session(engine) as session:
        query = select(func.count()).select_from(TelemetryEvent).where(TelemetryEvent.account_id == account)
        return int(session.exec(query).one())


async def realized_samples(api: Api, account: str, sent: int) -> int:
    """Send one more event, then the sample count of the first refresh that includes it (samples > ``sent``)."""
    code, body = await api.post("/v1/telemetry/events", batch(account, [150.0]))
    assert code == 202, body
    events = await wait_realization(api, account, lambda d: d["samples"] > sent, what=f"more than {sent} samples")
    first = next(e for e in events if e["type"] == "realization.updated" and e["data"]["samples"] > sent)
    return int(first["data"]["samples"])


async def test_telemetry_retries_a_batch_resent_with_its_event_ids_is_stored_once(lc: Api, engine: Engine) -> None:
    account = await account_with_targets(lc)
    ids = [f"crm-{uuid.uuid4().hex}" for _ in range(3)]
    sent = batch(account, [120.0, 130.0, 140.0], ids=ids)
    code, first = await lc.post("/v1/telemetry/events", sent)
    assert code == 202 and (first["accepted"], first["duplicates"]) == (3, 0), first
    code, again = await lc.post("/v1/telemetry/events", sent)  # the sender did not see the answer: it retries
    assert code == 202 and (again["accepted"], again["duplicates"]) == (3, 3), again
    # One of the ids again, in a batch with a new event: only the new one is stored.
    mixed = batch(account, [140.0, 160.0], ids=[ids[2], f"crm-{uuid.uuid4().hex}"])
    code, partly = await lc.post("/v1/telemetry/events", mixed)
    assert code == 202 and (partly["accepted"], partly["duplicates"]) == (2, 1), partly
    assert stored(engine, account) == 4
    assert await realized_samples(lc, account, 4) == 5


async def test_telemetry_retries_a_batch_resent_with_its_idempotency_key_is_stored_once(
    lc: Api, engine: Engine
) -> None:
    account = await account_with_targets(lc)
    key = {"Idempotency-Key": f"batch-{uuid.uuid4().hex}"}
    sent = batch(account, [120.0, 130.0, 140.0])
    code, first = await lc.post("/v1/telemetry/events", sent, headers=key)
    assert code == 202, first
    # Two retries at once (a client and its proxy both retrying): still stored once.
    answers = await asyncio.gather(*(lc.post("/v1/telemetry/events", sent, headers=key) for _ in range(2)))
    assert stored(engine, account) == 3
    assert (first["accepted"], first["duplicates"]) == (3, 0), first
    for code, again in answers:
        assert code == 202 and (again["accepted"], again["duplicates"]) == (3, 3), again
        assert again["accounts"] == first["accounts"]
    code, reused = await lc.post("/v1/telemetry/events", batch(account, [999.0]), headers=key)
    assert code == 422, reused
    assert_envelope(reused, "IDEMPOTENCY_KEY_REUSED")
    assert stored(engine, account) == 3
    assert await realized_samples(lc, account, 3) == 4


async def test_telemetry_retries_concurrent_first_deliveries_of_one_key_store_once(lc: Api, engine: Engine) -> None:
    account = str(uuid.uuid4())
    key = {"Idempotency-Key": f"batch-{uuid.uuid4().hex}"}
    sent = batch(account, [float(v) for v in range(50)])
    answers = await asyncio.gather(*(lc.post("/v1/telemetry/events", sent, headers=key) for _ in range(4)))
    assert [code for code, _ in answers] == [202] * 4, answers
    assert stored(engine, account) == 50
    assert sorted(body["duplicates"] for _, body in answers) == [0, 50, 50, 50]


async def test_telemetry_retries_one_id_twice_in_a_batch_is_refused(lc: Api, engine: Engine) -> None:
    account = str(uuid.uuid4())
    code, body = await lc.post("/v1/telemetry/events", batch(account, [1.0, 2.0], ids=["same", "same"]))
    assert code == 422, body
    assert_envelope(body, "VALIDATION_ERROR")
    assert body["error"]["details"] == [{"path": "/events/1/id", "message": "duplicate id (first at /events/0/id)"}]
    assert stored(engine, account) == 0
