"""Shared benchmark harness: a dev server, workers, a real API server on loopback, tokens, statistics, tables.

Every benchmark measures our path and its raw ceiling on the same dev server in the same process run, so the
ratio it prints compares like with like on whatever machine runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.client import Client

from api.app import create_app
from quantapilot.db import create_all, make_engine
from quantapilot.settings import Settings
from quantapilot.temporal_dev import dev_server as dev_server  # the benchmarks take it from here
from quantapilot.tokens import create_token
from tests.drills.helpers import stop
from tests.support import GIT_ENV

T = TypeVar("T")

stop_process = stop  # the benchmarks stop their worker processes as the drills do


# ----- Temporal -----------------------------------------------------------------------------------------------


def temporal_address(client: Client) -> str:
    """host:port of the dev server the client talks to."""
    return client.service_client.config.target_host


def bench_settings(state_dir: Path, client: Client, **overrides: Any) -> Settings:
    """Settings for one benchmark: own state dir, SQLite file and task queue; file:// repos; raised rate limits.

    The API's per-token rate limits exist to stop abuse; a benchmark measures the path itself, so it raises them
    through settings far above what it sends. The limiter stays on, so its per-request cost is in the figures.
    """
    values: dict[str, Any] = {
        "environment": "test",
        "state_dir": state_dir,
        "temporal_address": temporal_address(client),
        "task_queue": f"qp-bench-{uuid.uuid4().hex[:10]}",
        "allowed_repo_patterns": ["file://*"],
        "allow_self_approval": True,
        "token_cache_seconds": 60.0,
        "rate_limit_enabled": True,
        "rate_triggers_per_s": 1_000_000.0,
        "rate_triggers_burst": 1_000_000,
        "rate_control_per_s": 1_000_000.0,
        "rate_control_burst": 1_000_000,
        "rate_reads_per_s": 1_000_000.0,
        "rate_reads_burst": 1_000_000,
        "rate_telemetry_per_s": 1_000_000.0,
        "rate_telemetry_burst": 1_000_000,
    }
    values.update(overrides)
    fields = Settings.model_fields
    return Settings(**{k: v for k, v in values.items() if k in fields})


def settings_env(settings: Settings) -> dict[str, str]:
    """``QP_*`` environment that gives a subprocess (``python -m worker`` / ``python -m api``) these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QP_")}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        env[f"QP_{name.upper()}"] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return env


def start_worker_process(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m worker`` with these settings; its output goes to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "worker"], env=settings_env(settings), stdout=out, stderr=out, cwd=project_root()
        )


def project_root() -> Path:
    """The repository root (where ``worker.py`` and ``api/`` live)."""
    return Path(__file__).resolve().parent.parent


# ----- API --------------------------------------------------------------------------------------------------


@dataclass
class ApiServer:
    """A running API server on loopback and a token with every scope."""

    base_url: str
    token: str
    engine: Engine

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Authorization header plus ``extra``."""
        return {"Authorization": f"Bearer {self.token}", **(extra or {})}


@contextlib.asynccontextmanager
async def api_server(settings: Settings, client: Client) -> AsyncIterator[ApiServer]:
    """Serve ``create_app`` on 127.0.0.1 (free port) through ``web.AppRunner`` + ``TCPSite``."""
    engine = make_engine(settings.database_url)
    create_all(engine)
    token, _ = create_token(engine, workspace="default", subject="bench")
    runner = web.AppRunner(create_app(settings, client=client, engine=engine), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield ApiServer(base_url=f"http://{host}:{port}", token=token, engine=engine)
    finally:
        await runner.cleanup()
        engine.dispose()


# ----- repositories -----------------------------------------------------------------------------------------


def git(*args: str, cwd: Path) -> str:
    """Run git with a fixed identity and no user config; return stdout."""
    done = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=True)
    return done.stdout


def make_bare_repo(root: Path, *, name: str = "project", files: Mapping[str, str] | None = None) -> str:
    """A bare repository whose ``main`` holds ``files`` (default: a README only); returns its file:// URL."""
    bare, seed = root / f"{name}.git", root / f"{name}-seed"
    root.mkdir(parents=True, exist_ok=True)
    git("init", "--quiet", "--bare", "--initial-branch=main", str(bare), cwd=root)
    git("init", "--quiet", "--initial-branch=main", str(seed), cwd=root)
    for rel, content in (files or {"README.md": f"# {name}\n"}).items():
        (seed / rel).parent.mkdir(parents=True, exist_ok=True)
        (seed / rel).write_text(content, encoding="utf-8")
    git("add", "--all", cwd=seed)
    git("commit", "--quiet", "-m", "initial", cwd=seed)
    git("push", "--quiet", str(bare), "main:main", cwd=seed)
    return f"file://{bare}"


def repo_copies(root: Path, count: int) -> list[str]:
    """``count`` bare repositories (README only) copied from one template; a run's merges need its own remote."""
    template = Path(make_bare_repo(root / "template").removeprefix("file://"))
    urls = []
    for i in range(count):
        target = root / f"r{i}.git"
        shutil.copytree(template, target)
        urls.append(f"file://{target}")
    return urls


# ----- our runs through the API, watched through their event log -------------------------------------------


async def trigger(session: aiohttp.ClientSession, api: ApiServer, repo_url: str, key: str) -> str:
    """``POST /v1/runs`` with an Idempotency-Key; returns the run id (raises unless 202)."""
    async with session.post(
        f"{api.base_url}/v1/runs",
        json={"repo_url": repo_url, "branch": "main"},
        headers=api.headers({"Idempotency-Key": key}),
    ) as resp:
        body = await resp.json()
        if resp.status != 202:
            raise RuntimeError(f"trigger answered {resp.status}: {body}")
        return str(body["run_id"])


async def decide(session: aiohttp.ClientSession, api: ApiServer, run_id: str, gate: str) -> None:
    """Approve ``gate`` through ``POST /v1/runs/{id}/gates/{gate}/decision`` (raises unless 200)."""
    async with session.post(
        f"{api.base_url}/v1/runs/{run_id}/gates/{gate}/decision",
        json={"approved": True, "reason": "bench"},
        headers=api.headers(),
    ) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"decision answered {resp.status}: {body[:300]!r}")


class EventWatcher:
    """Follows the ``run_events`` table (SQLite rowid order) and wakes whoever waits for a run's event.

    One query every ``interval`` seconds serves thousands of runs, instead of one status query per run.
    """

    def __init__(self, engine: Engine, *, interval: float = 0.05) -> None:
        self._engine = engine
        self._interval = interval
        self._last_rowid = 0
        self._seen: dict[tuple[str, str], float] = {}
        self._waiters: dict[tuple[str, str], list[asyncio.Future[float]]] = {}
        self._task: asyncio.Task[None] | None = None

    def _fetch(self) -> list[tuple[int, str, str]]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                text("SELECT rowid, run_id, type FROM run_events WHERE rowid > :last ORDER BY rowid"),
                {"last": self._last_rowid},
            ).all()
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    async def _loop(self) -> None:
        while True:
            rows = await asyncio.to_thread(self._fetch)
            now = time.perf_counter()
            for rowid, run_id, kind in rows:
                self._last_rowid = rowid
                key = (run_id, kind)
                self._seen.setdefault(key, now)
                for fut in self._waiters.pop(key, []):
                    if not fut.done():
                        fut.set_result(now)
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        """Start following the table."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self, run_id: str, event_type: str, *, within: float) -> float:
        """Wait until the run has an event of this type; returns when it was first seen (perf_counter)."""
        key = (run_id, event_type)
        if key in self._seen:
            return self._seen[key]
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(fut)
        return await asyncio.wait_for(fut, within)

    def count(self, event_type: str) -> int:
        """How many runs have an event of this type so far."""
        return sum(1 for _, kind in self._seen if kind == event_type)


async def park_runs(
    session: aiohttp.ClientSession,
    api: ApiServer,
    watcher: EventWatcher,
    urls: Sequence[str],
    *,
    tag: str,
    concurrency: int = 16,
    within: float = 600.0,
) -> list[str]:
    """Trigger one run per URL and wait until each waits at its ``anchor`` gate; returns the run ids in order."""
    run_ids: list[str] = [""] * len(urls)

    async def _one(i: int) -> None:
        run_ids[i] = await trigger(session, api, urls[i], f"{tag}-{i}")

    sample = await run_concurrently(_one, total=len(urls), concurrency=concurrency)
    if sample.errors:
        raise RuntimeError(f"{sample.errors} triggers failed")
    await asyncio.gather(*(watcher.wait(r, "gate.requested", within=within) for r in run_ids))
    return run_ids


# ----- the stack a run benchmark measures ------------------------------------------------------------------


@dataclass
class Stack:
    """What a run benchmark drives: our worker process, the API on loopback, an HTTP session, the event log."""

    settings: Settings
    worker: subprocess.Popen[bytes]
    api: ApiServer
    session: aiohttp.ClientSession
    watcher: EventWatcher

    async def trigger(self, repo_url: str, key: str) -> str:
        """``trigger`` through this stack's API and session; returns the run id."""
        return await trigger(self.session, self.api, repo_url, key)

    async def decide(self, run_id: str, gate: str) -> None:
        """``decide`` (approve) ``gate`` of the run through this stack's API."""
        await decide(self.session, self.api, run_id, gate)

    async def park(self, urls: Sequence[str], *, tag: str) -> list[str]:
        """``park_runs`` through this stack: one run per URL, each waiting at ``anchor``; returns their ids."""
        return await park_runs(self.session, self.api, self.watcher, urls, tag=tag)


@contextlib.asynccontextmanager
async def worker_and_api(
    root: Path, client: Client, *, watch_interval: float = 0.05, **overrides: Any
) -> AsyncIterator[Stack]:
    """``python -m worker`` (log in ``root/worker.log``), the API and a started event watcher; stopped on exit.

    Args:
        root: The benchmark's temporary folder; the settings' state dir is ``root/state``.
        client: The dev server's client.
        watch_interval: Seconds between the watcher's reads of the event log.
        **overrides: Settings beyond ``bench_settings``'s (e.g. ``worker_max_cached_workflows``).
    """
    settings = bench_settings(root / "state", client, **overrides)
    worker = start_worker_process(settings, root / "worker.log")
    try:
        async with api_server(settings, client) as api, aiohttp.ClientSession() as session:
            watcher = EventWatcher(api.engine, interval=watch_interval)
            watcher.start()
            try:
                yield Stack(settings, worker, api, session, watcher)
            finally:
                await watcher.stop()
    finally:
        stop_process(worker)


# ----- measuring ----------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (0-100) with linear interpolation between closest ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Sample:
    """Throughput and latency of one measured batch."""

    count: int
    seconds: float
    latencies: list[float]
    errors: int = 0

    @property
    def per_second(self) -> float:
        """Completed operations per second."""
        return self.count / self.seconds if self.seconds > 0 else math.nan

    def ms(self, pct: float) -> float:
        """Latency percentile in milliseconds."""
        return percentile(self.latencies, pct) * 1000


async def run_concurrently(operation: Callable[[int], Awaitable[None]], *, total: int, concurrency: int) -> Sample:
    """Run ``operation(i)`` for i in 0..total-1 with at most ``concurrency`` in flight; time each one.

    A failed operation counts as an error and not in the latencies; the wall time covers the whole batch.
    """
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def _lane() -> None:
        nonlocal errors
        for i in counter:
            started = time.perf_counter()
            try:
                await operation(i)
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(_lane() for _ in range(min(concurrency, total))))
    return Sample(count=len(latencies), seconds=time.perf_counter() - started, latencies=latencies, errors=errors)


async def poll_until(
    probe: Callable[[], Awaitable[T]], until: Callable[[T], bool], *, within: float, interval: float = 0.2
) -> T:
    """Poll ``probe`` until ``until(value)``; raise TimeoutError with the last value after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not reached within {within}s; last value: {value!r}")
        await asyncio.sleep(interval)


# ----- reporting ----------------------------------------------------------------------------------------------


def machine_line() -> str:
    """One line describing the machine: cores, memory, Python, date."""
    mem_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:")
    )
    return (
        f"machine: nproc={os.cpu_count()}, memory={mem_kib / 1024 / 1024:.1f} GiB, "
        f"python {platform.python_version()}, {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}"
    )


def fmt(value: float, digits: int = 1) -> str:
    """A number for a table cell (``-`` for NaN)."""
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def print_results(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """The machine line, then ``print_table``: how every benchmark prints its figures."""
    print(machine_line())
    print_table(title, headers, rows)


def print_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a Markdown table (it pastes into bench/README.md as it is)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")
    sys.stdout.flush()


def progress(message: str) -> None:
    """A progress line on stderr, so stdout holds only the results."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
