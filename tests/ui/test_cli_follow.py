"""`qp run --follow` and `qp events RUN --follow`: live views that end with the run, exit status by final state."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.support import Api, make_remote

QP = str(Path(sys.executable).with_name("qp"))
README = "# Follow demo\n\nWatched live.\n"


class Follower:
    """A `qp ... --follow` subprocess whose output is read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def wait_line(self, match: Callable[[str], bool], timeout: float = 60.0) -> str:
        """Read lines until one matches (fail after ``timeout`` or when the process ends first)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching line within {timeout}s; got:\n" + "\n".join(self.lines))
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            except TimeoutError:
                continue
            if not raw:
                raise AssertionError("process ended before a matching line; got:\n" + "\n".join(self.lines))
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            if match(line):
                return line

    async def finish(self, timeout: float = 60.0) -> int:
        """Read the rest of the output and return the exit status."""
        assert self.proc.stdout is not None
        rest = await asyncio.wait_for(self.proc.stdout.read(), timeout)
        self.lines += rest.decode().splitlines()
        return await asyncio.wait_for(self.proc.wait(), timeout)


async def follow(api: Api, *args: str) -> Follower:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QP_")}
    proc = await asyncio.create_subprocess_exec(
        QP,
        "--api-url",
        str(api.client.make_url("")).rstrip("/"),
        "--token",
        api.token,
        *args,
        "--interval",
        "0.2",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    return Follower(proc)


@pytest.fixture
async def followers() -> AsyncIterator[list[Follower]]:
    """Followers started by a test; any still running at its end are stopped."""
    started: list[Follower] = []
    yield started
    for f in started:
        if f.proc.returncode is None:
            f.proc.kill()
            await f.proc.wait()


@pytest.mark.usefixtures("worker")
async def test_cli_follow_run_shows_gate_command_and_exits_zero_on_completion(
    api: Api, tmp_path: Path, followers: list[Follower]
) -> None:
    url = make_remote(tmp_path, {"README.md": README})
    f = await follow(api, "run", "--repo", url, "--branch", "main", "--follow")
    followers.append(f)
    accepted = await f.wait_line(lambda line: " accepted: " in line)
    match = re.search(r"run (rr_[0-9a-f]{32}) accepted", accepted)
    assert match, accepted
    run_id = match.group(1)

    approve_hint = f"qp approve {run_id} anchor --reason '...'"
    await f.wait_line(lambda line: approve_hint in line)
    code, _ = await api.decide(run_id, "anchor", True)
    assert code == 200
    assert await f.finish() == 0
    out = "\n".join(f.lines)
    # Polling may miss the short early steps; what it shows must come in the pipeline's order.
    assert "state: waiting_for_gate" in out and "state: completed" in out
    assert "step: gate:anchor" in out
    order = ["clone", "read_config", "generate_docs", "open_pr:docs", "gate:anchor", "merge:docs"]
    shown = [step for step in re.findall(r"step: (\S+)", out) if step in order]
    assert shown == sorted(shown, key=order.index), shown
    assert "waiting at gate anchor: Accept the anchor documentation" in out
    assert "gate anchor: approved by tester" in out
    # Every event appears once, in order, on one line each.
    seqs = [int(m.group(1)) for m in (re.search(r" #(\d+) +[a-z]", line) for line in f.lines) if m]
    assert seqs == [1, 2, 3, 4, 5]
    assert re.search(r"#5 +run\.completed", out)


@pytest.mark.usefixtures("worker")
async def test_cli_follow_events_json_exits_nonzero_on_rejection(
    api: Api, tmp_path: Path, followers: list[Follower]
) -> None:
    url = make_remote(tmp_path, {"README.md": README})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    f = await follow(api, "events", run_id, "--follow", "--json")
    followers.append(f)

    def gate_pending(line: str) -> bool:
        doc = json.loads(line)
        return doc["kind"] == "status" and any(g["status"] == "pending" for g in doc["status"]["gates"])

    await f.wait_line(gate_pending)
    code, _ = await api.decide(run_id, "anchor", False, "not this time")
    assert code == 200
    assert await f.finish() == 1
    docs = [json.loads(line) for line in f.lines]
    assert {d["kind"] for d in docs} == {"event", "status", "final"}
    events = [d["event"] for d in docs if d["kind"] == "event"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "run.failed" and events[-1]["data"]["error_code"] == "GATE_REJECTED"
    final = docs[-1]
    assert final["kind"] == "final" and final["state"] == "failed" and final["exit_code"] == 1
    assert final["status"]["error"]["code"] == "GATE_REJECTED"


@pytest.mark.usefixtures("worker")
async def test_cli_follow_events_exits_three_on_cancellation(
    api: Api, tmp_path: Path, followers: list[Follower]
) -> None:
    url = make_remote(tmp_path, {"README.md": README})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    f = await follow(api, "events", run_id, "--follow")
    followers.append(f)
    await f.wait_line(lambda line: "waiting at gate anchor" in line)
    code, _ = await api.post(f"/v1/runs/{run_id}/cancel")
    assert code == 202
    assert await f.finish() == 3
    assert any(re.search(r"run\.cancelled", line) for line in f.lines)
    assert "state: cancelled" in "\n".join(f.lines)


async def test_cli_follow_unknown_run_fails_with_not_found(api: Api) -> None:
    f = await follow(api, "events", "rr_" + "0" * 32, "--follow")
    assert await f.finish() == 1
    assert "404 NOT_FOUND" in "\n".join(f.lines)
