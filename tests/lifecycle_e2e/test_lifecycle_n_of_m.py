"""The business_case gate with ``gate.requiredApprovals``: two of three approvers, and the trigger's bounds (422)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.engine import Engine

from quantapilot.tokens import create_token
from tests.lifecycle_e2e.helpers import TARGET_INPUTS, new_account, start
from tests.support import Api, eventually

pytestmark = pytest.mark.usefixtures("worker")


def token_for(api: Api, engine: Engine, subject: str) -> Api:
    token, _ = create_token(engine, workspace="default", subject=subject, scopes=("gates:decide", "runs:read"))
    return Api(client=api.client, token=token)


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


async def test_lifecycle_n_of_m_business_case_needs_two_of_three(lc_api: Api, engine: Engine) -> None:
    gate = {"approvers": ["carol", "dave", "erin"], "requiredApprovals": 2}
    run_id = await start(lc_api, new_account(), "target", TARGET_INPUTS, gate=gate)
    waiting = await lc_api.wait_gate(run_id, "business_case")
    assert waiting["gates"][0]["required_approvals"] == 2
    code, record = await token_for(lc_api, engine, "carol").decide(run_id, "business_case", True, "numbers ok")
    assert code == 200, record
    assert (record["status"], record["approval_progress"]) == ("pending", "1 of 2 approvals")
    events = await eventually(
        lambda: lc_api.events(run_id), lambda es: "gate.approval_recorded" in types(es), what="approval event"
    )
    (partial,) = [e for e in events if e["type"] == "gate.approval_recorded"]
    assert partial["data"] == {
        "run_id": run_id,
        "gate": "business_case",
        "subject": "carol",
        "approvals": 1,
        "required": 2,
    }
    status = await lc_api.status(run_id)
    assert status["state"] == "waiting_for_gate"
    code, record = await token_for(lc_api, engine, "erin").decide(run_id, "business_case", True, "agreed")
    assert code == 200 and record["status"] == "approved", record
    final = await lc_api.wait_state(run_id, "completed", "failed")
    assert final["state"] == "completed", final
    assert final["result"]["approved"] is True
    assert [a["subject"] for a in final["gates"][0]["approvals"]] == ["carol", "erin"]
    assert types(await lc_api.events(run_id)).count("gate.decided") == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"requiredApprovals": 0},
        {"requiredApprovals": -3},
        {"requiredApprovals": 21},
        {"requiredApprovals": 10**40},
        {"requiredApprovals": 1.5},
        {"requiredApprovals": "2"},
        {"requiredApprovals": True},
        {"requiredApprovals": 3, "approvers": ["carol", "dave"]},
        {"requiredApprovals": 2, "approvers": ["carol", "carol"]},
    ],
)
async def test_lifecycle_n_of_m_trigger_bounds_are_enforced(lc_api: Api, bad: dict[str, Any]) -> None:
    body = {"stage": "target", "accountId": new_account(), "inputs": TARGET_INPUTS, "gate": bad}
    code, refused = await lc_api.post("/v1/lifecycle/runs", body)
    assert code == 422, (bad, refused)
    assert refused["error"]["code"] == "VALIDATION_ERROR", refused


async def test_lifecycle_n_of_m_a_scope_lifts_the_named_cap(lc_api: Api) -> None:
    gate = {"approvers": ["carol", "scope:finance:approve"], "requiredApprovals": 5}
    run_id = await start(lc_api, new_account(), "target", TARGET_INPUTS, gate=gate)
    waiting = await lc_api.wait_gate(run_id, "business_case")
    assert waiting["gates"][0]["approval_progress"] == "0 of 5 approvals"
