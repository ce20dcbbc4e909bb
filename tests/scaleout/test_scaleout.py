"""Scale-out on one Temporal server: two worker processes and two API processes share the work and the keys."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy.engine import Engine
from temporalio.api.enums.v1 import EventType, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from quantapilot.settings import Settings
from quantapilot.tokens import create_token
from tests.support import eventually, make_remote

RUNS = 10
# No gates: each run goes clone -> config -> docs -> PR -> merge on its own, many activities to share out.
NO_GATES = "version: 1\npolicies: {gates: ['-anchor']}\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QP_")}
    return {
        **env,
        "QP_ENVIRONMENT": "test",
        "QP_TEMPORAL_ADDRESS": settings.temporal_address,
        "QP_TASK_QUEUE": settings.task_queue,
        "QP_STATE_DIR": str(settings.state_dir),
        "QP_DATABASE_URL": settings.database_url,
        "QP_ALLOWED_REPO_PATTERNS": json.dumps(settings.allowed_repo_patterns),
        "QP_TOKEN_CACHE_SECONDS": "0",
        "QP_API_PROCESSES": "2",
        **extra,
    }


class Stack:
    """The processes of one scaled-out deployment."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, *args], env=env, stdout=out, stderr=out)
        self.procs.append(proc)
        return proc

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    s = Stack()
    try:
        yield s
    finally:
        await s.stop()


async def pollers(client: Client, task_queue: str, kind: TaskQueueType.ValueType) -> set[str]:
    resp = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=task_queue), task_queue_type=kind
        )
    )
    return {p.identity for p in resp.pollers}


async def answers(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def activity_identities(client: Client, workflow_id: str) -> list[str]:
    return [
        event.activity_task_started_event_attributes.identity
        async for event in client.get_workflow_handle(workflow_id).fetch_history_events()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]


@pytest.mark.slow
@pytest.mark.one_pass(
    "postgres",
    why="several workers and APIs sharing runs is a PostgreSQL deployment (docs/DEPLOY.md: SQLite is for one "
    "machine, one worker and one API); idempotent triggers on SQLite are drilled by drills/test_api_restart.py, "
    "in both passes",
)
async def test_scaleout_two_workers_two_apis_share_runs_and_idempotency(
    client: Client, settings: Settings, engine: Engine, tmp_path: Path, stack: Stack
) -> None:
    token, _ = create_token(engine, workspace="default", subject="scaleout")
    headers = {"Authorization": f"Bearer {token}"}
    hostname = socket.gethostname()

    workers = [stack.start(["-m", "worker"], process_env(settings), tmp_path / f"worker{i}.log") for i in range(2)]
    ports = [free_port(), free_port()]
    for i, port in enumerate(ports):
        stack.start(["-m", "api"], process_env(settings, QP_API_PORT=str(port)), tmp_path / f"api{i}.log")
    # The SDK's default worker identity is "<pid>@<host>": both workers poll for activities before any run starts.
    identities = {f"{w.pid}@{hostname}" for w in workers}
    await eventually(
        lambda: pollers(client, settings.task_queue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY),
        lambda seen: identities <= seen,
        timeout=60,
        what="both workers polling",
    )
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    for base in bases:
        await eventually(partial(answers, f"{base}/healthz"), bool, timeout=60, what=f"{base} up")

    # One remote per run: runs of one repository would race for its docs branch, which is not what this shows.
    urls = [
        make_remote(tmp_path, {"README.md": "# Scale-out\n", "quantapilot.yml": NO_GATES}, name=f"project{i}")
        for i in range(RUNS + 1)
    ]
    async with aiohttp.ClientSession(headers=headers) as http:

        async def post_run(base: str, body: dict[str, Any], key: str | None = None) -> tuple[int, dict[str, Any]]:
            extra = {"Idempotency-Key": key} if key else {}
            async with http.post(f"{base}/run", json=body, headers=extra) as resp:
                return resp.status, await resp.json()

        async def state(base: str, run_id: str) -> str:
            async with http.get(f"{base}/v1/runs/{run_id}") as resp:
                return str((await resp.json())["state"])

        # N runs triggered alternately through both API processes, all at once.
        started = await asyncio.gather(
            *(
                post_run(bases[i % 2], {"repo_url": urls[i], "branch": "main", "correlation_id": f"so-{i}"})
                for i in range(RUNS)
            )
        )
        assert [code for code, _ in started] == [202] * RUNS, started
        run_ids = [body["run_id"] for _, body in started]
        for i, run_id in enumerate(run_ids):
            # Read back through the other API process: any process serves any run.
            await eventually(
                partial(state, bases[(i + 1) % 2], run_id),
                lambda s: s in ("completed", "failed", "cancelled"),
                timeout=120,
                interval=0.25,
                what=f"run {run_id} finished",
            )
            final = await state(bases[(i + 1) % 2], run_id)
            assert final == "completed", (run_id, final)

        # The same Idempotency-Key sent concurrently to both APIs yields one run.
        key = f"scaleout-{uuid.uuid4().hex}"
        body = {"repo_url": urls[RUNS], "branch": "main"}
        both = await asyncio.gather(post_run(bases[0], body, key), post_run(bases[1], body, key))
        assert [code for code, _ in both] == [202, 202], both
        assert both[0][1]["run_id"] == both[1][1]["run_id"]
        assert sorted(b["created"] for _, b in both) == [False, True]
        dup_id = both[0][1]["run_id"]
        # Visibility is eventually consistent: wait for the run to be listed, then it must be listed once.
        same_id = await eventually(
            lambda: listed(client, f"repo-run/default/{dup_id}"), lambda ids: len(ids) >= 1, what="run listed"
        )
        assert len(same_id) == 1

    # Activity work was spread over both worker processes.
    per_worker: collections.Counter[str] = collections.Counter()
    for run_id in run_ids:
        per_worker.update(await activity_identities(client, f"repo-run/default/{run_id}"))
    assert set(per_worker) == identities, per_worker
    assert min(per_worker.values()) >= 5, per_worker
    # Every run's events landed once, in order, although four processes shared one database.
    async with aiohttp.ClientSession(headers=headers) as http:
        for run_id in run_ids:
            async with http.get(f"{bases[0]}/v1/runs/{run_id}/events") as resp:
                events = (await resp.json())["events"]
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            assert [e["type"] for e in events][-1] == "run.completed"


async def listed(client: Client, workflow_id: str) -> list[str]:
    return [w.id async for w in client.list_workflows(f"WorkflowId = '{workflow_id}'")]
