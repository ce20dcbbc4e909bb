"""Self-approval is a floor the restrained party cannot lift: not from quantapilot.yml, a request body, a second
token or an input recorded by an earlier release; it compares token subjects, not token ids."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client

from quantapilot.lifecycle.contracts import LifecycleRunInput
from quantapilot.models import RunKind
from quantapilot.runs.ids import workflow_id
from quantapilot.settings import Settings
from quantapilot.tokens import create_token
from tests.conftest import ApiFactory
from tests.security.support import assert_envelope
from tests.support import Api, make_remote

SELF_APPROVING_ANCHOR = "version: 1\ngate_definitions:\n  anchor:\n    allow_self_approval: true\n"
TARGET_INPUTS = {"investment": {"annualCost": 50000}}
OPPORTUNITY_INPUTS = {
    "discoveryNotes": "Sales pipeline conversion is slow. Too much manual work in spreadsheets. Budget approved.",
    "persona": "CFO",
    "benchmarks": [{"kpi": "deal_conversion", "value": 100, "unit": "pct"}],
}


def second_token(api: Api, engine: Engine, subject: str) -> Api:
    """Another token of ``subject``: another credential of the same person."""
    token, _ = create_token(engine, workspace="default", subject=subject)
    return Api(client=api.client, token=token)


async def assert_refused(api: Api, run_id: str, gate: str) -> None:
    code, body = await api.decide(run_id, gate, True, "my own run looks fine")
    assert code == 403, body
    assert_envelope(body, "AUTHORIZATION_ERROR")
    assert "triggered" in body["error"]["message"], body


async def floor_off(make_api: ApiFactory, settings: Settings, subject: str) -> Api:
    """An API of a deployment with QP_ALLOW_SELF_APPROVAL=false, with a token of ``subject``."""
    return await make_api(settings.model_copy(update={"allow_self_approval": False}), subject=subject)


@pytest.mark.usefixtures("worker")
async def test_approvals_quantapilot_yml_cannot_lift_the_floor(
    make_api: ApiFactory, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    alice = await floor_off(make_api, settings, "alice")
    url = make_remote(tmp_path, {"README.md": "# x\n", "quantapilot.yml": SELF_APPROVING_ANCHOR})
    code, body = await alice.post("/v1/runs", {"repo_url": url, "branch": "main"})
    assert code == 202, body
    run_id = body["run_id"]
    await alice.wait_gate(run_id, "anchor")
    await assert_refused(alice, run_id, "anchor")
    await assert_refused(second_token(alice, engine, "alice"), run_id, "anchor")
    # The run records the narrowed policy, not the one the repository asked for.
    assert (await alice.status(run_id))["gates"][0]["allow_self_approval"] is False
    assert (await alice.status(run_id))["gates"][0]["status"] == "pending"
    code, record = await second_token(alice, engine, "bob").decide(run_id, "anchor", True, "reviewed")
    assert code == 200 and record["decided_by"] == "bob", record
    await alice.wait_state(run_id, "completed")


@pytest.mark.usefixtures("worker")
async def test_approvals_quantapilot_yml_still_narrows_a_permissive_deployment(
    make_api: ApiFactory, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    # QP_ALLOW_SELF_APPROVAL=true (the settings fixture, as `qp up` for one local user), the file says false.
    alice = await make_api(settings, subject="alice")
    narrowing = "version: 1\ngate_definitions:\n  anchor:\n    allow_self_approval: false\n"
    url = make_remote(tmp_path, {"README.md": "# x\n", "quantapilot.yml": narrowing})
    _, body = await alice.post("/v1/runs", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await alice.wait_gate(run_id, "anchor")
    await assert_refused(alice, run_id, "anchor")
    await assert_refused(second_token(alice, engine, "alice"), run_id, "anchor")
    code, record = await second_token(alice, engine, "bob").decide(run_id, "anchor", True, "reviewed")
    assert code == 200, record
    await alice.wait_state(run_id, "completed")


async def _target_run(api: Api, gate: dict[str, Any]) -> str:
    account = str(uuid.uuid4())
    code, body = await api.post(
        "/v1/lifecycle/runs", {"stage": "opportunity", "accountId": account, "inputs": OPPORTUNITY_INPUTS}
    )
    assert code == 202, body
    await api.wait_state(body["runId"], "completed")
    body = {"stage": "target", "accountId": account, "inputs": TARGET_INPUTS, "gate": gate}
    code, started = await api.post("/v1/lifecycle/runs", body)
    assert code == 202, started
    return str(started["runId"])


@pytest.mark.usefixtures("worker")
async def test_approvals_lifecycle_request_cannot_lift_the_floor(
    make_api: ApiFactory, settings: Settings, engine: Engine
) -> None:
    alice = await floor_off(make_api, settings, "alice")
    run_id = await _target_run(alice, {"allowSelfApproval": True})
    await alice.wait_gate(run_id, "business_case")
    await assert_refused(alice, run_id, "business_case")
    await assert_refused(second_token(alice, engine, "alice"), run_id, "business_case")
    assert (await alice.status(run_id))["gates"][0]["allow_self_approval"] is False
    code, record = await second_token(alice, engine, "bob").decide(run_id, "business_case", True, "agreed")
    assert code == 200, record
    await alice.wait_state(run_id, "completed")


@pytest.mark.usefixtures("worker")
async def test_approvals_a_recorded_input_cannot_lift_the_floor(
    make_api: ApiFactory, settings: Settings, engine: Engine, client: Client
) -> None:
    """A run whose input says allow (started by an earlier release, or by hand) still meets the floor."""
    alice = await floor_off(make_api, settings, "alice")
    account = str(uuid.uuid4())
    code, body = await alice.post(
        "/v1/lifecycle/runs", {"stage": "opportunity", "accountId": account, "inputs": OPPORTUNITY_INPUTS}
    )
    assert code == 202, body
    await alice.wait_state(body["runId"], "completed")
    run_id = "lc_" + uuid.uuid4().hex
    _, trigger_token = create_token(engine, workspace="default", subject="alice")
    await client.start_workflow(
        "LifecycleRun",
        LifecycleRunInput.model_validate(
            {
                "run_id": run_id,
                "workspace": "default",
                "stage": "target",
                "account_id": account,
                "inputs": {"investment": {"annual_cost": 50000}},
                "triggered_by": "alice",
                "triggered_by_token": trigger_token.id,
                "gate_allow_self_approval": True,
                "allow_self_approval_default": False,
            }
        ),
        id=workflow_id(RunKind.LIFECYCLE, "default", run_id),
        task_queue=settings.task_queue,
    )
    await alice.wait_gate(run_id, "business_case")
    await assert_refused(alice, run_id, "business_case")
    code, record = await second_token(alice, engine, "bob").decide(run_id, "business_case", False, "no")
    assert code == 200, record
    await alice.wait_state(run_id, "failed")
