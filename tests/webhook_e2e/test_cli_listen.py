"""``qp webhooks listen``: a real subprocess that verifies signatures and prints events."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from quantapilot.events.envelope import EventEnvelope
from quantapilot.webhooks.sender import prepare_request
from quantapilot.webhooks.signing import new_secret
from tests.support import eventually
from tests.webhook_e2e.support import free_port

QP = str(Path(sys.executable).with_name("qp"))


async def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as resp:
        return resp.status


async def test_webhooks_cli_listen_verifies_and_prints(tmp_path: Path) -> None:
    secret, port = new_secret(), free_port()
    proc = subprocess.Popen(
        [QP, "webhooks", "listen", "--port", str(port)],
        env={"QP_WEBHOOK_SECRET": secret, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    envelope = EventEnvelope(
        id="evt_cli_1",
        type="run.started",
        created_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        workspace="default",
        run_id="rr_1",
        seq=1,
        data={"branch": "main"},
    )
    try:

        async def _up() -> bool:
            try:
                body, headers = prepare_request(envelope, secrets=[new_secret()], attempt=1)
                return await _post(url, body, headers) == 401
            except aiohttp.ClientConnectionError:
                return False

        await eventually(_up, bool, timeout=30, what="listener up")  # a wrong secret is refused
        body, headers = prepare_request(envelope, secrets=[secret], attempt=1)
        assert await _post(url, body, headers) == 200
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.to_thread(proc.communicate, timeout=20)
    assert proc.returncode == 0, err
    assert out.splitlines() == ['2025-01-02T03:04:05Z run.started evt_cli_1 run=rr_1 seq=1 {"branch":"main"}']
    assert secret not in out + err
