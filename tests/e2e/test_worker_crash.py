"""A worker killed with SIGKILL mid-run: another worker finishes the run, with no step's effect doubled."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from quantapilot.forges.store import PullRequestRecord
from quantapilot.settings import Settings
from tests.conftest import ApiFactory
from tests.support import eventually, make_remote, remote_file, require_bwrap

QUANTAPILOT_YML = """\
version: 1
milestones:
  - id: M-001
    title: Write the changelog
    criteria: [changelog exists]
    steps:
      - name: impl
        run: "echo started > started.flag; sleep 3; echo 'entry' >> CHANGELOG.md; rm started.flag"
        timeout_s: 60
"""


def worker_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "QP_TEMPORAL_ADDRESS": settings.temporal_address,
        "QP_TASK_QUEUE": settings.task_queue,
        "QP_STATE_DIR": str(settings.state_dir),
        "QP_DATABASE_URL": settings.database_url,
        "QP_ALLOWED_REPO_PATTERNS": json.dumps(settings.allowed_repo_patterns),
        "QP_COMMAND_REPO_PATTERNS": json.dumps(settings.command_repo_patterns),
    }


def start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "worker"], env=worker_env(settings), stdout=out, stderr=out)


@pytest.mark.slow
async def test_worker_killed_mid_step_and_at_gate_run_completes_once(
    make_api: ApiFactory, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    require_bwrap()  # the milestone's command runs in the sandbox
    settings = settings.model_copy(update={"command_repo_patterns": ["file://*"], "step_heartbeat_s": 2.0})
    api = await make_api(settings)
    url = make_remote(tmp_path, {"README.md": "# crash test\n", "quantapilot.yml": QUANTAPILOT_YML})
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    try:
        _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
        run_id = body["run_id"]
        # Kill 1: while the run waits at the anchor gate (state lives only in Temporal's history).
        await api.wait_gate(run_id, "anchor")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        worker = start_worker(settings, log)
        code, _ = await api.decide(run_id, "anchor", True)
        assert code == 200

        # Kill 2: in the middle of the milestone's command.
        worktree = settings.run_workdir / "default" / run_id / "repo"
        await eventually(
            lambda: asyncio.to_thread((worktree / "started.flag").exists), bool, timeout=60, what="command started"
        )
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        worker = start_worker(settings, log)

        await api.wait_gate(run_id, "M-001", timeout=90)
        await api.decide(run_id, "M-001", True)
        await api.wait_gate(run_id, "first_merge")
        await api.decide(run_id, "first_merge", True)
        final = await api.wait_state(run_id, "completed", timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 30)

    assert final["milestones"][0]["status"] == "completed"
    # The command's effect landed once, on main, through the milestone's PR.
    assert remote_file(url, "main", "CHANGELOG.md") == "entry\n"
    # One PR per branch even though two workers took part.
    with Session(engine) as session:
        prs = list(session.exec(select(PullRequestRecord).where(PullRequestRecord.run_id == run_id)))
    heads = collections.Counter(pr.head for pr in prs)
    assert sorted(heads.values()) == [1, 1], heads
    # Every event exactly once, in an unbroken sequence.
    events = await api.events(run_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    kinds = collections.Counter(e["type"] for e in events)
    assert kinds["run.started"] == 1
    assert kinds["documentation.generated"] == 1
    assert kinds["milestone.completed"] == 1
    assert kinds["run.completed"] == 1
    assert kinds["gate.requested"] == 3
