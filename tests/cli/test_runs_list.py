"""`qp runs` lists the workspace's runs over the real API (every page), and `qp status` shows a failed step."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client

from quantapilot.settings import Settings
from tests.conftest import ApiFactory
from tests.support import Api, eventually, make_remote, require_bwrap

QP = str(Path(sys.executable).with_name("qp"))


async def qp(api: Api, *args: str) -> tuple[int, str, str]:
    """Run ``qp`` against the test's API (a subprocess, so the test's loop keeps serving the API)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QP_")} | {"COLUMNS": "400"}
    proc = await asyncio.create_subprocess_exec(
        QP,
        "--api-url",
        str(api.client.make_url("")).rstrip("/"),
        "--token",
        api.token,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def listed(api: Api, *args: str) -> list[dict[str, object]]:
    code, out, err = await qp(api, "runs", "--json", *args)
    assert code == 0, err
    runs: list[dict[str, object]] = json.loads(out)
    return runs


async def trigger(api: Api, url: str) -> str:
    code, body = await api.post("/v1/runs", {"repo_url": url, "branch": "main"})
    assert code == 202, body
    return str(body["run_id"])


async def test_cli_runs_follows_every_page_and_prints_a_table(
    make_api: ApiFactory, settings: Settings, tmp_path: Path
) -> None:
    api = await make_api(settings, workspace=f"cli{uuid.uuid4().hex[:10]}")
    url = make_remote(tmp_path, {"README.md": "# Listed\n"})
    started = [await trigger(api, url) for _ in range(5)]

    async def all_ids() -> list[object]:
        return [r["run_id"] for r in await listed(api, "--page-size", "2")]

    # Three pages of two: the command follows next_page_token to the end, newest first.
    assert await eventually(all_ids, lambda got: len(got) == 5, what="five runs") == list(reversed(started))
    assert [r["run_id"] for r in await listed(api, "--page-size", "2", "--limit", "3")] == started[:1:-1]
    assert await listed(api, "--kind", "lifecycle") == []
    assert await listed(api, "--waiting") == []

    code, out, err = await qp(api, "runs", "--page-size", "2")
    assert code == 0, err
    rows = [line for line in out.splitlines() if "rr_" in line]
    assert [next(w for w in row.split() if w.startswith("rr_")) for row in rows] == list(reversed(started))
    assert all("repository" in row and "running" in row and url in row for row in rows)
    assert "run" in out.splitlines()[1] and "correlation id" in out

    code, _, err = await qp(api, "runs", "--state", "sleeping")
    assert code == 2 and "Invalid value" in err
    code, _, err = await qp(api, "runs", "--waiting", "--state", "failed")
    assert code == 2


@pytest.mark.usefixtures("worker")
async def test_cli_runs_waiting_shows_the_gate_and_how_to_approve(
    make_api: ApiFactory, settings: Settings, tmp_path: Path
) -> None:
    api = await make_api(settings, workspace=f"cli{uuid.uuid4().hex[:10]}")
    url = make_remote(tmp_path, {"README.md": "# Gated\n"})
    waiting, done = await trigger(api, url), await trigger(api, url)
    await api.wait_gate(waiting, "anchor")
    await api.wait_gate(done, "anchor")
    assert (await api.decide(done, "anchor", True))[0] == 200
    await api.wait_state(done, "completed")

    async def waiting_ids() -> list[object]:
        return [r["run_id"] for r in await listed(api, "--waiting")]

    await eventually(waiting_ids, lambda got: got == [waiting], what="the waiting run")
    code, out, err = await qp(api, "runs", "--waiting")
    assert code == 0, err
    row = next(line for line in out.splitlines() if waiting in line)
    assert "waiting_for_gate" in row and "anchor" in row
    assert f"approve with: qp approve {waiting} anchor --reason '...'" in out
    assert done not in out
    completed = await listed(api, "--state", "completed", "--kind", "repository")
    assert [r["run_id"] for r in completed] == [done] and "gate" not in completed[0]
    assert [r["run_id"] for r in await listed(api, "--gate", "anchor")] == [waiting]


@pytest.fixture
def cmd_settings(settings: Settings) -> Settings:
    require_bwrap()  # milestone commands run in the sandbox
    return settings.model_copy(update={"command_repo_patterns": ["file://*"]})


@pytest.fixture
async def cmd_worker(client: Client, cmd_settings: Settings) -> AsyncIterator[None]:
    from worker import build_worker

    async with build_worker(client, cmd_settings):
        yield


@pytest.mark.usefixtures("cmd_worker")
async def test_cli_status_shows_a_failed_steps_exit_code_and_output_tail(
    make_api: ApiFactory, cmd_settings: Settings, tmp_path: Path
) -> None:
    api = await make_api(cmd_settings)
    # Output a person must see as text: rich markup in it is printed, not interpreted.
    command = "seq 1 30; echo '[bold red]boom[/bold red] broken build'; exit 3"
    yml = (
        "version: 1\nmilestones:\n  - id: M-001\n    title: Build\n    steps:\n"
        f'      - name: test\n        run: "{command}"\n        timeout_s: 30\n        retries: 0\n'
    )
    url = make_remote(tmp_path, {"README.md": "# Failing\n", "quantapilot.yml": yml})
    run_id = await trigger(api, url)
    await api.wait_gate(run_id, "anchor")
    await api.decide(run_id, "anchor", True)
    final = await api.wait_state(run_id, "failed")
    assert final["milestones"][0]["steps"][0]["exit_code"] == 3

    code, out, err = await qp(api, "status", run_id)
    assert code == 0, err
    assert "STEP_FAILED" in out
    assert "step test failed: exit code 3" in out
    assert f"$ {command}" in out
    assert "| [bold red]boom[/bold red] broken build" in out
    assert "output (last 20 lines):" in out
    # Only the tail: the first lines of the output are left out, the last ones are there.
    assert "| 12\n" in out and "| 30\n" in out and "| 11\n" not in out
    code, passed_out, _ = await qp(api, "status", run_id, "--json")
    assert json.loads(passed_out)["milestones"][0]["steps"][0]["exit_code"] == 3
