"""Drill: the worker (a subprocess) is SIGKILLed at random points while 20 runs go through their pipeline.

A new worker starts right after each kill. Every run must complete, with one pull request per branch it pushed
and an event log that is gapless and has each event exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from quantapilot.db import RunEvent
from quantapilot.forges.store import PullRequestRecord
from quantapilot.settings import Settings
from tests.conftest import ApiFactory
from tests.drills.helpers import events_of_type, kill, remotes, spawn, stop, until

RUNS = 20
SEED = 20240808
# A README-only repository uses the defaults: docs PR, the anchor gate, merge.
EXPECTED_EVENTS = {
    "run.started": 1,
    "documentation.generated": 1,
    "gate.requested": 1,
    "gate.decided": 1,
    "run.completed": 1,
}


@pytest.mark.slow
@pytest.mark.timeout(170)
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
    kills = 0
    approved: set[str] = set()
    try:
        run_ids = []
        for i, url in enumerate(urls):
            code, body = await api.post(
                "/v1/runs", {"repo_url": url, "branch": "main"}, headers={"Idempotency-Key": f"k{i}"}
            )
            assert code == 202, body
            run_ids.append(body["run_id"])

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
            # Kill the worker at random moments through the first part of the drill, restarting it each time.
            # A worker needs ~2 s to start polling: kills 2.5-5 s apart leave each one some work to lose, while a
            # step still gets through its attempts (three deaths in one step would pause its run, by design).
            stop_killing = time.monotonic() + 20
            while time.monotonic() < stop_killing and len(events_of_type(engine, "run.completed")) < RUNS:
                await asyncio.sleep(rng.uniform(2.5, 5.0))
                kill(worker)
                kills += 1
                worker = spawn("worker", settings, log)
            await until(
                lambda: asyncio.to_thread(lambda: len(events_of_type(engine, "run.completed")) == RUNS),
                within=120,
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

    assert kills >= 3
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
