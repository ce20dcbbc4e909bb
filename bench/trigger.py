"""Trigger throughput: ``POST /v1/runs`` with an Idempotency-Key against raw ``client.start_workflow``.

Both paths start the same ``RepoRun`` workflow type with the same input shape, id policies (``REJECT_DUPLICATE`` /
``FAIL``), memo, search attributes, summary and execution timeout, on the same dev server, in the same process
run, alternating per concurrency level. The task queue has no worker: a start only has to be accepted by
Temporal, which is what the trigger endpoint promises (202), so the workers' load does not blur the numbers.

    python -m bench.trigger [--requests 300] [--concurrency 1 16 64] [--rounds 4]

Prints one row per (path, concurrency) and, last, the ratio HTTP/raw throughput over all levels together (and the
lowest single level); target >= 0.8. The dev server is the bottleneck on 2 cores (see the CPU columns), so single
levels vary by +-0.15 from run to run; --rounds evens that out.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import aiohttp
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from bench.common import (
    ApiServer,
    Sample,
    api_server,
    bench_settings,
    dev_server,
    fmt,
    print_results,
    progress,
    run_concurrently,
)
from bench.procstat import cpu_seconds, dev_server_pid
from quantapilot.models import RepoRunInput, RunKind
from quantapilot.runs.ids import REPO_RUN_WORKFLOW
from quantapilot.runs.starter import MEMO_REQUEST_HASH, request_hash
from quantapilot.settings import Settings
from quantapilot.temporal import SA_BRANCH, SA_REPO_URL, SA_RUN_KIND, SA_STATE, SA_WORKSPACE

REPO_URL = "file:///nonexistent/bench.git"  # never cloned: nothing polls the task queue


@dataclass
class Totals:
    """Samples of one (path, concurrency) cell, summed over rounds, with the CPU both processes spent."""

    samples: list[Sample] = field(default_factory=list)
    cpu_bench: float = 0.0
    cpu_server: float = 0.0

    def cpu_ms_per_start(self) -> tuple[float, float]:
        """CPU milliseconds per accepted start: (this process, the dev server)."""
        count = sum(s.count for s in self.samples) or 1
        return self.cpu_bench / count * 1000, self.cpu_server / count * 1000

    def merged(self) -> Sample:
        """All rounds as one sample."""
        return Sample(
            count=sum(s.count for s in self.samples),
            seconds=sum(s.seconds for s in self.samples),
            latencies=[x for s in self.samples for x in s.latencies],
            errors=sum(s.errors for s in self.samples),
        )


def raw_starter(client: Client, settings: Settings, tag: str):
    """``start_workflow`` exactly as :func:`api.runs.start_run` issues it, without HTTP around it."""
    body = {"repo_url": REPO_URL, "branch": "main"}
    digest = request_hash(body)

    async def _start(i: int) -> None:
        run_id = f"rr_{uuid.uuid4().hex}"
        await client.start_workflow(
            REPO_RUN_WORKFLOW,
            RepoRunInput(
                run_id=run_id,
                workspace="default",
                repo_url=REPO_URL,
                branch="main",
                triggered_by="bench",
                request_sha256=digest,
                heartbeat_timeout_s=settings.step_heartbeat_s,
            ),
            id=f"repo-run/default/{run_id}",
            task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            memo={MEMO_REQUEST_HASH: digest},
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(SA_WORKSPACE, "default"),
                    SearchAttributePair(SA_RUN_KIND, RunKind.REPOSITORY.value),
                    SearchAttributePair(SA_REPO_URL, REPO_URL),
                    SearchAttributePair(SA_BRANCH, "main"),
                    SearchAttributePair(SA_STATE, "running"),
                ]
            ),
            static_summary=f"Repository run of {REPO_URL} @ main",
            execution_timeout=timedelta(days=365),
        )

    return _start


def http_starter(session: aiohttp.ClientSession, api: ApiServer, tag: str):
    """``POST /v1/runs`` with a fresh Idempotency-Key per request; anything but 202 is an error."""
    url = f"{api.base_url}/v1/runs"
    body = {"repo_url": REPO_URL, "branch": "main"}

    async def _start(i: int) -> None:
        headers = api.headers({"Idempotency-Key": f"{tag}-{i}"})
        async with session.post(url, json=body, headers=headers) as resp:
            await resp.read()
            if resp.status != 202:
                raise RuntimeError(f"HTTP {resp.status}")

    return _start


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="qp-bench-trigger-") as tmp:
        async with dev_server() as env:
            settings = bench_settings(Path(tmp) / "state", env.client)
            async with api_server(settings, env.client) as api:
                connector = aiohttp.TCPConnector(limit=max(args.concurrency))
                async with aiohttp.ClientSession(connector=connector) as session:
                    # Warm-up: connections, token cache, compiled schema, the dev server's first writes.
                    await run_concurrently(raw_starter(env.client, settings, "w"), total=50, concurrency=8)
                    await run_concurrently(http_starter(session, api, f"w-{uuid.uuid4().hex}"), total=50, concurrency=8)
                    raw = {c: Totals() for c in args.concurrency}
                    http = {c: Totals() for c in args.concurrency}
                    server = dev_server_pid()
                    for rnd in range(args.rounds):
                        for c in args.concurrency:
                            progress(f"round {rnd + 1}/{args.rounds}, concurrency {c}")
                            cells = [
                                (raw[c], raw_starter(env.client, settings, "r")),
                                (http[c], http_starter(session, api, f"h-{uuid.uuid4().hex}")),
                            ]
                            # Alternate which path goes first: the dev server slows as its backlog grows.
                            for totals, operation in cells if rnd % 2 == 0 else reversed(cells):
                                cpu0 = time.process_time()
                                srv0 = cpu_seconds(server) if server else 0.0
                                totals.samples.append(
                                    await run_concurrently(operation, total=args.requests, concurrency=c)
                                )
                                totals.cpu_bench += time.process_time() - cpu0
                                totals.cpu_server += (cpu_seconds(server) if server else 0.0) - srv0
    rows = []
    ratios = []
    for c in args.concurrency:
        r, h = raw[c].merged(), http[c].merged()
        ratio = h.per_second / r.per_second
        ratios.append(ratio)
        for name, s, t in (("raw start_workflow", r, raw[c]), ("HTTP POST /v1/runs", h, http[c])):
            bench_ms, server_ms = t.cpu_ms_per_start()
            rows.append(
                [
                    name,
                    c,
                    s.count,
                    s.errors,
                    fmt(s.per_second),
                    fmt(s.ms(50), 2),
                    fmt(s.ms(99), 2),
                    fmt(bench_ms, 2),
                    fmt(server_ms, 2),
                ]
            )
        rows.append(["ratio HTTP/raw", c, "", "", f"{ratio:.2f}", "", "", "", ""])
    print_results(
        f"Trigger: {args.requests} starts x {args.rounds} rounds per cell, no worker on the task queue",
        ["path", "concurrency", "ok", "errors", "runs/s", "p50 ms", "p99 ms", "CPU ms/start bench", "CPU ms/start srv"],
        rows,
    )
    pooled_http = sum(http[c].merged().count for c in args.concurrency) / sum(
        http[c].merged().seconds for c in args.concurrency
    )
    pooled_raw = sum(raw[c].merged().count for c in args.concurrency) / sum(
        raw[c].merged().seconds for c in args.concurrency
    )
    worst = min(zip(ratios, args.concurrency, strict=True))
    print(
        f"\nratio HTTP/raw throughput (target >= 0.8): {pooled_http / pooled_raw:.2f} over all levels; "
        f"lowest level {worst[0]:.2f} at concurrency {worst[1]}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="starts per path, concurrency and round")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=4, help="alternating raw/HTTP rounds (evens out drift)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
