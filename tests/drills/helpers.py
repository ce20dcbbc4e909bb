"""Helpers of the fault drills: subprocesses with ``QP_*`` settings, free ports, copies of a bare repository."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import bindparam, text
from sqlalchemy.engine import Engine

from quantapilot.settings import Settings
from tests.dbfixtures import PG_ADMIN_DSN
from tests.support import make_remote

ROOT = Path(__file__).resolve().parent.parent.parent


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives ``python -m worker`` / ``python -m api`` exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QP_")}
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            env[f"QP_{name.upper()}"] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return env


def spawn(module: str, settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m <module>`` with these settings; output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module], env=settings_env(settings), stdout=out, stderr=out, cwd=ROOT
        )


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL and reap."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill(proc)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def remotes(root: Path, count: int) -> list[str]:
    """``count`` bare repositories with a README (one per run: their merges must not race for ``main``)."""
    root.mkdir(parents=True, exist_ok=True)
    template = Path(make_remote(root, {"README.md": "# drill\n"}, name="template").removeprefix("file://"))
    urls = []
    for i in range(count):
        shutil.copytree(template, root / f"r{i}.git")
        urls.append(f"file://{root / f'r{i}.git'}")
    return urls


def events_of_type(engine: Engine, event_type: str) -> set[str]:
    """Run ids that have an event of this type."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT DISTINCT run_id FROM run_events WHERE type = :t"), {"t": event_type})
        return {str(r[0]) for r in rows}


async def until(
    probe: Callable[[], Awaitable[Any]], *, within: float, interval: float = 0.1, what: str = "condition"
) -> Any:
    """Poll ``probe`` until it returns a truthy value; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within}s (last: {value!r})")
        await asyncio.sleep(interval)


# The log of a README-only repository run that was approved at its anchor gate.
APPROVED_RUN_EVENTS = ["run.started", "documentation.generated", "gate.requested", "gate.decided", "run.completed"]


def assert_whole_logs(engine: Engine, run_ids: list[str], expected: list[str] = APPROVED_RUN_EVENTS) -> None:
    """Each run's event log is gapless (seq 1..n) and holds exactly ``expected``, in order, each once."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT run_id, seq, type FROM run_events WHERE run_id IN :ids").bindparams(
                bindparam("ids", expanding=True)
            ),
            {"ids": run_ids},
        ).all()
    for run_id in run_ids:
        log = sorted((int(seq), str(kind)) for rid, seq, kind in rows if rid == run_id)
        assert [seq for seq, _ in log] == list(range(1, len(log) + 1)), run_id
        assert [kind for _, kind in log] == expected, run_id


def refuse_connections(name: str, *, refuse: bool) -> None:
    """Make a PostgreSQL database refuse new connections (and drop the open ones), or accept them again."""
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if refuse else "true"}')
        if refuse:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
