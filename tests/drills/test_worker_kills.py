"""Drill: the worker (a subprocess) is SIGKILLed at random points while 20 runs go through their pipeline.

A new worker starts right after each kill. Every run must complete, with one pull request per branch it pushed
and an event log that is gapless and has each event exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import operator
import random
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from quantapilot.events.table import RunEvent
from quantapilot.forges.store import PullRequestRecord
from quantapilot.settings import Settings
from tests.conftest import ApiFactory
from tests.drills.helpers import events_of_type, kill, remotes, spawn, stop
from tests.support import eventually

RUNS = 20
KILLS = 4
SEED = 20240808
# A README-only repository uses the defaults: docs PR, the anchor gate, merge.
EXPECTED_EVENTS = {
    "run.started": 1,
    "documentation.generated": 1,
    "gate.requested": 1,
    "gate.decided": 1,
    "run.completed": 1,
}


def progress(engine: Engine, run_ids: list[str]) -> tuple[int, int]:
    """How many events these runs have logged, and how many of them have completed."""
    return event_count(engine, run_ids), len(events_of_type(engine, "run.completed") & set(run_ids))


def all_completed(runs: int, seen: tuple[int, int]) -> bool:
    """Whether :func:`progress` saw ``runs`` runs completed."""
    return seen[1] == runs


def event_count(engine: Engine, run_ids: list[str]) -> int:
    """How many events these runs have logged so far."""
    with Session(engine) as session:
        return len(list(session.exec(select(RunEvent.id).where(col(RunEvent.run_id).in_(run_ids)))))


@pytest.mark.slow
# The waits inside are bounded by progress; this only stops a drill that hangs outright.
@pytest.mark.timeout(600)
@pytest.mark.one_pass(
    "postgres",
    why="20 runs write at once, which PostgreSQL runs concurrently (SQLite serializes writers): its claims rest on "
    "PostgreSQL's constraints and transactions. A worker killed mid-step, at a gate, between push and PR record and "
    "mid-delivery is tested on SQLite too (e2e/test_worker_crash.py, e2e/test_milestones.py, "
    "webhook_e2e/test_worker_crash.py run in both passes)",
)
async def test_drill_worker_sigkilled_at_random_points_every_run_completes_once(
    make_api: ApiFactory, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    # Heartbeats every 2 s: a step that died with its worker is retried within seconds.
    settings = settings.model_copy(update={"step_heartbeat_s": 2.0, "rate_limit_enabled": False})
    api = await make_api(settings)
    urls = remotes(tmp_path / "repos", RUNS)
    log = tmp_path / "worker.log"
    worker = spawn("worker", settings, log)
    # At each kill: how many triggered runs had not completed yet (the kill had work to lose).
    in_flight_at_kill: list[int] = []
    approved: set[str] = set()
    run_ids: list[str] = []

    async def trigger(indices: range) -> None:
        for i in indices:
            code, body = await api.post(
                "/v1/runs", {"repo_url": urls[i], "branch": "main"}, headers={"Idempotency-Key": f"k{i}"}
            )
            assert code == 202, body
            run_ids.append(body["run_id"])

    try:

        async def approver() -> None:
            # Approve each anchor gate as soon as the run asks for it; while no worker answers the update the API
            # says 503, and the decision is simply sent again.
            while True:
                for run_id in events_of_type(engine, "gate.requested") - approved:
                    code, _ = await api.decide(run_id, "anchor", True)
                    if code == 200:
                        approved.add(run_id)
                await asyncio.sleep(0.2)

        approving = asyncio.create_task(approver())
        try:
            # Runs arrive in waves, one before each kill, and each kill waits until its wave's event log has
            # reached a random point in the pipeline: every kill strikes runs midway however fast this machine gets
            # through a run (on a quick one all 20 finish between two timed kills). Each wave has a fresh worker, so
            # no step dies three times (which would pause its run, by design).
            wave = RUNS // (KILLS + 1)
            for n in range(KILLS + 1):
                first = len(run_ids)
                await trigger(range(n * wave, RUNS if n == KILLS else (n + 1) * wave))
                if n == KILLS:
                    break
                wave_ids = run_ids[first:]
                threshold = rng.randint(1, len(wave_ids) * sum(EXPECTED_EVENTS.values()) - 2)
                # Bounded by progress (events still being logged), not by a guess of this machine's speed.
                await eventually(
                    functools.partial(asyncio.to_thread, event_count, engine, wave_ids),
                    functools.partial(operator.le, threshold),
                    timeout=60,
                    interval=0.05,
                    what=f"wave {n} at {threshold} events",
                )
                completed = await asyncio.to_thread(events_of_type, engine, "run.completed")
                kill(worker)
                in_flight_at_kill.append(len(set(run_ids) - completed))
                worker = spawn("worker", settings, log)
                # The struck wave finishes on the fresh worker before the next wave and the next kill: on a loaded
                # machine a slow run would otherwise be struck by several kills, and a step that dies three times
                # pauses its run (by design), which is not what this drill is about.
                await eventually(
                    functools.partial(asyncio.to_thread, progress, engine, wave_ids),
                    functools.partial(all_completed, len(wave_ids)),
                    timeout=60,
                    interval=0.2,
                    what=f"wave {n} completed after the kill",
                )
            # Progress is any run logging an event; a loaded machine gets there later, a stuck run fails after 60 s.
            await eventually(
                functools.partial(asyncio.to_thread, progress, engine, run_ids),
                lambda seen: seen[1] == RUNS,
                timeout=60,
                interval=0.5,
                what="every run completed",
            )
            # Status queries need a live worker: ask before it stops. Right after a kill a query can wait out
            # the dead worker's sticky queue (503 for a moment), so poll rather than ask once.
            for run_id in run_ids:
                status = await api.wait_state(run_id, "completed", "failed", "cancelled")
                assert status["state"] == "completed", status
                assert [pr["state"] for pr in status["pull_requests"]] == ["merged"], status
        finally:
            approving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await approving
    finally:
        stop(worker)

    assert len(in_flight_at_kill) == KILLS
    # Each kill struck while runs were unfinished: the drill tested recovery, not an idle worker.
    assert all(n > 0 for n in in_flight_at_kill), in_flight_at_kill
    assert len(set(run_ids)) == RUNS
    with Session(engine) as session:
        prs = list(session.exec(select(PullRequestRecord)))
        events = list(session.exec(select(RunEvent)))
    # One PR per (run, head) however many workers opened it.
    per_branch = collections.Counter((pr.run_id, pr.head) for pr in prs)
    assert set(per_branch.values()) == {1}, per_branch
    assert {run_id for run_id, _ in per_branch} == set(run_ids)
    by_run: dict[str, list[RunEvent]] = collections.defaultdict(list)
    for event in events:
        by_run[event.run_id].append(event)
    for run_id in run_ids:
        log_of_run = sorted(by_run[run_id], key=lambda e: e.seq)
        assert [e.seq for e in log_of_run] == list(range(1, len(log_of_run) + 1)), run_id
        assert dict(collections.Counter(e.type for e in log_of_run)) == EXPECTED_EVENTS, run_id
