"""Drill: the database is unavailable for a while.

The trigger path touches the database only to authenticate (the token lookup, cached for
``token_cache_seconds``; 0 here so every request needs it). While the database refuses connections a trigger must
answer 503 ``SERVICE_UNAVAILABLE`` with the envelope and ``Retry-After`` - not 500, and not 401 as if the token were
bad - and start nothing; once the database is back the same request (same Idempotency-Key) starts exactly one run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from api.app import create_app
from api.lifecycle_routes import REALIZATION_OPTIONS, RealizationOptions
from quantapilot.db import session_scope
from quantapilot.events.table import RunEvent
from quantapilot.lifecycle.contracts import (
    TELEMETRY_SIGNAL,
    AccountRealizationStatus,
    TelemetryIngested,
    account_workflow_id,
)
from quantapilot.lifecycle.telemetry import insert_events
from quantapilot.lifecycle.telemetry_body import parse_telemetry_payload
from quantapilot.models import GateDecisionInput, RunKind
from quantapilot.runs.ids import new_run_id, workflow_id
from quantapilot.settings import Settings
from quantapilot.tokens import create_token
from tests.dbfixtures import own_postgres_database
from tests.drills.helpers import assert_whole_logs, refuse_connections
from tests.lifecycle_e2e.helpers import approved_target, new_account, samples, wait_realization
from tests.support import Api, eventually, make_remote
from worker import build_worker


async def _workflow_exists(client: Client, wid: str) -> bool:
    try:
        await client.get_workflow_handle(wid).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


@dataclass(frozen=True)
class OwnDatabase:
    """A PostgreSQL database of the test's own (its connections are refused and restored), with a token."""

    url: str
    name: str
    engine: Engine
    token: str


@pytest.fixture
def own_database() -> Iterator[OwnDatabase]:
    with own_postgres_database() as (url, name, engine):
        token, _ = create_token(engine, workspace="default", subject="drill")
        yield OwnDatabase(url=url, name=name, engine=engine, token=token)


@pytest.mark.slow
@pytest.mark.postgres
async def test_drill_database_unavailable_trigger_answers_503_and_starts_nothing(
    aiohttp_client, client: Client, settings: Settings, own_database: OwnDatabase
) -> None:
    url, name, engine, token = (own_database.url, own_database.name, own_database.engine, own_database.token)
    settings = settings.model_copy(update={"database_url": url, "token_cache_seconds": 0.0})
    api: TestClient = await aiohttp_client(create_app(settings, client=client, engine=engine))
    headers = {"Authorization": f"Bearer {token}"}
    body = {"repo_url": "file:///nonexistent/drill.git", "branch": "main"}

    resp = await api.post("/v1/runs", json=body, headers={**headers, "Idempotency-Key": "before"})
    assert resp.status == 202, await resp.text()

    refuse_connections(name, refuse=True)
    try:
        for attempt in range(3):  # the pool's dropped connections, then fresh connection attempts
            resp = await api.post("/v1/runs", json=body, headers={**headers, "Idempotency-Key": "during"})
            payload = await resp.json()
            assert resp.status == 503, (attempt, payload)
            assert payload["error"]["code"] == "SERVICE_UNAVAILABLE"
            assert set(payload["error"]) >= {"code", "message", "traceId", "timestamp"}
            assert resp.headers["Retry-After"].isdigit()
            assert resp.headers["X-Trace-Id"] == payload["error"]["traceId"]
        # Readiness says the same.
        ready = await api.get("/readyz")
        assert ready.status == 503
    finally:
        refuse_connections(name, refuse=False)

    # Nothing half-written: no workflow for the refused key, no events in the database.
    wid = workflow_id(RunKind.REPOSITORY, "default", new_run_id(RunKind.REPOSITORY, "default", "during"))
    assert not await _workflow_exists(client, wid)
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(RunEvent)).one() == 0

    # Back: the client's retry with the same key starts exactly one run (and a second retry finds it).
    resp = await api.post("/v1/runs", json=body, headers={**headers, "Idempotency-Key": "during"})
    first = await resp.json()
    assert resp.status == 202, first
    assert first["created"] is True
    resp = await api.post("/v1/runs", json=body, headers={**headers, "Idempotency-Key": "during"})
    again = await resp.json()
    assert (resp.status, again["run_id"], again["created"]) == (202, first["run_id"], False)
    assert await _workflow_exists(client, wid)
    await client.get_workflow_handle(wid).terminate("drill over")
    before = workflow_id(RunKind.REPOSITORY, "default", new_run_id(RunKind.REPOSITORY, "default", "before"))
    await client.get_workflow_handle(before).terminate("drill over")


@pytest.mark.slow
@pytest.mark.postgres
async def test_drill_database_unavailable_runs_in_flight_lose_no_event(
    aiohttp_client, client: Client, settings: Settings, tmp_path: Path, own_database: OwnDatabase
) -> None:
    """Runs that are mid-pipeline when the database goes away wait for it, then finish with a whole event log.

    The token stays cached across the outage (the default cache), so a trigger during the outage is accepted: the
    run is durable in Temporal and its first event waits for the database like every other.
    """
    url, name, engine, token = (own_database.url, own_database.name, own_database.engine, own_database.token)
    settings = settings.model_copy(update={"database_url": url, "token_cache_seconds": 300.0})
    api = Api(client=await aiohttp_client(create_app(settings, client=client, engine=engine)), token=token)
    remote = make_remote(tmp_path, {"README.md": "# outage\n"})
    async with build_worker(client, settings):
        _, first = await api.post("/v1/runs", {"repo_url": remote, "branch": "main"})
        await api.wait_gate(first["run_id"], "anchor")
        refuse_connections(name, refuse=True)
        try:
            # Decided by an operator's signal (no database on that path): the run's next event cannot be written.
            handle = client.get_workflow_handle(workflow_id(RunKind.REPOSITORY, "default", first["run_id"]))
            await handle.signal("decide_gate", GateDecisionInput(gate="anchor", approved=True, reason="ok"))
            code, second = await api.post(
                "/v1/runs", {"repo_url": remote, "branch": "main"}, headers={"Idempotency-Key": "during-outage"}
            )
            assert code == 202, second
            await asyncio.sleep(4)
            held = await api.status(first["run_id"])
            assert held["state"] != "completed", held  # it waits for the database instead of skipping events
        finally:
            refuse_connections(name, refuse=False)
        await api.wait_state(first["run_id"], "completed", timeout=90)
        await api.wait_gate(second["run_id"], "anchor", timeout=90)
        await api.decide(second["run_id"], "anchor", True)
        await api.wait_state(second["run_id"], "completed", timeout=90)
    assert_whole_logs(engine, [first["run_id"], second["run_id"]])


@pytest.mark.postgres
async def test_drill_database_unavailable_realization_refresh_is_retried(
    aiohttp_client, client: Client, settings: Settings, own_database: OwnDatabase
) -> None:
    """A refresh whose activities give up while the database is away is tried again once it is back.

    Before, the failed refresh only left a note: the samples stored before the outage stayed unreported until the
    account's next telemetry batch, which may never come.
    """
    url, name, engine, token = (own_database.url, own_database.name, own_database.engine, own_database.token)
    settings = settings.model_copy(update={"database_url": url, "token_cache_seconds": 300.0})
    app = create_app(settings, client=client, engine=engine)
    # Activities retry from 50 ms, so one refresh gives up within a second of the outage.
    app[REALIZATION_OPTIONS] = RealizationOptions(window_s=0.5, retry_initial_s=0.05)
    api = Api(client=await aiohttp_client(app), token=token)
    account = new_account()
    async with build_worker(client, settings):
        await approved_target(api, account)
        code, _ = await api.post("/v1/telemetry/events", samples(account, [150.0]))
        assert code == 202
        await wait_realization(api, account, lambda d: d["samples"] == 1, what="the first refresh")

        # A second sample is stored, then the database goes away before the account's refresh reads it.
        with session_scope(engine) as session:
            batch = parse_telemetry_payload(samples(account, [190.0]))
            insert_events(session=session, workspace="default", events=batch)
        handle = client.get_workflow_handle(account_workflow_id("default", account))
        refuse_connections(name, refuse=True)
        try:
            await handle.signal(TELEMETRY_SIGNAL, TelemetryIngested(accepted=1))
            await eventually(
                lambda: handle.query("status", result_type=AccountRealizationStatus),
                lambda s: (s.last_note or "").startswith("refresh failed"),
                what="a refresh that failed during the outage",
            )
        finally:
            refuse_connections(name, refuse=False)
        # No new telemetry arrives: the refresh is retried on its own and reports both samples.
        events = await wait_realization(api, account, lambda d: d["samples"] == 2, what="the retried refresh")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
