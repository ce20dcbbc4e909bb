"""`qp up` starts the whole stack (dev server with Web UI, worker, API); the CLI drives runs; a process that dies is
restarted; SIGINT or SIGTERM stops everything."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from tests.cli.procs import Process, child_running, descendants, running
from tests.cli.terminal import run_in_terminal
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


def drain(proc: subprocess.Popen[str]) -> tuple[list[str], threading.Thread]:
    """Read the process's output into a list on a thread until it closes its end."""
    lines: list[str] = []
    assert proc.stdout is not None
    stream = proc.stdout

    def read() -> None:
        # Closed under it by the test's cleanup when a grandchild still holds the pipe open: the end of output.
        with contextlib.suppress(ValueError, OSError):
            for line in stream:
                lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return lines, reader


async def wait_for_line(lines: list[str], reader: threading.Thread, prefix: str, *, timeout: float) -> str | None:
    """The first output line starting with prefix, or None when the output ends or timeout passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = next((line for line in list(lines) if line.startswith(prefix)), None)
        if found is not None or not reader.is_alive():
            return found
        await asyncio.sleep(0.1)
    return None


@pytest.mark.slow
async def test_cli_up_runs_whole_stack_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    api_port, temporal_port, ui_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "QP_STATE_DIR": str(tmp_path / "state"),
        "QP_API_PORT": str(api_port),
        "QP_ALLOWED_REPO_PATTERNS": '["file://*"]',
        "QP_TASK_QUEUE": "qp-up-test",
    }
    env.pop("QP_DATABASE_URL", None)
    proc = subprocess.Popen(
        [QP, "up", "--temporal-port", str(temporal_port), "--ui-port", str(ui_port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # The worker, the API and the dev server write to the same pipe: it is drained for the whole test, or a full
    # pipe would block them (and `qp up` printing "stopping...") once the test stops reading.
    lines, reader = drain(proc)
    try:
        token = await wait_for_line(lines, reader, "API token", timeout=90)
        if token is not None:
            token = token.split(":", 1)[1].strip()
        assert token and token.startswith("qp_"), "".join(lines)
        assert any(f"http://127.0.0.1:{api_port}" in line for line in lines)
        assert any(line.startswith("Temporal Web UI") and f"http://localhost:{ui_port}" in line for line in lines)
        # The token was also saved (owner-only) for the CLI.
        saved = tmp_path / "state" / "token"
        assert saved.read_text().strip() == token
        assert saved.stat().st_mode & 0o077 == 0
        # The key that encrypts webhook secrets was generated into the state directory, owner-only, and named.
        key_file = tmp_path / "state" / "secret.key"
        assert key_file.stat().st_mode & 0o077 == 0
        assert any(line.startswith("Secret key") and str(key_file) in line for line in lines), "".join(lines)

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
            run_id = json.loads(out.stdout)["run_id"]

            async def state_of(some_run: str) -> dict:
                async with http.get(f"{base}/v1/runs/{some_run}") as resp:
                    return await resp.json()

            async def state() -> dict:
                return await state_of(run_id)

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

            # The Web UI it printed answers (its page, served by the dev server from the wheel).
            async def ui() -> int:
                try:
                    async with http.get(f"http://localhost:{ui_port}/") as resp:
                        return resp.status
                except aiohttp.ClientError:
                    return 0

            await eventually(ui, lambda status: status == 200, timeout=30, what="Web UI")

            # pause, status, resume and reject from the CLI on a second run.
            def qp(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [QP, *args], env={**cli_env, "COLUMNS": "200"}, capture_output=True, text=True, check=False
                )

            second = json.loads(qp("run", "--repo", url, "--branch", "main", "--json").stdout)["run_id"]
            await eventually(
                lambda: state_of(second), lambda s: s["state"] == "waiting_for_gate", timeout=60, what="gate"
            )
            paused = qp("pause", second, "--reason", "hold on")
            assert paused.returncode == 0 and "state=paused" in paused.stdout, paused.stdout + paused.stderr
            shown = qp("status", second)
            assert shown.returncode == 0 and "state=paused" in shown.stdout and "anchor" in shown.stdout, shown.stdout
            assert f"qp approve {second} anchor" in shown.stdout  # the command to decide the waiting gate
            as_json = json.loads(qp("status", second, "--json").stdout)
            assert (as_json["state"], as_json["paused_reason"]) == ("paused", "hold on")
            resumed = qp("resume", second)
            assert resumed.returncode == 0 and "state=waiting_for_gate" in resumed.stdout, resumed.stdout
            rejected = qp("reject", second, "anchor", "--reason", "not this time")
            assert rejected.returncode == 0 and "rejected" in rejected.stdout, rejected.stdout + rejected.stderr
            failed = await eventually(
                lambda: state_of(second), lambda s: s["state"] == "failed", timeout=60, what="rejected run failed"
            )
            assert failed["error"]["code"] == "GATE_REJECTED"
            assert failed["gates"][0]["source"] == "cli" and failed["gates"][0]["reason"] == "not this time"
            unknown = qp("status", "rr_" + "0" * 32)
            assert unknown.returncode != 0 and "NOT_FOUND" in unknown.stdout + unknown.stderr

            # Without a terminal, a missing parameter is a clear error, not a hang.
            missing = subprocess.run(
                [QP, "run", "--repo", url], env=cli_env, capture_output=True, text=True, stdin=subprocess.DEVNULL
            )
            assert missing.returncode != 0 and "--branch is required" in missing.stderr
            # With a terminal it asks for it instead, and the answer starts the run.
            asked = await asyncio.to_thread(run_in_terminal, [QP, "run", "--repo", url, "--json"], cli_env, b"main\n")
            assert "branch: " in asked, asked
            prompted = json.loads(asked[asked.index("{") :])
            assert prompted["created"] is True
            await eventually(
                lambda: state_of(prompted["run_id"]),
                lambda s: s["branch"] == "main" and s["state"] == "waiting_for_gate",
                timeout=60,
                what="prompted run at its gate",
            )
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = await asyncio.to_thread(proc.wait, 40)
        except subprocess.TimeoutExpired:
            # Killed so that a stop that hangs fails this test alone, not the next one with a leaked process.
            proc.kill()
            proc.wait()
            raise
        finally:
            await asyncio.to_thread(reader.join, 10)
            if proc.stdout:
                proc.stdout.close()
    assert code == 0, "".join(lines)
    await eventually(
        lambda: asyncio.to_thread(lambda: (port_open(api_port), port_open(temporal_port))),
        lambda ports: ports == (False, False),
        timeout=20,
        what="ports closed",
    )


def _start_up(
    tmp_path: Path, task_queue: str
) -> tuple[subprocess.Popen[str], dict[str, str], int, int, list[str], threading.Thread]:
    """`qp up` on free ports, its output (stdout and stderr) collected line by line in the background."""
    api_port, temporal_port, ui_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "QP_STATE_DIR": str(tmp_path / "state"),
        "QP_API_PORT": str(api_port),
        "QP_ALLOWED_REPO_PATTERNS": '["file://*"]',
        "QP_TASK_QUEUE": task_queue,
    }
    env.pop("QP_DATABASE_URL", None)
    proc = subprocess.Popen(
        [QP, "up", "--headless", "--temporal-port", str(temporal_port), "--ui-port", str(ui_port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines, reader = drain(proc)
    return proc, env, api_port, temporal_port, lines, reader


@pytest.mark.slow
async def test_cli_up_restarts_a_killed_worker_and_api_and_stops_leaving_no_process(tmp_path: Path) -> None:
    proc, env, api_port, temporal_port, lines, reader = _start_up(tmp_path, "qp-up-restart-test")
    base = f"http://127.0.0.1:{api_port}"
    cli_env = {**env, "QP_API_URL": base}
    everything: set[Process] = set()
    try:

        async def output() -> str:
            return "".join(lines)

        banner = await eventually(output, lambda out: "API token" in out or proc.poll() is not None, timeout=90)
        assert "API token" in banner, banner
        token = next(line.split(":", 1)[1].strip() for line in banner.splitlines() if line.startswith("API token"))
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:

            async def ready() -> int:
                try:
                    async with http.get(f"{base}/readyz") as resp:
                        return resp.status
                except aiohttp.ClientError:
                    return 0

            async def state_of(run_id: str) -> dict:
                async with http.get(f"{base}/v1/runs/{run_id}") as resp:
                    return await resp.json()

            async def child(marker: str) -> int | None:
                return child_running(proc.pid, marker)

            async def killed_and_restarted(marker: str, name: str) -> int:
                """SIGKILL the stack's process, see the supervisor's line and a new process in its place."""
                pid = await eventually(lambda: child(marker), lambda p: p is not None, what=name)
                assert pid is not None
                everything.update(descendants(proc.pid))
                os.kill(pid, signal.SIGKILL)
                logged = f"qp up: {name} (pid {pid}) exited with code -9 (SIGKILL); restart in 1 s"
                await eventually(output, lambda out: logged in out, timeout=30, what=f"{name} death logged")
                new = await eventually(lambda: child(marker), lambda p: p not in (None, pid), what=f"new {name}")
                assert new is not None
                return new

            await eventually(ready, lambda s: s == 200, timeout=30, what="readyz")
            url = make_remote(tmp_path, {"README.md": "# restart test\n"})

            async def run_to_gate() -> str:
                """Start a run with `qp run` and wait until it waits at its gate."""
                started = subprocess.run(
                    [QP, "run", "--repo", url, "--branch", "main", "--json"],
                    env=cli_env,
                    capture_output=True,
                    text=True,
                    check=True,
                    stdin=subprocess.DEVNULL,
                )
                run_id: str = json.loads(started.stdout)["run_id"]
                await eventually(
                    lambda: state_of(run_id), lambda s: s["state"] == "waiting_for_gate", timeout=60, what="gate"
                )
                return run_id

            # The worker dies: the API keeps answering, the new worker takes the next run to its gate.
            await killed_and_restarted("-m worker", "worker")
            assert await ready() == 200
            run_id = await run_to_gate()

            # The API dies: a new one serves /readyz and takes the decision; the run completes.
            await killed_and_restarted("-m api", "api")
            await eventually(ready, lambda s: s == 200, timeout=60, what="readyz after the API's restart")
            approved = subprocess.run(
                [QP, "approve", run_id, "anchor", "--reason", "after restarts"],
                env=cli_env,
                capture_output=True,
                text=True,
                check=False,
            )
            assert approved.returncode == 0, approved.stdout + approved.stderr
            await eventually(
                lambda: state_of(run_id), lambda s: s["state"] == "completed", timeout=60, what="completed"
            )
            # One line per death, and the stack never stopped for them.
            assert "".join(lines).count("qp up: ") == 2, "".join(lines)
            assert proc.poll() is None

            # The dev server dies too: restarted on its database file, it still has the run and takes a new one.
            await killed_and_restarted("server start-dev", "temporal")
            assert (await state_of(run_id))["state"] == "completed"
            await run_to_gate()
            assert proc.poll() is None
        everything.update(descendants(proc.pid))
    finally:
        # SIGTERM, as a service manager stops it: the same orderly stop as Ctrl-C.
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 40)
        await asyncio.to_thread(reader.join, 10)
        if proc.stdout:
            proc.stdout.close()
    assert code == 0, "".join(lines)
    assert "stopping..." in "".join(lines)
    # Nothing it started outlives it: not the dev server, worker or API, nor anything they started.
    assert len(everything) >= 3
    left = await eventually(
        lambda: asyncio.to_thread(lambda: [p for p in everything if running(p)]),
        lambda procs: procs == [],
        timeout=10,
        what="no process left",
    )
    assert left == []
    assert not port_open(api_port) and not port_open(temporal_port)
