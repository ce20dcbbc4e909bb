"""N-of-M gates end to end: a repository run whose anchor gate needs 2 of 3 approvers, over HTTP and signals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client

from quantapilot.models import GateDecisionInput, RunKind
from quantapilot.runs.ids import workflow_id
from quantapilot.settings import Settings
from quantapilot.tokens import create_token
from tests.conftest import ApiFactory
from tests.support import Api, eventually, make_remote

TWO_OF_THREE = (
    "version: 1\ngate_definitions:\n  anchor:\n    required_approvals: 2\n    approvers: [alice, bob, carol]\n"
)


def as_subject(api: Api, engine: Engine, subject: str) -> Api:
    token, _ = create_token(engine, workspace="default", subject=subject)
    return Api(client=api.client, token=token)


async def start_at_anchor(api: Api, tmp_path: Path, yml: str = TWO_OF_THREE) -> str:
    url = make_remote(tmp_path, {"README.md": "# x\n", "quantapilot.yml": yml})
    code, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    assert code == 202, body
    run_id = str(body["run_id"])
    await api.wait_gate(run_id, "anchor")
    return run_id


def anchor_of(status: dict[str, Any]) -> dict[str, Any]:
    return next(g for g in status["gates"] if g["name"] == "anchor")


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


async def wait_events(api: Api, run_id: str, kind: str, count: int) -> list[dict[str, Any]]:
    events = await eventually(
        lambda: api.events(run_id), lambda es: len(of_type(es, kind)) >= count, what=f"{count} x {kind}"
    )
    return of_type(events, kind)


async def details(client: Client, run_id: str) -> str:
    handle = client.get_workflow_handle(workflow_id(RunKind.REPOSITORY, "default", run_id))
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return metadata.current_details


@pytest.mark.usefixtures("worker")
async def test_n_of_m_two_of_three_over_http(
    make_api: ApiFactory, settings: Settings, engine: Engine, client: Client, tmp_path: Path
) -> None:
    trigger = await make_api(settings.model_copy(update={"allow_self_approval": False}), subject="trigger")
    alice, bob = as_subject(trigger, engine, "alice"), as_subject(trigger, engine, "bob")
    run_id = await start_at_anchor(trigger, tmp_path)
    waiting = anchor_of(await trigger.status(run_id))
    assert (waiting["required_approvals"], waiting["approvals"]) == (2, [])
    assert waiting["approval_progress"] == "0 of 2 approvals"

    code, record = await alice.decide(run_id, "anchor", True, "docs read")
    assert code == 200, record
    assert (record["status"], record["approval_progress"], record["decided_by"]) == (
        "pending",
        "1 of 2 approvals",
        None,
    )
    assert [(a["subject"], a["approved"], a["reason"], a["via"]) for a in record["approvals"]] == [
        ("alice", True, "docs read", "api")
    ]
    status = await trigger.status(run_id)
    assert status["state"] == "waiting_for_gate"
    assert anchor_of(status)["approval_progress"] == "1 of 2 approvals"
    (recorded,) = await wait_events(trigger, run_id, "gate.approval_recorded", 1)
    assert recorded["data"] == {"run_id": run_id, "gate": "anchor", "subject": "alice", "approvals": 1, "required": 2}
    assert of_type(await trigger.events(run_id), "gate.decided") == []
    assert "**anchor** (1 of 2 approvals)" in await details(client, run_id)

    # The same subject again, with another of its tokens: counted once, not an error.
    alice_again = as_subject(trigger, engine, "alice")
    code, again = await alice_again.decide(run_id, "anchor", True, "still fine")
    assert code == 200, again
    assert (again["status"], len(again["approvals"])) == ("pending", 1)
    assert anchor_of(await trigger.status(run_id))["approval_progress"] == "1 of 2 approvals"

    code, passed = await bob.decide(run_id, "anchor", True, "agreed")
    assert code == 200, passed
    assert (passed["status"], passed["decided_by"], passed["approval_progress"]) == ("approved", "bob", None)
    final = await trigger.wait_state(run_id, "completed")
    gate = anchor_of(final)
    assert [a["subject"] for a in gate["approvals"]] == ["alice", "bob"]
    events = await trigger.events(run_id)
    assert len(of_type(events, "gate.decided")) == 1
    assert len(of_type(events, "gate.approval_recorded")) == 1
    kinds = [e["type"] for e in events]
    assert kinds.index("gate.requested") < kinds.index("gate.approval_recorded") < kinds.index("gate.decided")
    # After the gate passed, a different decision is the existing conflict.
    carol = as_subject(trigger, engine, "carol")
    code, late = await carol.decide(run_id, "anchor", False, "too late")
    assert code == 409, late


@pytest.mark.usefixtures("worker")
async def test_n_of_m_a_rejection_after_one_approval_rejects(api: Api, engine: Engine, tmp_path: Path) -> None:
    alice, carol = as_subject(api, engine, "alice"), as_subject(api, engine, "carol")
    run_id = await start_at_anchor(api, tmp_path)
    code, _ = await alice.decide(run_id, "anchor", True, "fine by me")
    assert code == 200
    code, record = await carol.decide(run_id, "anchor", False, "wrong scope")
    assert code == 200, record
    assert (record["status"], record["decided_by"], record["reason"]) == ("rejected", "carol", "wrong scope")
    failed = await api.wait_state(run_id, "failed")
    assert failed["error"]["code"] == "GATE_REJECTED"
    assert [(a["subject"], a["approved"]) for a in anchor_of(failed)["approvals"]] == [
        ("alice", True),
        ("carol", False),
    ]
    events = await api.events(run_id)
    assert [e["data"]["approved"] for e in of_type(events, "gate.decided")] == [False]
    assert [e["data"]["subject"] for e in of_type(events, "gate.approval_recorded")] == ["alice"]


@pytest.mark.usefixtures("worker")
async def test_n_of_m_self_approval_and_outsiders_refused_per_approver(
    make_api: ApiFactory, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    # alice is a named approver and also triggered the run: she may not be one of the two.
    alice = await make_api(settings.model_copy(update={"allow_self_approval": False}), subject="alice")
    run_id = await start_at_anchor(alice, tmp_path)
    code, denied = await alice.decide(run_id, "anchor", True)
    assert code == 403, denied
    assert "triggered" in denied["error"]["message"]
    # Nor with another token of her subject.
    code, denied = await as_subject(alice, engine, "alice").decide(run_id, "anchor", True)
    assert code == 403, denied
    code, denied = await as_subject(alice, engine, "mallory").decide(run_id, "anchor", True)
    assert code == 403, denied
    assert "not an approver" in denied["error"]["message"]
    gate = anchor_of(await alice.status(run_id))
    assert (gate["status"], gate["approvals"]) == ("pending", [])
    for subject in ("bob", "carol"):
        code, _ = await as_subject(alice, engine, subject).decide(run_id, "anchor", True)
        assert code == 200
    final = await alice.wait_state(run_id, "completed")
    assert [a["subject"] for a in anchor_of(final)["approvals"]] == ["bob", "carol"]


@pytest.mark.usefixtures("worker")
async def test_n_of_m_over_temporal_signals(api: Api, client: Client, tmp_path: Path) -> None:
    run_id = await start_at_anchor(api, tmp_path)
    handle = client.get_workflow_handle(workflow_id(RunKind.REPOSITORY, "default", run_id))
    await handle.signal("decide_gate", GateDecisionInput(gate="anchor", approved=True, decided_by="op-one"))
    first = await eventually(
        lambda: api.status(run_id), lambda s: len(anchor_of(s)["approvals"]) == 1, what="first approval"
    )
    assert anchor_of(first)["approval_progress"] == "1 of 2 approvals"
    assert anchor_of(first)["approvals"][0]["via"] == "signal"
    await wait_events(api, run_id, "gate.approval_recorded", 1)
    # The same operator again (raw JSON, as the Temporal CLI sends it) counts once.
    await handle.signal("decide_gate", {"gate": "anchor", "approved": True, "decided_by": "op-one"})
    await handle.signal("decide_gate", {"gate": "anchor", "approved": True, "decided_by": "op-two", "reason": "ok"})
    final = await api.wait_state(run_id, "completed")
    gate = anchor_of(final)
    assert [a["subject"] for a in gate["approvals"]] == ["op-one", "op-two"]
    assert (gate["decided_by"], gate["source"]) == ("op-two", "signal")
    events = await api.events(run_id)
    assert len(of_type(events, "gate.decided")) == 1
    assert len(of_type(events, "gate.approval_recorded")) == 1


@pytest.mark.usefixtures("worker")
async def test_n_of_m_one_required_approval_decides_as_before(api: Api, tmp_path: Path) -> None:
    run_id = await start_at_anchor(api, tmp_path, "version: 1\n")
    waiting = anchor_of(await api.status(run_id))
    assert (waiting["required_approvals"], waiting["approval_progress"]) == (1, None)
    code, record = await api.decide(run_id, "anchor", True, "looks right")
    assert code == 200
    assert (record["status"], record["decided_by"]) == ("approved", "tester")
    assert [a["subject"] for a in record["approvals"]] == ["tester"]
    await api.wait_state(run_id, "completed")
    assert of_type(await api.events(run_id), "gate.approval_recorded") == []


@pytest.mark.usefixtures("worker")
async def test_n_of_m_unreachable_count_fails_the_run_with_config_invalid(api: Api, tmp_path: Path) -> None:
    yml = "version: 1\ngate_definitions:\n  anchor: {required_approvals: 3, approvers: [alice, bob]}\n"
    url = make_remote(tmp_path, {"README.md": "# x\n", "quantapilot.yml": yml})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    failed = await api.wait_state(body["run_id"], "failed")
    assert failed["error"]["code"] == "CONFIG_INVALID"
    assert "required_approvals" in failed["error"]["message"]
