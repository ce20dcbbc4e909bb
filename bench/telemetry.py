"""Telemetry ingestion benchmark: accepted events/s through the real API vs a raw batched SQLite insert.

Run with ``python -m bench.telemetry [--batches N] [--accounts N] [--concurrency N]``. The script starts a real
Temporal dev server (the pinned CLI, nothing is downloaded), a worker (so the account realization workflows the
API signals really run) and the aiohttp API on 127.0.0.1, then posts batches of 1000 events over HTTP. The
baseline inserts the same rows, 1000 per ``executemany`` and commit, into a fresh SQLite file with the same
columns, index and unique ``(workspace, event_id)`` constraint as ``telemetry_events``. Events/s of both and, last,
the ratio (API / raw) are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.lifecycle_routes import REALIZATION_OPTIONS, RealizationOptions
from bench.common import machine_line
from bench.procstat import cpu_seconds, dev_server_pid
from quantapilot.db import create_all, make_engine
from quantapilot.settings import Settings
from quantapilot.temporal_dev import load_dev_config, temporal_cli_path
from quantapilot.tokens import create_token
from worker import build_worker

BATCH = 1000
KPIS = ("deal_conversion", "response_time_ms", "churn_rate")


def make_batches(batches: int, accounts: int) -> list[list[dict[str, Any]]]:
    """``batches`` batches of :data:`BATCH` events spread over ``accounts`` accounts and three KPIs."""
    ids = [str(uuid.uuid4()) for _ in range(accounts)]
    start = datetime.now(UTC) - timedelta(days=1)
    out: list[list[dict[str, Any]]] = []
    n = 0
    for _ in range(batches):
        batch = []
        for _ in range(BATCH):
            batch.append(
                {
                    "accountId": ids[n % accounts],
                    "kpi": KPIS[n % len(KPIS)],
                    "value": float(n % 500),
                    "timestamp": (start + timedelta(milliseconds=n)).isoformat().replace("+00:00", "Z"),
                    "unit": "pct",
                    "metadata": {"source": "bench", "seq": n},
                }
            )
            n += 1
        out.append(batch)
    return out


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's live threads so far, summed by kind.

    Kinds: ``event loop`` (the main thread: aiohttp's server and client, the worker's activities), a Python
    thread's name without its number (``asyncio`` for ``to_thread``'s pool: parsing and storing; the worker's
    workflow threads ...), and ``sdk core`` for threads Python does not know (the Temporal SDK's Rust runtime).
    """
    tick = os.sysconf("SC_CLK_TCK")
    named = {t.native_id: t.name.rstrip("_-0123456789") for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        tid = int(task.name)
        kind = "event loop" if tid == os.getpid() else named.get(tid, "sdk core")
        out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


@dataclass(frozen=True, slots=True)
class ApiRun:
    """One pass of :func:`bench_api`.

    Attributes:
        seconds: Wall time from the first request to the last answer.
        accepted: Events the API accepted.
        process: This process's CPU seconds during the pass (every thread, also those that ended).
        threads: This process's CPU seconds during the pass, by live thread kind (:func:`thread_cpu`).
        dev_server: The Temporal dev server's CPU seconds during the pass (NaN if not found).
    """

    seconds: float
    accepted: int
    process: float
    threads: dict[str, float]
    dev_server: float


async def bench_api(batches: list[list[dict[str, Any]]], *, concurrency: int) -> ApiRun:
    """Post every batch through the real API; return the wall time, accepted events and CPU by thread kind."""
    with tempfile.TemporaryDirectory(prefix="qp-bench-") as tmp:
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(temporal_cli_path()),
            data_converter=pydantic_data_converter,
            dev_server_extra_args=load_dev_config().extra_flags(),
        )
        try:
            settings = Settings(
                environment="test",
                state_dir=Path(tmp),
                temporal_address=env.client.service_client.config.target_host,
                task_queue=f"qp-bench-{uuid.uuid4().hex[:8]}",
                max_body_bytes=4 * 1024 * 1024,
                # The limiter stays on, raised through settings far above what the benchmark sends.
                rate_telemetry_per_s=1_000_000.0,
                rate_telemetry_burst=1_000_000,
            )
            engine = make_engine(settings.database_url)
            create_all(engine)
            token, _ = create_token(engine, workspace="bench", subject="bench")
            app = create_app(settings, client=env.client, engine=engine)
            app[REALIZATION_OPTIONS] = RealizationOptions(window_s=2.0)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            bodies = [json.dumps({"events": b}).encode() for b in batches]
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            accepted = 0
            try:
                async with build_worker(env.client, settings), aiohttp.ClientSession() as http:
                    queue = list(reversed(bodies))

                    async def client_loop() -> int:
                        done = 0
                        while queue:
                            body = queue.pop()
                            async with http.post(f"http://{host}:{port}/v1/telemetry/events", data=body,
                                                 headers=headers) as resp:  # fmt: skip
                                payload = await resp.json()
                                if resp.status != 202:
                                    raise RuntimeError(f"API answered {resp.status}: {payload}")
                                done += int(payload["accepted"])
                        return done

                    server = dev_server_pid()
                    server_before = cpu_seconds(server) if server else math.nan
                    threads_before, process_before = thread_cpu(), cpu_seconds(os.getpid())
                    started = time.perf_counter()
                    accepted = sum(await asyncio.gather(*(client_loop() for _ in range(concurrency))))
                    elapsed = time.perf_counter() - started
                    threads_after, process_cpu = thread_cpu(), cpu_seconds(os.getpid()) - process_before
                    server_cpu = (cpu_seconds(server) - server_before) if server else math.nan
                    threads = {
                        kind: after - threads_before.get(kind, 0.0)
                        for kind, after in threads_after.items()
                        if after - threads_before.get(kind, 0.0) > 0
                    }
            finally:
                await runner.cleanup()
                engine.dispose()
            return ApiRun(
                seconds=elapsed, accepted=accepted, process=process_cpu, threads=threads, dev_server=server_cpu
            )
        finally:
            await env.shutdown()


def bench_raw(batches: list[list[dict[str, Any]]]) -> tuple[float, int]:
    """Insert the same rows with sqlite3 ``executemany``, one transaction per batch; return (seconds, rows)."""
    with tempfile.TemporaryDirectory(prefix="qp-bench-raw-") as tmp:
        conn = sqlite3.connect(Path(tmp) / "raw.db")
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE telemetry_events (id INTEGER PRIMARY KEY, workspace TEXT NOT NULL, "
                "account_id TEXT NOT NULL, kpi TEXT NOT NULL, value REAL NOT NULL, unit TEXT, source TEXT, "
                "metadata TEXT NOT NULL, timestamp TEXT NOT NULL, ingested_at TEXT NOT NULL, event_id TEXT, "
                "UNIQUE (workspace, event_id))"
            )
            conn.execute("CREATE INDEX ix_raw ON telemetry_events (workspace, account_id, kpi, timestamp)")
            rows_total = 0
            started = time.perf_counter()
            for batch in batches:
                now = datetime.now(UTC).isoformat()
                rows = [
                    ("bench", e["accountId"], e["kpi"], e["value"], e["unit"], "bench", json.dumps(e["metadata"]),
                     e["timestamp"], now)
                    for e in batch
                ]  # fmt: skip
                with conn:
                    conn.executemany(
                        "INSERT INTO telemetry_events (workspace, account_id, kpi, value, unit, source, metadata, "
                        "timestamp, ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        rows,
                    )
                rows_total += len(rows)
            return time.perf_counter() - started, rows_total
        finally:
            conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, default=20, help="batches of 1000 events (default 20)")
    parser.add_argument("--accounts", type=int, default=5, help="accounts the events spread over (default 5)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    args = parser.parse_args()
    batches = make_batches(args.batches, args.accounts)
    run = asyncio.run(bench_api(batches, concurrency=args.concurrency))
    api_s, api_n = run.seconds, run.accepted
    raw_s, raw_n = bench_raw(batches)
    api_rate, raw_rate = api_n / api_s, raw_n / raw_s
    print(machine_line())
    print(f"{'path':<40} {'events':>8} {'seconds':>9} {'events/s':>12}")
    api_label = f"API (HTTP, {args.concurrency} in flight, batches of 1000)"
    print(f"{api_label:<40} {api_n:>8} {api_s:>9.3f} {api_rate:>12,.0f}")
    print(f"{'raw sqlite3 executemany (batches of 1000)':<40} {raw_n:>8} {raw_s:>9.3f} {raw_rate:>12,.0f}")
    # CPU per batch while the API pass ran (clock ticks: 10 ms resolution per thread, so read it over 20+ batches).
    per_batch = 1000 / len(batches)
    kinds = ", ".join(
        f"{kind} {cpu * per_batch:.1f}" for kind, cpu in sorted(run.threads.items(), key=lambda kv: -kv[1])
    )
    print(f"CPU ms per batch: process {run.process * per_batch:.1f} ({kinds}); "
          f"dev server {run.dev_server * per_batch:.1f}")  # fmt: skip
    # Last, as every benchmark here: our path as a fraction of its ceiling (1.0 would be as fast as the raw insert).
    print(f"ratio (API events/s / raw insert events/s): {api_rate / raw_rate:.3f}")


if __name__ == "__main__":
    main()
