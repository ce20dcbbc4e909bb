"""Record the histories the replay test replays: ``python -m tests.replay.record``.

Starts its own Temporal dev server, a worker and the HTTP API in this process, drives one run per scenario through
the API (as an operator would), and writes each run's history as JSON under ``tests/replay/histories/``. Re-record
after a change that is meant to alter the workflows' commands (and guard the old path with ``workflow.patched``
first, so runs already in flight keep replaying: see docs/DEPLOY.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from temporalio.client import Client, WorkflowFailureError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from quantapilot.db import create_all, make_engine
from quantapilot.settings import Settings
from quantapilot.temporal_dev import load_dev_config, temporal_cli_path
from quantapilot.tokens import create_token
from tests.support import Api, make_remote
from worker import build_worker

HISTORIES = Path(__file__).resolve().parent / "histories"
README = "# Replay demo\n\nA project whose runs are recorded for the replay test.\n"
TWO_MILESTONES = """\
version: 1
policies: {merge: squash}
milestones:
  - id: M-001
    title: Add a changelog
    criteria: [CHANGELOG.md exists]
    steps:
      - {name: impl, run: "echo 'v1' > CHANGELOG.md", timeout_s: 30}
      - {name: test, run: "test -s CHANGELOG.md && echo ok", timeout_s: 30}
  - id: M-002
    title: Extend the changelog
    gate: true
    steps:
      - {name: impl, run: "echo 'v2' >> CHANGELOG.md", timeout_s: 30}
"""

Scenario = Callable[[Api, Path], Awaitable[str]]


async def approved(api: Api, root: Path) -> str:
    """Anchor approved: documentation merged, run completed."""
    _, body = await api.post("/run", {"repo_url": make_remote(root, {"README.md": README}), "branch": "main"})
    await api.wait_gate(body["run_id"], "anchor")
    await api.decide(body["run_id"], "anchor", True, "looks right")
    await api.wait_state(body["run_id"], "completed")
    return str(body["run_id"])


async def rejected(api: Api, root: Path) -> str:
    """Anchor rejected: the run fails with GATE_REJECTED."""
    _, body = await api.post("/run", {"repo_url": make_remote(root, {"README.md": README}), "branch": "main"})
    await api.wait_gate(body["run_id"], "anchor")
    await api.decide(body["run_id"], "anchor", False, "wrong scope")
    await api.wait_state(body["run_id"], "failed")
    return str(body["run_id"])


async def paused_resumed(api: Api, root: Path) -> str:
    """Paused at the anchor gate, decided while paused, then resumed to completion."""
    _, body = await api.post("/run", {"repo_url": make_remote(root, {"README.md": README}), "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    await api.post(f"/v1/runs/{run_id}/pause", {"reason": "security review"})
    await api.decide(run_id, "anchor", True)
    await api.post(f"/v1/runs/{run_id}/resume")
    await api.wait_state(run_id, "completed")
    return str(run_id)


async def two_milestones(api: Api, root: Path) -> str:
    """Two milestones with commands, their gates and the first merge; completed."""
    url = make_remote(root, {"README.md": README, "quantapilot.yml": TWO_MILESTONES})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main", "correlation_id": "replay-milestones"})
    run_id = body["run_id"]
    for gate in ("anchor", "M-001", "first_merge", "M-002"):
        await api.wait_gate(run_id, gate)
        await api.decide(run_id, gate, True, f"{gate} ok")
    await api.wait_state(run_id, "completed")
    return str(run_id)


SCENARIOS: dict[str, Scenario] = {
    "repo_run_approved": approved,
    "repo_run_rejected": rejected,
    "repo_run_paused_resumed": paused_resumed,
    "repo_run_two_milestones": two_milestones,
}


async def record(client: Client, work: Path, names: list[str]) -> list[Path]:
    """Drive each named scenario through a worker and the API on ``client``'s server; write the histories."""
    settings = Settings(
        environment="test",
        state_dir=work / "state",
        temporal_address=client.service_client.config.target_host,
        task_queue=f"qp-record-{uuid.uuid4().hex[:8]}",
        allowed_repo_patterns=["file://*"],
        command_repo_patterns=["file://*"],
        token_cache_seconds=0.0,
        allow_self_approval=True,
    )
    engine = make_engine(settings.database_url)
    create_all(engine)
    token, _ = create_token(engine, workspace="default", subject="recorder")
    written: list[Path] = []
    async with (
        build_worker(client, settings),
        TestClient(TestServer(create_app(settings, client=client, engine=engine))) as http,
    ):
        api = Api(client=http, token=token)
        for name in names:
            root = work / name
            root.mkdir()
            run_id = await SCENARIOS[name](api, root)
            handle = client.get_workflow_handle(f"repo-run/default/{run_id}")
            # The state turns final before the last event is recorded: wait until the workflow itself has closed.
            with contextlib.suppress(WorkflowFailureError):
                await handle.result()
            history = await handle.fetch_history()
            path = HISTORIES / f"{name}.json"
            # Indented so a re-recording shows up as a readable diff.
            path.write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n", encoding="utf-8")
            written.append(path)
    return written


async def main(names: list[str]) -> None:
    """Record ``names`` (default: every scenario) on a fresh dev server."""
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; known: {sorted(SCENARIOS)}")
    HISTORIES.mkdir(parents=True, exist_ok=True)
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal_cli_path()),
        data_converter=pydantic_data_converter,
        dev_server_extra_args=load_dev_config().extra_flags(),
    )
    try:
        with tempfile.TemporaryDirectory(prefix="qp-record-") as tmp:
            for path in await record(env.client, Path(tmp), names or list(SCENARIOS)):
                print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
