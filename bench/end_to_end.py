"""End to end: repository runs completed per second, against a trivial one-activity workflow.

Our run: ``POST /v1/runs`` for a local bare repository with a README and no quantapilot.yml (so the defaults
apply: clone, read config, generate the docs, open the docs PR, the ``anchor`` gate, merge, complete), the anchor
approved through the API as soon as its ``gate.requested`` event is in the log (self-approval on). The worker is
``python -m worker`` in a subprocess; the API runs in this process on a loopback port. Every run has its own bare
remote (their merges would otherwise race for ``main``).

Ceiling: a workflow that executes one no-op activity, started and awaited with the raw client at the same
concurrency, its worker in this process.

    python -m bench.end_to_end [--runs 60] [--concurrency 8]

Prints the table, the CPU milliseconds per run by process (worker, its git children, dev server, bench + API) and,
last, the ratio (our runs/s divided by the ceiling's runs/s).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from pathlib import Path

from bench.ceiling import ceiling_worker
from bench.common import Sample, dev_server, fmt, print_results, progress, repo_copies, run_concurrently, worker_and_api
from bench.procstat import CpuMeter, dev_server_pid

RUN_TIMEOUT_S = 120.0


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="qp-bench-e2e-") as tmp:
        root = Path(tmp)
        urls = repo_copies(root / "repos", args.runs + args.warmup)
        async with dev_server() as env:
            client = env.client
            async with worker_and_api(root, client, step_heartbeat_s=10.0) as stack:
                watcher = stack.watcher
                tag = uuid.uuid4().hex[:8]

                async def one_run(i: int) -> None:
                    run_id = await stack.trigger(urls[i], f"e2e-{tag}-{i}")
                    await watcher.wait(run_id, "gate.requested", within=RUN_TIMEOUT_S)
                    await stack.decide(run_id, "anchor")
                    await watcher.wait(run_id, "run.completed", within=RUN_TIMEOUT_S)

                progress(f"warm-up: {args.warmup} runs (worker start, imports, first git calls)")
                warm = await run_concurrently(one_run, total=args.warmup, concurrency=args.warmup)
                if warm.errors:
                    raise SystemExit(f"warm-up runs failed; see {root / 'worker.log'}")
                progress(f"our runs: {args.runs} at concurrency {args.concurrency}")

                async def measured(i: int) -> None:
                    await one_run(args.warmup + i)

                ours_cpu = CpuMeter(worker=stack.worker.pid, server=dev_server_pid())
                ours_cpu.start()
                ours = await run_concurrently(measured, total=args.runs, concurrency=args.concurrency)
                ours_cpu.stop()

            progress(f"ceiling: {args.runs} one-activity workflows at concurrency {args.concurrency}")
            queue = f"qp-bench-ceiling-{uuid.uuid4().hex[:8]}"
            async with ceiling_worker(client, queue):

                async def trivial(i: int) -> None:
                    await client.execute_workflow(
                        "BenchOneActivity", f"v{i}", id=f"bench-one-{queue}-{i}", task_queue=queue
                    )

                await run_concurrently(trivial, total=20, concurrency=args.concurrency)  # warm-up
                ceiling_cpu = CpuMeter(worker=None, server=dev_server_pid())
                ceiling_cpu.start()
                ceiling = await run_concurrently(
                    lambda i: trivial(1000 + i), total=args.runs, concurrency=args.concurrency
                )
                ceiling_cpu.stop()

    ratio = ours.per_second / ceiling.per_second

    def row(name: str, s: Sample, digits: int) -> list[str]:
        return [
            name,
            str(s.count),
            str(s.errors),
            fmt(s.per_second, 2),
            fmt(s.ms(50) / 1000, digits),
            fmt(s.ms(99) / 1000, digits),
        ]

    print_results(
        f"End to end: {args.runs} runs at concurrency {args.concurrency} (README-only bare repo, anchor auto-approved)",
        ["path", "runs", "errors", "runs/s", "p50 s", "p99 s"],
        [row("repository run via API + worker", ours, 2), row("raw: one-activity workflow", ceiling, 3)],
    )
    print("\n" + ours_cpu.line("run, ours", ours.count))
    print(ceiling_cpu.line("run, raw (its worker is in bench + API)", ceiling.count))
    print(f"\nratio (our runs/s / one-activity workflow runs/s): {ratio:.3f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=60, help="measured runs")
    parser.add_argument("--concurrency", type=int, default=8, help="runs in flight")
    parser.add_argument("--warmup", type=int, default=4)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
