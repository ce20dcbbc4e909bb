"""Helpers shared by tests: git remotes on disk, polling, an authenticated API client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestClient

T = TypeVar("T")

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.test",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.test",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
}


def require_bwrap() -> None:
    """Skip when bubblewrap (the milestone-command sandbox) is absent, except in CI, where it is a failure."""
    if shutil.which("bwrap"):
        return
    if os.environ.get("CI"):
        pytest.fail("bwrap is not installed: `make test` runs scripts/install-system-deps.sh, which installs it")
    pytest.skip("bwrap is not installed (scripts/install-system-deps.sh installs bubblewrap)")


def git(*args: str, cwd: Path) -> str:
    """Run git synchronously in a test and return stdout."""
    result = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=True)
    return result.stdout


def make_remote(root: Path, files: Mapping[str, str], *, name: str = "project", branch: str = "main") -> str:
    """Create a bare repository whose ``branch`` holds ``files``; return its file:// URL."""
    bare = root / f"{name}.git"
    seed = root / f"{name}-seed"
    git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(bare), cwd=root)
    git("init", "--quiet", f"--initial-branch={branch}", str(seed), cwd=root)
    for rel, content in files.items():
        path = seed / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    git("add", "--all", cwd=seed)
    git("commit", "--quiet", "-m", "initial", cwd=seed)
    git("push", "--quiet", str(bare), f"{branch}:{branch}", cwd=seed)
    return f"file://{bare}"


def remote_branches(url: str) -> dict[str, str]:
    """Branch name -> sha on a file:// remote."""
    out = git("ls-remote", "--heads", url, cwd=Path("/"))
    return {ref.removeprefix("refs/heads/"): sha for sha, ref in (line.split("\t") for line in out.splitlines())}


def remote_file(url: str, branch: str, path: str) -> str | None:
    """Content of ``path`` on ``branch`` of a bare remote, or None."""
    bare = Path(url.removeprefix("file://"))
    result = subprocess.run(
        ["git", "show", f"{branch}:{path}"], cwd=bare, env=GIT_ENV, capture_output=True, text=True, check=False
    )
    return result.stdout if result.returncode == 0 else None


async def eventually(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], bool],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
    stall_factor: float = 4.0,
) -> T:
    """Poll ``probe`` until ``until(value)`` holds.

    The wait is bounded by progress, not by a guess of the machine's speed: it fails once the probed value has
    not changed for ``timeout`` seconds (nothing moves), or after ``stall_factor * timeout`` seconds in all (it
    moves but never arrives). On a machine twice as slow a run that keeps advancing still passes; one that is
    stuck fails as soon as it would have before.
    """
    started = time.monotonic()
    hard_deadline = started + timeout * stall_factor
    deadline = started + timeout
    seen: T | None = None
    while True:
        last: T = await probe()
        if until(last):
            return last
        now = time.monotonic()
        if last != seen:
            seen = last
            deadline = min(now + timeout, hard_deadline)
        if now > deadline:
            waited = now - started
            raise AssertionError(
                f"{what} not reached after {waited:.1f}s ({timeout}s without progress at most); last value: {last!r}"
            )
        await asyncio.sleep(interval)


@dataclass
class Api:
    """An API test client with a bearer token."""

    client: TestClient[Any, Any]
    token: str

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Authorization plus ``extra``."""
        return {"Authorization": f"Bearer {self.token}", **(extra or {})}

    async def post(self, path: str, body: Any = None, *, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        """POST JSON; return status and parsed body."""
        resp = await self.client.post(path, json=body, headers=self.headers(headers))
        return resp.status, await resp.json()

    async def get(self, path: str) -> tuple[int, Any]:
        """GET; return status and parsed body."""
        resp = await self.client.get(path, headers=self.headers())
        return resp.status, await resp.json()

    async def status(self, run_id: str) -> dict[str, Any]:
        """The run's status (asserts 200)."""
        code, body = await self.get(f"/v1/runs/{run_id}")
        assert code == 200, body
        return dict(body)

    async def poll_status(self, run_id: str) -> dict[str, Any]:
        """The run's status, or ``{"state": "unavailable"}`` while no worker answers (e.g. after a worker crash,
        the first query waits out the dead worker's sticky queue and the API answers 503)."""
        code, body = await self.get(f"/v1/runs/{run_id}")
        if code == 503:
            return {"state": "unavailable", "gates": []}
        assert code == 200, body
        return dict(body)

    async def wait_state(self, run_id: str, *states: str, timeout: float = 60.0) -> dict[str, Any]:
        """Poll the run until its state is one of ``states``."""
        return await eventually(
            lambda: self.poll_status(run_id), lambda s: s["state"] in states, timeout=timeout, what=f"state {states}"
        )

    async def wait_gate(self, run_id: str, gate: str, timeout: float = 60.0) -> dict[str, Any]:
        """Poll until ``gate`` is pending."""
        return await eventually(
            lambda: self.poll_status(run_id),
            lambda s: (
                any(g["name"] == gate and g["status"] == "pending" for g in s["gates"])
                or s["state"] in ("failed", "completed", "cancelled")
            ),
            timeout=timeout,
            what=f"gate {gate} pending",
        )

    async def events(self, run_id: str) -> list[dict[str, Any]]:
        """All events of the run."""
        code, body = await self.get(f"/v1/runs/{run_id}/events")
        assert code == 200, body
        return list(body["events"])

    async def wait_event(self, run_id: str, event_type: str, timeout: float = 30.0) -> dict[str, Any]:
        """The run's first event of that type, once it is in the log.

        The run's state changes before the event that reports it is recorded (an activity), so a status that says
        ``paused`` may come a moment before its ``run.paused`` event.
        """
        events = await eventually(
            lambda: self.events(run_id),
            lambda evs: any(e["type"] == event_type for e in evs),
            timeout=timeout,
            what=f"{event_type} in the log of {run_id}",
        )
        return next(e for e in events if e["type"] == event_type)

    async def decide(self, run_id: str, gate: str, approved: bool, reason: str = "ok") -> tuple[int, Any]:
        """Post a gate decision."""
        return await self.post(f"/v1/runs/{run_id}/gates/{gate}/decision", {"approved": approved, "reason": reason})


class JsonLogLines(logging.Handler):
    """Every log record as the service's JSON line, formatted at emit time (inside the task's run context)."""

    def __init__(self) -> None:
        super().__init__()
        from quantapilot.observability import JsonFormatter

        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record's JSON line, parsed."""
        self.lines.append(json.loads(self.format(record)))


@contextlib.contextmanager
def captured_json_logs(level: int = logging.INFO) -> Iterator[JsonLogLines]:
    """Capture the process's log lines (API and in-process worker) at ``level`` and above."""
    handler = JsonLogLines()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
