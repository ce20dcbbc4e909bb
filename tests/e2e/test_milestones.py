"""Repository runs with milestones: commands, PRs, gates, merges, conflicts, budgets and gate timeouts."""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from quantapilot.forges.store import PullRequestRecord
from quantapilot.settings import Settings
from tests.conftest import ApiFactory
from tests.e2e.test_worker_crash import start_worker
from tests.support import Api, eventually, git, make_remote, remote_file, require_bwrap

README = "# Demo\n\nfirst line\n"

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


@pytest.fixture
def cmd_settings(settings: Settings) -> Settings:
    require_bwrap()  # the commands run in the sandbox
    return settings.model_copy(update={"command_repo_patterns": ["file://*"]})


@pytest.fixture
async def cmd_api(make_api: ApiFactory, cmd_settings: Settings) -> Api:
    return await make_api(cmd_settings)


@pytest.fixture
async def cmd_worker(client, cmd_settings: Settings):
    from worker import build_worker

    async with build_worker(client, cmd_settings):
        yield


def kinds(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


@pytest.mark.usefixtures("cmd_worker")
async def test_milestones_two_with_gates_happy_path(cmd_api: Api, tmp_path: Path) -> None:
    api = cmd_api
    url = make_remote(tmp_path, {"README.md": README, "quantapilot.yml": TWO_MILESTONES})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    for gate in ("anchor", "M-001", "first_merge", "M-002"):
        status = await api.wait_gate(run_id, gate)
        assert status["state"] == "waiting_for_gate", status
        if gate == "M-001":
            # The milestone's work is on its own branch and PR, not yet on main.
            assert remote_file(url, "main", "CHANGELOG.md") is None
            milestone = status["milestones"][0]
            assert milestone["status"] == "active"
            assert [s["exit_code"] for s in milestone["steps"]] == [0, 0]
            assert milestone["steps"][1]["output_tail"].strip() == "ok"
            assert remote_file(url, milestone["branch"], "CHANGELOG.md") == "v1\n"
            # The milestone's commit: its subject, then the run it was made by (Worktrees.commit_and_push).
            message = git("log", "-1", "--format=%B", milestone["branch"], cwd=Path(url.removeprefix("file://")))
            assert message.strip() == f"M-001: Add a changelog\n\nQuantaPilot run {run_id}."
        code, decided = await api.decide(run_id, gate, True, f"{gate} ok")
        assert code == 200, decided
    final = await api.wait_state(run_id, "completed")
    assert [m["status"] for m in final["milestones"]] == ["completed", "completed"]
    assert remote_file(url, "main", "CHANGELOG.md") == "v1\nv2\n"
    assert [p["state"] for p in final["pull_requests"]] == ["merged", "merged", "merged"]
    events = await api.events(run_id)
    completed = [e["data"]["milestone_id"] for e in events if e["type"] == "milestone.completed"]
    assert completed == ["M-001", "M-002"]
    assert [e["data"]["gate"] for e in events if e["type"] == "gate.requested"] == [
        "anchor",
        "M-001",
        "first_merge",
        "M-002",
    ]
    # Squash strategy: each milestone is one commit on main with the milestone as its subject.
    log = git("log", "--format=%s", "main", cwd=Path(url.removeprefix("file://")))
    assert "M-002: Extend the changelog" in log


@pytest.mark.usefixtures("cmd_worker")
async def test_milestones_merge_conflict_pauses_until_a_person_resolves(cmd_api: Api, tmp_path: Path) -> None:
    api = cmd_api
    yml = "version: 1\nmilestones:\n  - id: M-001\n    title: Reword\n    steps:\n      - {name: impl, run: \"sed -i 's/first line/milestone line/' README.md\"}\n"
    url = make_remote(tmp_path, {"README.md": README, "quantapilot.yml": yml})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    await api.decide(run_id, "anchor", True)
    status = await api.wait_gate(run_id, "M-001")
    branch = status["milestones"][0]["branch"]

    # Someone changes the same line on main meanwhile.
    human = tmp_path / "human"
    git("clone", "--quiet", url, str(human), cwd=tmp_path)
    (human / "README.md").write_text(README.replace("first line", "human line"))
    git("commit", "--quiet", "-am", "human edit", cwd=human)
    git("push", "--quiet", "origin", "main", cwd=human)

    await api.decide(run_id, "M-001", True)
    await api.wait_gate(run_id, "first_merge")
    await api.decide(run_id, "first_merge", True)
    paused = await api.wait_state(run_id, "paused")
    assert paused["paused_reason"] == "merge_conflict"
    # The state turns paused a moment before its event is stored (the event is the next activity's work).
    await eventually(lambda: api.events(run_id), lambda evs: "run.paused" in kinds(evs), timeout=30, what="run.paused")

    # The person resolves the conflict on the milestone branch and resumes.
    git("fetch", "--quiet", "origin", cwd=human)
    git("checkout", "--quiet", "-b", "fix", f"origin/{branch}", cwd=human)
    merge = subprocess.run(
        ["git", "merge", "origin/main"],
        cwd=human,
        capture_output=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "h",
            "GIT_AUTHOR_EMAIL": "h@example.test",
            "GIT_COMMITTER_NAME": "h",
            "GIT_COMMITTER_EMAIL": "h@example.test",
        },
    )
    assert merge.returncode != 0  # a real conflict
    (human / "README.md").write_text(README.replace("first line", "resolved line"))
    git("commit", "--quiet", "-am", "resolve", cwd=human)
    git("push", "--quiet", "origin", f"fix:{branch}", cwd=human)
    code, _ = await api.post(f"/v1/runs/{run_id}/resume")
    assert code == 200
    await api.wait_state(run_id, "completed")
    assert "resolved line" in (remote_file(url, "main", "README.md") or "")


@pytest.mark.usefixtures("cmd_worker")
@pytest.mark.parametrize(
    ("command", "timeout_s", "timed_out"),
    [("echo failing >&2; exit 3", 30, False), ("sleep 30", 1, True)],
)
async def test_milestones_failing_or_slow_command_fails_run(
    cmd_api: Api, tmp_path: Path, command: str, timeout_s: int, timed_out: bool
) -> None:
    api = cmd_api
    yml = f'version: 1\nmilestones:\n  - id: M-001\n    title: T\n    steps:\n      - {{name: test, run: "{command}", timeout_s: {timeout_s}, retries: 0}}\n'
    url = make_remote(tmp_path, {"README.md": README, "quantapilot.yml": yml})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    await api.decide(run_id, "anchor", True)
    final = await api.wait_state(run_id, "failed")
    assert final["error"]["code"] == "STEP_FAILED"
    step = final["milestones"][0]["steps"][0]
    assert step["timed_out"] is timed_out
    if timed_out:
        assert step["exit_code"] is None and step["duration_s"] < 10
    else:
        assert step["exit_code"] == 3 and "failing" in step["output_tail"]
    assert final["milestones"][0]["status"] == "failed"


@pytest.mark.usefixtures("cmd_worker")
async def test_milestones_failing_command_is_retried_from_the_worktree_it_found(
    cmd_api: Api, cmd_settings: Settings, tmp_path: Path
) -> None:
    api = cmd_api
    # The command appends to a tracked file, then fails on its first run only (the counter is an ignored file:
    # the sandbox lets the command write only in the worktree, and restoring it between attempts keeps ignored
    # files). Its retry must start from the worktree as the step found it: one appended line, not two.
    command = "echo added >> CHANGELOG.md; n=$(cat runs-of-the-command 2>/dev/null || echo 0); echo $((n+1)) > runs-of-the-command; test $n -ge 1"
    yml = (
        "version: 1\nmilestones:\n  - id: M-001\n    title: T\n    steps:\n"
        f'      - {{name: impl, run: "{command}", retries: 2}}\n'
    )
    files = {"README.md": README, "CHANGELOG.md": "v0\n", ".gitignore": "runs-of-the-command\n", "quantapilot.yml": yml}
    url = make_remote(tmp_path, files)
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    counter = cmd_settings.run_workdir / "default" / run_id / "repo" / "runs-of-the-command"
    for gate in ("anchor", "M-001", "first_merge"):
        status = await api.wait_gate(run_id, gate)
        if gate == "M-001":
            steps = status["milestones"][0]["steps"]
            assert [(s["attempt"], s["exit_code"]) for s in steps] == [(1, 1), (2, 0)], steps
            # Read while the run waits at the gate: a run that ends removes its worktree.
            assert counter.read_text().strip() == "2"
        code, decided = await api.decide(run_id, gate, True)
        assert code == 200, decided
    final = await api.wait_state(run_id, "completed")
    assert remote_file(url, "main", "CHANGELOG.md") == "v0\nadded\n"
    assert final["milestones"][0]["status"] == "completed"


@pytest.mark.usefixtures("worker")
async def test_milestones_commands_not_allowed(api: Api, tmp_path: Path) -> None:
    url = make_remote(tmp_path, {"README.md": README, "quantapilot.yml": TWO_MILESTONES})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    final = await api.wait_state(body["run_id"], "failed")
    assert final["error"]["code"] == "COMMANDS_NOT_ALLOWED"
    assert kinds(await api.events(body["run_id"])) == ["run.started", "run.failed"]


@pytest.mark.usefixtures("cmd_worker")
async def test_milestones_time_budget_pauses_then_raise_and_resume(cmd_api: Api, tmp_path: Path) -> None:
    api = cmd_api
    yml = "version: 1\nrun: {time_budget_s: 3600}\nmilestones:\n  - id: M-001\n    title: Slow\n    gate: false\n    steps:\n      - {name: impl, run: 'sleep 1.5; echo done > out.txt'}\npolicies: {gates: ['-first_merge']}\n"
    url = make_remote(tmp_path, {"README.md": README, "quantapilot.yml": yml})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    # Spent by now, however long the documentation took on this machine: the next step does not start.
    code, lowered = await api.post(f"/v1/runs/{run_id}/budget", {"time_budget_s": 0.5})
    assert code == 200, lowered
    await api.decide(run_id, "anchor", True)
    paused = await api.wait_state(run_id, "paused")
    assert paused["paused_reason"] == "time_limit"
    code, raised = await api.post(f"/v1/runs/{run_id}/budget", {"time_budget_s": 3600})
    assert code == 200, raised
    await api.post(f"/v1/runs/{run_id}/resume")
    final = await api.wait_state(run_id, "completed")
    assert remote_file(url, "main", "out.txt") == "done\n"
    reasons = [e["data"]["reason"] for e in await api.events(run_id) if e["type"] == "run.paused"]
    assert reasons == ["time_limit"]
    assert final["milestones"][0]["status"] == "completed"


@pytest.mark.usefixtures("worker")
async def test_milestones_gate_timeout_fails_run(api: Api, tmp_path: Path) -> None:
    yml = "version: 1\ngate_definitions:\n  anchor: {timeout_s: 1, description: Quick anchor}\n"
    url = make_remote(tmp_path, {"README.md": README, "quantapilot.yml": yml})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    final = await api.wait_state(body["run_id"], "failed", timeout=30)
    assert final["error"]["code"] == "GATE_TIMEOUT"
    assert final["gates"][0]["status"] == "timed_out"
    assert final["gates"][0]["description"] == "Quick anchor"


POST_RECEIVE = """#!/bin/sh
# Kill the worker right after the docs branch was pushed: the push is done, the PR record is not.
while read old new ref; do
  case "$ref" in refs/heads/quantapilot/*/docs) is_docs=1 ;; *) is_docs=0 ;; esac
  if [ "$is_docs" = 1 ] && [ ! -e "{marker}" ]; then
    touch "{marker}"
    kill -9 $(cat "{pidfile}")
  fi
done
"""


@pytest.mark.slow
async def test_milestones_worker_killed_between_push_and_pr_record_one_pr(
    make_api: ApiFactory, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"step_heartbeat_s": 2.0})
    api = await make_api(settings)
    url = make_remote(tmp_path, {"README.md": README})
    bare = Path(url.removeprefix("file://"))
    pidfile, marker = tmp_path / "worker.pid", tmp_path / "killed"
    hook = bare / "hooks" / "post-receive"
    hook.write_text(POST_RECEIVE.format(marker=marker, pidfile=pidfile))
    hook.chmod(0o755)
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    pidfile.write_text(str(worker.pid))
    try:
        _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
        run_id = body["run_id"]
        await asyncio.to_thread(worker.wait, 60)  # killed by the hook
        assert marker.exists()
        worker = start_worker(settings, log)
        pidfile.write_text(str(worker.pid))
        await api.wait_gate(run_id, "anchor", timeout=60)
        await api.decide(run_id, "anchor", True)
        await api.wait_state(run_id, "completed")
    finally:
        worker.terminate()
        await asyncio.to_thread(worker.wait, 30)
    with Session(engine) as session:
        prs = list(session.exec(select(PullRequestRecord).where(PullRequestRecord.run_id == run_id)))
    assert collections.Counter(pr.head for pr in prs) == {f"quantapilot/{run_id}/docs": 1}
    events = await api.events(run_id)
    assert [e["type"] for e in events].count("documentation.generated") == 1


@pytest.mark.usefixtures("cmd_worker")
async def test_milestones_tests_required_needs_a_test_step(cmd_api: Api, tmp_path: Path) -> None:
    yml = "version: 1\ngates: {tests_required: true}\nmilestones:\n  - id: M-001\n    title: No tests\n    steps:\n      - {name: impl, run: 'true'}\n"
    url = make_remote(tmp_path, {"README.md": README, "quantapilot.yml": yml})
    _, body = await cmd_api.post("/run", {"repo_url": url, "branch": "main"})
    final = await cmd_api.wait_state(body["run_id"], "failed")
    assert final["error"]["code"] == "CONFIG_INVALID"
    assert "M-001" in final["error"]["message"]
    assert "tests_required" in final["error"]["message"]


THREE_MILESTONES = """\
version: 1
policies: {gates: ['-first_merge']}
milestones:
  - {id: M-001, title: One, gate: false, steps: [{name: impl, run: "echo 1 >> log.txt"}]}
  - {id: M-002, title: Two, gate: true, steps: [{name: impl, run: "echo 2 >> log.txt"}]}
  - {id: M-003, title: Three, gate: false, steps: [{name: impl, run: "echo 3 >> log.txt"}]}
"""


async def test_milestones_long_run_continues_as_new_between_milestones(
    make_api: ApiFactory, cmd_settings: Settings, client, tmp_path: Path
) -> None:
    from quantapilot.models import RunKind
    from quantapilot.runs.ids import workflow_id
    from worker import build_worker

    settings = cmd_settings.model_copy(update={"continue_as_new_every_milestones": 1})
    api = await make_api(settings)
    url = make_remote(tmp_path, {"README.md": README, "quantapilot.yml": THREE_MILESTONES})
    async with build_worker(client, settings):
        _, body = await api.post("/run", {"repo_url": url, "branch": "main"}, headers={"Idempotency-Key": "long-run"})
        run_id = body["run_id"]
        await api.wait_gate(run_id, "anchor")
        await api.decide(run_id, "anchor", True)
        # M-002's gate is reached in a later execution: status, gates and decisions follow the workflow id.
        status = await api.wait_gate(run_id, "M-002")
        assert status["milestones"][0]["status"] == "completed"
        assert [g["name"] for g in status["gates"]] == ["anchor", "M-002"]
        await api.decide(run_id, "M-002", True)
        final = await api.wait_state(run_id, "completed")
    assert remote_file(url, "main", "log.txt") == "1\n2\n3\n"
    assert [m["status"] for m in final["milestones"]] == ["completed"] * 3
    events = await api.events(run_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["data"]["milestone_id"] for e in events if e["type"] == "milestone.completed"] == [
        "M-001",
        "M-002",
        "M-003",
    ]
    assert kinds(events).count("run.started") == 1
    handle = client.get_workflow_handle(workflow_id(RunKind.REPOSITORY, "default", run_id))
    # One execution per milestone; visibility lists the last ones a moment late, so poll for them.
    await eventually(
        lambda: executions_of(client, handle.id), lambda n: n >= 3, timeout=15, what="three executions listed"
    )
    # The Idempotency-Key still finds the run (memo carried over to the new executions).
    code, again = await api.post("/run", {"repo_url": url, "branch": "main"}, headers={"Idempotency-Key": "long-run"})
    assert code == 202
    assert again["run_id"] == run_id
    assert again["created"] is False


async def executions_of(client, workflow_id: str) -> int:
    return len([wf async for wf in client.list_workflows(f"WorkflowId = '{workflow_id}'")])


@pytest.mark.usefixtures("cmd_worker")
async def test_milestones_rejected_milestone_gate_stops_the_run_before_its_merge(cmd_api: Api, tmp_path: Path) -> None:
    api = cmd_api
    url = make_remote(tmp_path, {"README.md": README, "quantapilot.yml": TWO_MILESTONES})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    await api.decide(run_id, "anchor", True)
    await api.wait_gate(run_id, "M-001")
    code, record = await api.decide(run_id, "M-001", False, "the changelog is not what we agreed")
    assert code == 200 and record["status"] == "rejected", record
    final = await api.wait_state(run_id, "failed")
    assert final["error"]["code"] == "GATE_REJECTED"
    # The rejected milestone's work stays on its branch and PR; nothing of it reached main, M-002 never started.
    assert [m["status"] for m in final["milestones"]] == ["failed", "planned"], final["milestones"]
    assert remote_file(url, "main", "CHANGELOG.md") is None
    assert remote_file(url, final["milestones"][0]["branch"], "CHANGELOG.md") == "v1\n"
    events = await api.events(run_id)
    assert [e["data"]["gate"] for e in events if e["type"] == "gate.requested"] == ["anchor", "M-001"]
    assert not [e for e in events if e["type"] == "milestone.completed"]
    assert events[-1]["type"] == "run.failed" and events[-1]["data"]["error_code"] == "GATE_REJECTED"


async def test_milestones_time_budget_spent_mid_command_stops_it_and_pauses(
    cmd_api: Api, client, cmd_settings: Settings, tmp_path: Path
) -> None:
    from worker import build_worker

    api = cmd_api
    # The first run of the command takes a minute; the budget runs out while it runs. A retry is quick. (The
    # marker is an ignored file: the sandbox lets the command write only in the worktree, and the retry's fresh
    # checkout keeps ignored files.)
    # The sleeper's duration is this test's own, so looking for it finds no other test's process.
    sleeper = f"sleep 61.{uuid.uuid4().int % 10**6:06d}"
    command = f"if [ -f first-attempt-started ]; then echo quick > out.txt; else touch first-attempt-started; {sleeper}; echo slow > out.txt; fi"
    yml = (
        "version: 1\nrun: {time_budget_s: 3600}\npolicies: {gates: ['-first_merge']}\nmilestones:\n"
        f'  - id: M-001\n    title: Slow\n    gate: false\n    steps:\n      - {{name: impl, run: "{command}"}}\n'
    )
    url = make_remote(tmp_path, {"README.md": README, ".gitignore": "first-attempt-started\n", "quantapilot.yml": yml})
    # A 5 s heartbeat timeout: the cancellation reaches the command within a few seconds (the SDK heartbeats at
    # 0.8 of it), and a loaded machine does not time the attempt out (a timed-out attempt is retried while the
    # cancellation completes at once, so the run would pause before the first attempt's command is killed).
    async with build_worker(client, cmd_settings.model_copy(update={"step_heartbeat_s": 5.0})):
        _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
        run_id = body["run_id"]
        marker = cmd_settings.run_workdir / "default" / run_id / "repo" / "first-attempt-started"
        waiting = await api.wait_gate(run_id, "anchor")
        # The budget must end while the minute-long command runs: after the approval, the docs merge and the
        # milestone's checkout, which take about as long as the clone and documentation took to reach the gate.
        # Leave several times that (at least 5 s), so a slower machine still reaches the command first.
        elapsed = (datetime.now(UTC) - datetime.fromisoformat(waiting["created_at"])).total_seconds()
        lead = max(5.0, 3 * elapsed)
        code, lowered = await api.post(f"/v1/runs/{run_id}/budget", {"time_budget_s": elapsed + lead})
        assert code == 200, lowered
        await api.decide(run_id, "anchor", True)
        paused = await api.wait_state(run_id, "paused", timeout=45)
        assert paused["paused_reason"] == "time_limit" and paused["current_step"] == "milestone:M-001", paused
        assert marker.exists()  # it was stopped mid-command, not before it
        # The command's process group is gone: no sleeper is left behind.
        leftover = subprocess.run(["pgrep", "-f", sleeper], capture_output=True, text=True, check=False)
        assert leftover.stdout == "", leftover.stdout
        code, raised = await api.post(f"/v1/runs/{run_id}/budget", {"time_budget_s": 3600})
        assert code == 200, raised
        await api.post(f"/v1/runs/{run_id}/resume")
        final = await api.wait_state(run_id, "completed", timeout=60)
    assert remote_file(url, "main", "out.txt") == "quick\n"
    assert final["milestones"][0]["status"] == "completed"
    reasons = [e["data"]["reason"] for e in await api.events(run_id) if e["type"] == "run.paused"]
    assert reasons == ["time_limit"]
