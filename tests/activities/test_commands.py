"""Milestone commands: a scrubbed environment, and no process outlives its step (timeout or cancellation)."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import pytest

from quantapilot.runs.commands import run_command
from tests.support import eventually, require_bwrap


@pytest.fixture(autouse=True)
def _bwrap() -> None:
    # The commands run in the default sandbox (bubblewrap).
    require_bwrap()


def running(pattern: str) -> str:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False).stdout


def sleepers(count: int) -> list[str]:
    """``sleep`` commands with durations of this test's own, so looking for them finds no other test's process."""
    base = uuid.uuid4().int % 10**6
    return [f"sleep {60 + i}.{base:06d}" for i in range(count)]


async def test_commands_get_a_scrubbed_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What a worker's environment may hold: service secrets and settings the repository's code must never see.
    monkeypatch.setenv("QP_GITHUB_TOKEN", "ghp_not-for-repository-code")
    monkeypatch.setenv("QP_DATABASE_URL", "postgresql+psycopg://qp:hunter2@db/qp")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
    monkeypatch.setenv("QP_SECRET_KEY", "qp-secret-key-value")
    outcome = await run_command("env", "env", cwd=tmp_path, timeout_s=30)
    assert outcome.exit_code == 0, outcome
    env = dict(line.split("=", 1) for line in outcome.output_tail.splitlines() if "=" in line)
    assert env["HOME"] == str(tmp_path)
    assert "PATH" in env
    assert not {"QP_GITHUB_TOKEN", "QP_DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "QP_SECRET_KEY"} & set(env)
    assert "hunter2" not in outcome.output_tail and "ghp_" not in outcome.output_tail


async def test_commands_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    # A child left in the background would outlive its shell without the process-group kill.
    background, foreground = sleepers(2)
    outcome = await run_command("slow", f"{background} & {foreground}", cwd=tmp_path, timeout_s=1)
    assert outcome.timed_out and outcome.exit_code is None
    # run_command returns once the sandbox is gone: nothing of the step is left.
    assert running(background) == ""
    assert running(foreground) == ""


async def test_commands_cancellation_kills_the_whole_process_group(tmp_path: Path) -> None:
    background, foreground = sleepers(2)
    task = asyncio.ensure_future(run_command("slow", f"{background} & {foreground}", cwd=tmp_path, timeout_s=120))
    await eventually(lambda: asyncio.sleep(0, running(background)), lambda out: out != "", what="the command running")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert running(background) == ""
    assert running(foreground) == ""
