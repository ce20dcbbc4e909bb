"""Capacity: many runs waiting at gates on one worker; its memory as they accumulate and after approving them.

Runs (README-only local bare repos, no quantapilot.yml) are triggered through the API in waves of ``--wave`` and
each wave is parked at ``anchor`` before the next starts. The worker is ``python -m worker`` in a subprocess with
``QP_WORKER_MAX_CACHED_WORKFLOWS=--cache`` (and ``QP_WORKER_MAX_CONCURRENT_ACTIVITIES=--activities``): past
that many, waiting runs are evicted from its memory and replayed from history when their decision arrives, so its
RSS (``VmRSS`` of /proc/<pid>/status, sampled after each wave) levels off instead of growing with the number of
waiting runs. Then every gate is approved through the API (``--concurrency`` at a time) and we time until the last
run completed.

    python -m bench.capacity [--runs 400] [--cache 100] [--wave 100]   # --runs 10000 for the issue's figure

Prints RSS per wave, the approval time, and, last, the ratio RSS(all parked) / RSS(half parked): about 1 when
memory is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import dev_server, fmt, print_results, progress, repo_copies, run_concurrently, worker_and_api
from bench.procstat import rss_mib


async def main(args: argparse.Namespace) -> None:
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="qp-bench-capacity-") as tmp:
        root = Path(tmp)
        progress(f"making {args.runs} bare repositories")
        urls = repo_copies(root / "repos", args.runs)
        async with (
            dev_server() as env,
            worker_and_api(
                root,
                env.client,
                watch_interval=0.2,
                step_heartbeat_s=10.0,
                worker_max_cached_workflows=args.cache,
                worker_max_concurrent_activities=args.activities,
            ) as stack,
        ):
            watcher, worker = stack.watcher, stack.worker
            tag = uuid.uuid4().hex[:8]
            run_ids: list[str] = []
            rss_at: dict[int, float] = {}
            idle_rss = rss_mib(worker.pid)
            rows.append(["worker started", "0", fmt(idle_rss), ""])
            started = time.perf_counter()
            for first in range(0, args.runs, args.wave):
                wave = urls[first : first + args.wave]
                run_ids += await stack.park(wave, tag=f"{tag}-{first}")
                rss_at[len(run_ids)] = rss_mib(worker.pid)
                elapsed = time.perf_counter() - started
                rows.append(["parked at anchor", str(len(run_ids)), fmt(rss_at[len(run_ids)]), fmt(elapsed)])
                progress(f"{len(run_ids)} parked, worker RSS {rss_at[len(run_ids)]:.0f} MiB")
            progress(f"approving {len(run_ids)} gates")
            started = time.perf_counter()
            peak = 0.0

            async def approve(i: int) -> None:
                nonlocal peak
                await stack.decide(run_ids[i], "anchor")
                if i % 50 == 0:
                    peak = max(peak, rss_mib(worker.pid))

            decided = await run_concurrently(approve, total=len(run_ids), concurrency=args.concurrency)
            await asyncio.gather(*(watcher.wait(r, "run.completed", within=1800) for r in run_ids))
            approve_s = time.perf_counter() - started
            after = rss_mib(worker.pid)
            rows.append(
                [
                    f"approved ({decided.errors} errors), all completed",
                    str(len(run_ids)),
                    fmt(after),
                    fmt(approve_s),
                ]
            )
            rows.append(["peak while approving (sampled)", "", fmt(max(peak, after)), ""])

    print_results(
        f"Capacity: {args.runs} runs at gates on one worker (workflow cache {args.cache}, "
        f"{args.activities} concurrent activities, waves of {args.wave})",
        ["phase", "runs", "worker RSS MiB", "elapsed s"],
        rows,
    )
    print(f"\napproving all {len(run_ids)} took {approve_s:.1f}s ({len(run_ids) / approve_s:.1f} runs/s to completion)")
    counts = sorted(rss_at)
    half = min(counts, key=lambda n: abs(n - args.runs / 2))
    ratio = rss_at[counts[-1]] / rss_at[half]
    print(f"ratio (worker RSS with {counts[-1]} parked / with {half} parked): {ratio:.2f}  (about 1: bounded)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=400, help="runs parked at a gate (the issue asks for 10000)")
    parser.add_argument("--cache", type=int, default=100, help="the worker's max_cached_workflows")
    parser.add_argument(
        "--activities", type=int, default=100, help="the worker's max_concurrent_activities (Temporal's default 100)"
    )
    parser.add_argument("--wave", type=int, default=100, help="runs triggered and parked per wave")
    parser.add_argument("--concurrency", type=int, default=16, help="decisions in flight")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
