"""Drill: the API process is killed and restarted while triggers arrive.

Clients that get no answer (connection refused or dropped) retry with their Idempotency-Key, as the API's
contract tells them to. However the kills fall, each client ends with exactly one run, every answer it got named
that same run, and the task queue holds no other run.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client

from quantapilot.models import RunKind
from quantapilot.runs.ids import new_run_id
from quantapilot.settings import Settings
from quantapilot.tokens import create_token
from tests.drills.helpers import free_port, kill, spawn, stop, until

CLIENTS = 40
RETRY_S = 0.05
DRILL_S = 60.0


async def _healthy(session: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with session.get(f"{base}/healthz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


@pytest.mark.slow
async def test_drill_api_killed_while_triggers_arrive_one_run_per_key(
    client: Client, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    port = free_port()
    settings = settings.model_copy(update={"api_port": port, "rate_limit_enabled": False, "token_cache_seconds": 0.0})
    token, _ = create_token(engine, workspace="default", subject="drill")
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "api.log"
    rng = random.Random(8)
    answers: dict[int, list[tuple[str, bool]]] = {i: [] for i in range(CLIENTS)}
    retries = 0
    deadline = time.monotonic() + DRILL_S

    async def one_client(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal retries
        await asyncio.sleep(rng.uniform(0, 2.5))  # triggers keep arriving across the restarts
        body = {"repo_url": f"file:///nonexistent/drill-{i}.git", "branch": "main"}
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f"drill-{i}"}
        sends = 2  # the first answer, then one more retry as a client that lost the response would send
        while sends and time.monotonic() < deadline:
            try:
                async with session.post(f"{base}/v1/runs", json=body, headers=headers) as resp:
                    payload = await resp.json()
                    if resp.status == 202:
                        answers[i].append((payload["run_id"], payload["created"]))
                        sends -= 1
                        continue
                    assert resp.status == 503, payload  # the only other acceptable answer is "retry later"
            except (TimeoutError, aiohttp.ClientConnectionError):
                pass
            retries += 1
            await asyncio.sleep(RETRY_S)

    api = spawn("api", settings, log)
    try:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await until(lambda: _healthy(session, base), within=30, what="API up")
            clients = asyncio.gather(*(one_client(i, session) for i in range(CLIENTS)))
            for pause in (0.4, 0.8):  # two SIGKILLs while the clients are arriving
                await asyncio.sleep(pause)
                kill(api)
                api = spawn("api", settings, log)
            await asyncio.wait_for(clients, DRILL_S)
    finally:
        stop(api)

    assert retries > 0, "no trigger met a dead API: the drill did not drill"
    for i, got in answers.items():
        expected = new_run_id(RunKind.REPOSITORY, "default", f"drill-{i}")
        assert len(got) == 2, (i, got)
        assert {run_id for run_id, _ in got} == {expected}, (i, got)
        # Exactly one of the answers (or none, when the creating response was lost) said it created the run.
        assert sum(created for _, created in got) <= 1, (i, got)
    # Each client's run exists (describe reads the workflow itself, not the eventually consistent visibility store).
    for i in range(CLIENTS):
        run_id = new_run_id(RunKind.REPOSITORY, "default", f"drill-{i}")
        await client.get_workflow_handle(f"repo-run/default/{run_id}").describe()

    # No other run on the queue: one workflow per client. Visibility lags the starts by a moment (CI once counted
    # 39 of 40 right after the last answer), so wait for it to settle rather than read it once.
    async def counted() -> int:
        return (await client.count_workflows(f'TaskQueue="{settings.task_queue}"')).count

    await until(lambda: _settled(counted), within=15, interval=0.5, what=f"{CLIENTS} workflows on the queue")
    await asyncio.sleep(1.0)  # a late extra workflow would show up in a second count
    assert await counted() == CLIENTS
    for i in range(CLIENTS):
        run_id = new_run_id(RunKind.REPOSITORY, "default", f"drill-{i}")
        await client.get_workflow_handle(f"repo-run/default/{run_id}").terminate("drill over")


async def _settled(counted: Callable[[], Awaitable[int]]) -> bool:
    return await counted() >= CLIENTS
