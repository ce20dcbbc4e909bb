"""`qp up` starts the whole stack (dev server, worker, API); the CLI drives a run; SIGINT stops everything."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support import eventually, make_remote

QP = str(Path(sys.executable).with_name("qp"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
async def test_cli_up_runs_whole_stack_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    api_port, temporal_port = free_port(), free_port()
    env = {
        **os.environ,
        "QP_STATE_DIR": str(tmp_path / "state"),
        "QP_API_PORT": str(api_port),
        "QP_ALLOWED_REPO_PATTERNS": '["file://*"]',
        "QP_TASK_QUEUE": "qp-up-test",
    }
    env.pop("QP_DATABASE_URL", None)
    proc = subprocess.Popen(
        [QP, "up", "--headless", "--temporal-port", str(temporal_port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        token = None
        lines: list[str] = []
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        while token is None and time.monotonic() < deadline:
            line = await asyncio.to_thread(proc.stdout.readline)
            if not line:
                break
            lines.append(line)
            if line.startswith("API token"):
                token = line.split(":", 1)[1].strip()
        assert token and token.startswith("qp_"), "".join(lines)
        assert any(f"http://127.0.0.1:{api_port}" in line for line in lines)
        # The token was also saved (owner-only) for the CLI.
        saved = tmp_path / "state" / "token"
        assert saved.read_text().strip() == token
        assert saved.stat().st_mode & 0o077 == 0

        base = f"http://127.0.0.1:{api_port}"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:

            async def ready() -> int:
                async with http.get(f"{base}/readyz") as resp:
                    return resp.status

            await eventually(ready, lambda s: s == 200, timeout=30, what="readyz")

            url = make_remote(tmp_path, {"README.md": "# up test\n"})
            cli_env = {**env, "QP_API_URL": base}
            out = subprocess.run(
                [QP, "run", "--repo", url, "--branch", "main", "--json"],
                env=cli_env,
                capture_output=True,
                text=True,
                check=True,
                stdin=subprocess.DEVNULL,
            )
            run_id = __import__("json").loads(out.stdout)["run_id"]

            async def state() -> dict:
                async with http.get(f"{base}/v1/runs/{run_id}") as resp:
                    return await resp.json()

            await eventually(state, lambda s: s["state"] == "waiting_for_gate", timeout=60, what="gate")
            approved = subprocess.run(
                [QP, "approve", run_id, "anchor", "--reason", "cli says yes"],
                env=cli_env,
                capture_output=True,
                text=True,
                check=False,
            )
            assert approved.returncode == 0, approved.stdout + approved.stderr
            final = await eventually(state, lambda s: s["state"] == "completed", timeout=60, what="completed")
            anchor = final["gates"][0]
            assert anchor["source"] == "cli" and anchor["reason"] == "cli says yes"

            # Without a terminal, a missing parameter is a clear error, not a hang.
            missing = subprocess.run(
                [QP, "run", "--repo", url], env=cli_env, capture_output=True, text=True, stdin=subprocess.DEVNULL
            )
            assert missing.returncode != 0 and "--branch is required" in missing.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(proc.wait, 40)
        rest = proc.stdout.read() if proc.stdout else ""
        if proc.stdout:
            proc.stdout.close()
    assert code == 0, rest
    await eventually(
        lambda: asyncio.to_thread(lambda: (port_open(api_port), port_open(temporal_port))),
        lambda ports: ports == (False, False),
        timeout=20,
        what="ports closed",
    )
