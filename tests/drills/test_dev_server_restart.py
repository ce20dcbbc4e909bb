"""Drill: the Temporal dev server (SQLite persistence) goes away twice in the middle of runs.

The server runs as our own subprocess with ``--db-filename`` (``load_dev_config().start_dev_args``) on a free
port. First it is stopped while the runs wait at their gates and started again on the same port and file; the
runs are approved through the API. Then it is SIGKILLed right after the decisions, while the runs' merge steps
are in flight, and started again. The runs complete, served by the same worker and API processes that lived
through both outages, each with one merged pull request and a gapless log of each event once.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from api.app import create_app
from quantapilot.forges.store import PullRequestRecord
from quantapilot.settings import Settings
from quantapilot.temporal_dev import load_dev_config, temporal_cli_path
from quantapilot.tokens import create_token
from tests.drills.helpers import assert_whole_logs, events_of_type, free_port, kill, remotes, spawn, stop, until
from tests.support import Api

RUNS = 3


def _start_server(port: int, state_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    config = load_dev_config().model_copy(update={"port": port, "ip": "127.0.0.1"})
    args = config.start_dev_args(state_dir=state_dir, headless=True)
    with log.open("ab") as out:
        return subprocess.Popen([str(temporal_cli_path()), *args], stdout=out, stderr=out)


async def _connect(address: str) -> Client | None:
    try:
        return await Client.connect(address, data_converter=pydantic_data_converter)
    except RuntimeError:
        return None


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.one_pass(
    "sqlite",
    why="what goes away is Temporal's server; the database stays up for three runs, and a retried step's one PR "
    "and each event once are tested on PostgreSQL by e2e/test_worker_crash.py and e2e/test_milestones.py",
)
async def test_drill_dev_server_restarted_runs_at_gates_complete(
    aiohttp_client, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    state_dir = tmp_path / "temporal"
    state_dir.mkdir()
    server_log = tmp_path / "server.log"
    server = _start_server(port, state_dir, server_log)
    worker = None
    try:
        client = await until(lambda: _connect(address), within=60, what="dev server up")
        # Heartbeats every 2 s: a step whose completion was lost with the killed server is retried within seconds.
        settings = settings.model_copy(
            update={"temporal_address": address, "rate_limit_enabled": False, "step_heartbeat_s": 2.0}
        )
        worker = spawn("worker", settings, tmp_path / "worker.log")
        token, _ = create_token(engine, workspace="default", subject="drill")
        api = Api(client=await aiohttp_client(create_app(settings, client=client, engine=engine)), token=token)

        run_ids = []
        for i, url in enumerate(remotes(tmp_path / "repos", RUNS)):
            code, body = await api.post(
                "/v1/runs", {"repo_url": url, "branch": "main"}, headers={"Idempotency-Key": f"k{i}"}
            )
            assert code == 202, body
            run_ids.append(body["run_id"])
        for run_id in run_ids:
            await api.wait_gate(run_id, "anchor", timeout=60)

        # Stop the server (its state is in the SQLite file), make sure it is really gone, start it again.
        stop(server)
        code, body = await api.get(f"/v1/runs/{run_ids[0]}")
        assert code >= 500, body  # nothing answers for Temporal meanwhile
        server = _start_server(port, state_dir, server_log)
        await until(lambda: _connect(address), within=60, what="dev server back")

        # The same API and worker processes carry on: status, decisions, completion.
        for run_id in run_ids:
            status = await api.wait_gate(run_id, "anchor", timeout=60)
            assert status["state"] == "waiting_for_gate", status
            code, body = await until(
                functools.partial(_decide, api, run_id), within=60, interval=0.5, what="decision accepted"
            )
            assert code == 200, body
        # Second outage, the hard way: SIGKILL while the approved runs merge, then the same port and file again.
        unfinished = set(run_ids) - events_of_type(engine, "run.completed")
        kill(server)
        # The last decision was accepted a moment ago: its run cannot have merged and recorded its end yet.
        assert unfinished, "every run had finished before the kill: the drill did not drill"
        server = _start_server(port, state_dir, server_log)
        await until(lambda: _connect(address), within=60, what="dev server back after SIGKILL")
        for run_id in run_ids:
            final = await until(
                functools.partial(_final_state, api, run_id), within=120, interval=0.5, what="run finished"
            )
            assert final["state"] == "completed", final
            assert [pr["state"] for pr in final["pull_requests"]] == ["merged"], final
        assert events_of_type(engine, "run.completed") == set(run_ids)
        with Session(engine) as session:
            prs = list(session.exec(select(PullRequestRecord).where(col(PullRequestRecord.run_id).in_(run_ids))))
        assert sorted(pr.run_id for pr in prs) == sorted(run_ids)  # one PR each, however often a merge was retried
        assert_whole_logs(engine, run_ids)
    finally:
        if worker is not None:
            stop(worker)
        stop(server)


async def _final_state(api: Api, run_id: str) -> dict[str, Any] | None:
    """The run's status once it has finished; None while it runs or Temporal does not answer yet."""
    code, body = await api.get(f"/v1/runs/{run_id}")
    if code != 200 or body["state"] not in ("completed", "failed", "cancelled"):
        return None
    return dict(body)


async def _decide(api: Api, run_id: str) -> tuple[int, object] | None:
    """A decision, or None while the client is still reconnecting (503/500) so the caller polls again."""
    code, body = await api.decide(run_id, "anchor", True)
    return (code, body) if code < 500 else None
