"""Gate decisions: decision-to-next-step latency for runs waiting at their ``anchor`` gate, against a signal.

Setup: N repository runs (README-only local bare repos, no quantapilot.yml) are triggered through the API and
parked at ``anchor`` (their ``gate.requested`` event is in the log). The worker is ``python -m worker`` in a
subprocess. Then the gates are approved through ``POST /v1/runs/{id}/gates/anchor/decision`` with
``--concurrency`` decisions in flight, and for each one we time, from the moment the POST is sent:

- ``accepted``: its 200, i.e. the workflow update was validated and applied by the run (the gate is decided);
- ``next step done``: the run's workflow result, i.e. the run recorded ``gate.decided``, merged the docs PR
  (its next step) and completed. Read with ``handle.result()`` (a long poll, no polling interval in the figure).

Ceiling: N trivial workflows waiting on a signal (same dev server, worker in this process), signalled with the
raw client at the same concurrency: ``accepted`` = the signal RPC returned, ``next step done`` = the workflow
completed.

    python -m bench.gates [--runs 100] [--concurrency 16]      # --runs 1000 for the issue's figure

Prints the table, the CPU milliseconds per decision by process (worker, its git children, dev server, bench + API)
and, last, the ratio of the p50s (ceiling / ours) for "next step done".
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from bench.ceiling import ceiling_worker
from bench.common import Sample, dev_server, fmt, print_results, progress, repo_copies, run_concurrently, worker_and_api
from bench.procstat import CpuMeter, dev_server_pid
from quantapilot.models import RunKind
from quantapilot.runs.ids import workflow_id


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="qp-bench-gates-") as tmp:
        root = Path(tmp)
        progress(f"making {args.runs} bare repositories")
        urls = repo_copies(root / "repos", args.runs)
        async with dev_server() as env:
            client = env.client
            async with worker_and_api(
                root,
                client,
                watch_interval=0.2,
                step_heartbeat_s=10.0,
                worker_max_cached_workflows=max(2000, args.runs),
            ) as stack:
                progress(f"parking {args.runs} runs at the anchor gate")
                started = time.perf_counter()
                run_ids = await stack.park(urls, tag=uuid.uuid4().hex[:8])
                progress(f"parked in {time.perf_counter() - started:.0f}s; deciding")
                accepted: list[float] = []

                async def decide_one(i: int) -> None:
                    sent = time.perf_counter()
                    await stack.decide(run_ids[i], "anchor")
                    accepted.append(time.perf_counter() - sent)
                    wid = workflow_id(RunKind.REPOSITORY, "default", run_ids[i])
                    await client.get_workflow_handle(wid).result()

                ours_cpu = CpuMeter(worker=stack.worker.pid, server=dev_server_pid())
                ours_cpu.start()
                ours = await run_concurrently(decide_one, total=args.runs, concurrency=args.concurrency)
                ours_cpu.stop()
                ours_accepted = Sample(len(accepted), ours.seconds, accepted)

            progress(f"ceiling: {args.runs} workflows waiting on a signal")
            queue = f"qp-bench-ceiling-{uuid.uuid4().hex[:8]}"
            async with ceiling_worker(client, queue, max_cached_workflows=max(2000, args.runs)):
                handles = []
                for i in range(args.runs):
                    handles.append(
                        await client.start_workflow("BenchWaitSignal", id=f"bench-wait-{queue}-{i}", task_queue=queue)
                    )
                # Each one has run its first task (it is waiting) once it answers a query.
                await run_concurrently(lambda i: handles[i].query("ready"), total=args.runs, concurrency=32)
                signalled: list[float] = []

                async def signal_one(i: int) -> None:
                    sent = time.perf_counter()
                    await handles[i].signal("decide")
                    signalled.append(time.perf_counter() - sent)
                    await handles[i].result()

                ceiling_cpu = CpuMeter(worker=None, server=dev_server_pid())
                ceiling_cpu.start()
                ceiling = await run_concurrently(signal_one, total=args.runs, concurrency=args.concurrency)
                ceiling_cpu.stop()
                ceiling_accepted = Sample(len(signalled), ceiling.seconds, signalled)

    def row(name: str, what: str, s: Sample) -> list[str]:
        return [name, what, str(s.count), fmt(s.ms(50)), fmt(s.ms(99)), fmt(s.per_second)]

    print_results(
        f"Gates: {args.runs} runs waiting, decided {args.concurrency} at a time (latency from the decision sent)",
        ["path", "until", "n", "p50 ms", "p99 ms", "decisions/s"],
        [
            row("repository run: POST decision", "200 (gate decided)", ours_accepted),
            row("repository run: POST decision", "next step done (merged, completed)", ours),
            row("raw: signal a waiting workflow", "signal returned", ceiling_accepted),
            row("raw: signal a waiting workflow", "workflow completed", ceiling),
        ],
    )
    print("\n" + ours_cpu.line("decision, ours", ours.count))
    print(ceiling_cpu.line("signal, raw (its worker is in bench + API)", ceiling.count))
    ratio = ceiling.ms(50) / ours.ms(50)
    print(f"\nratio (p50 decision to next step done: raw signal-to-completed / ours): {ratio:.3f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100, help="runs waiting at a gate (the issue asks for 1000)")
    parser.add_argument("--concurrency", type=int, default=16, help="decisions in flight")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
