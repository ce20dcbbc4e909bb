"""A worker SIGKILLed while deliveries are in flight: a new worker delivers every event; nothing is lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from quantapilot.settings import Settings
from tests.conftest import ApiFactory
from tests.support import eventually
from tests.webhook_e2e.support import (
    Receiver,
    all_status,
    assert_gapless_logs,
    create_endpoint,
    fast_run,
    finished_events,
    wait_deliveries,
)

RUNS = 4


def worker_env(settings: Settings, dispatch: str) -> dict[str, str]:
    # Outbox: a killed worker's claims are taken over after the lease (at least 3 HTTP timeouts). Workflows: its
    # attempts are noticed by their heartbeat timeout.
    timing = (
        {"QP_WEBHOOK_TIMEOUT_S": "2", "QP_WEBHOOK_CLAIM_LEASE_S": "6"}
        if dispatch == "outbox"
        else {"QP_WEBHOOK_TIMEOUT_S": "30", "QP_STEP_HEARTBEAT_S": "2"}
    )
    return {
        **os.environ,
        "QP_TEMPORAL_ADDRESS": settings.temporal_address,
        "QP_TASK_QUEUE": settings.task_queue,
        "QP_STATE_DIR": str(settings.state_dir),
        "QP_DATABASE_URL": settings.database_url,
        # The API's key: the worker decrypts the signing secrets the API stored.
        "QP_SECRET_KEY": settings.secret_key or "",
        "QP_ALLOWED_REPO_PATTERNS": json.dumps(settings.allowed_repo_patterns),
        "QP_WEBHOOK_ALLOW_PRIVATE": "true",
        "QP_WEBHOOK_RETRY_SCALE": str(settings.webhook_retry_scale),
        "QP_WEBHOOK_DISPATCH": dispatch,
        **timing,
    }


def start_worker(settings: Settings, log: Path, dispatch: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        env = worker_env(settings, dispatch)
        return subprocess.Popen([sys.executable, "-m", "worker"], env=env, stdout=out, stderr=out)


@pytest.mark.slow
@pytest.mark.parametrize("dispatch", ["outbox", "workflow"])
async def test_webhooks_worker_killed_mid_delivery_loses_nothing(
    make_api: ApiFactory, settings: Settings, tmp_path: Path, dispatch: str
) -> None:
    hold = asyncio.Event()

    async def hang_until_released(request: web.Request, count: int) -> web.StreamResponse:
        if not hold.is_set():
            # Requests before the crash hang: the worker is killed while its attempts are in flight. Their
            # late answer is a 503, so only deliveries made after the crash count as received.
            await hold.wait()
            return web.Response(status=503)
        return web.json_response({"ok": True})

    api = await make_api(settings)
    log = tmp_path / "worker.log"
    async with Receiver(behaviour=hang_until_released) as receiver:
        endpoint = await create_endpoint(api, receiver.url())
        worker = start_worker(settings, log, dispatch)
        try:
            run_ids = [await fast_run(api, f"r{i}") for i in range(RUNS)]
            events = [e for run_id in run_ids for e in await finished_events(api, run_id, timeout=60)]
            assert len(events) == 2 * RUNS
            await eventually(
                lambda: asyncio.sleep(0, len(receiver.received)), lambda n: n >= 1, timeout=30, what="in flight"
            )
            worker.send_signal(signal.SIGKILL)
            await asyncio.to_thread(worker.wait, 30)
            hold.set()  # the dead worker never reads these answers
            worker = start_worker(settings, log, dispatch)
            expected = {e["id"] for e in events}
            await eventually(
                lambda: asyncio.sleep(0, set(receiver.event_ids())),
                lambda got: got >= expected,
                timeout=60,
                what="every event delivered after the crash",
            )
        finally:
            worker.send_signal(signal.SIGTERM)
            await asyncio.to_thread(worker.wait, 30)

    assert set(receiver.event_ids()) == expected
    assert any(r.status == 503 for r in receiver.received)  # some attempts really were cut off
    rows = await wait_deliveries(api, endpoint["id"], all_status("delivered", 2 * RUNS))
    assert {r["event_id"] for r in rows} == expected
    assert all(r.verified(endpoint["secret"]) for r in receiver.received)
    await assert_gapless_logs(api, run_ids)
