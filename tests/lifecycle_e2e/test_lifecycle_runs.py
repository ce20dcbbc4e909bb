"""Lifecycle runs end to end: HTTP trigger -> real Temporal workflow -> stored result and docs page -> HTTP."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio.client import Client

from quantapilot.lifecycle.store import latest_approved_target, list_results
from quantapilot.models import RunKind
from quantapilot.runs.ids import workflow_id
from quantapilot.settings import Settings
from quantapilot.temporal import SA_ACCOUNT_ID, SA_STAGE, SA_WORKSPACE
from quantapilot.tokens import create_token
from tests.lifecycle_e2e.helpers import (
    KPI,
    TARGET_INPUTS,
    approved_target,
    new_account,
    run_stage,
    samples,
    start,
    types,
)
from tests.support import Api, eventually

pytestmark = pytest.mark.usefixtures("worker")

OPPORTUNITY_INPUTS = {
    "discoveryNotes": "Sales pipeline conversion is slow. Too much manual work in spreadsheets. Budget approved.",
    "persona": "CFO",
    "benchmarks": [{"kpi": KPI, "value": 100, "unit": "pct"}],
}


async def test_lifecycle_opportunity_run_completes_and_publishes_page(lc_api: Api) -> None:
    account = new_account()
    resp = await lc_api.client.post(
        "/v1/lifecycle/runs",
        json={"stage": "opportunity", "accountId": account, "inputs": OPPORTUNITY_INPUTS, "correlationId": "corr-lc"},
        headers=lc_api.headers(),
    )
    body = await resp.json()
    assert resp.status == 202, body
    run_id = body["runId"]
    assert run_id.startswith("lc_") and body["status"] == "running" and body["created"] is True
    assert body["statusUrl"].endswith(f"/v1/runs/{run_id}") and resp.headers["Location"] == body["statusUrl"]

    final = await lc_api.wait_state(run_id, "completed", "failed")
    assert final["state"] == "completed", final
    assert final["kind"] == "lifecycle" and final["account_id"] == account and final["stage"] == "opportunity"
    result = final["result"]
    assert result["stage"] == "opportunity" and result["personaFit"] == 0.95  # CFO 0.9 + budget cue
    assert 3 <= len(result["businessObjectives"]) <= 5 and result["kpis"] == 1
    assert result["docsSlug"] == f"accounts/{account}/opportunity" and result["docsVersion"] == "1.0.1"

    events = await lc_api.events(run_id)
    assert types(events) == ["run.started", "stage.completed", "run.completed"]
    assert events[0]["data"] == {
        "run_id": run_id,
        "account_id": account,
        "stage": "opportunity",
        "correlation_id": "corr-lc",
    }
    assert events[1]["data"]["docs_version"] == "1.0.1"

    code, page = await lc_api.get(f"/v1/docs/pages/accounts/{account}/opportunity")
    assert code == 200, page
    assert page["version"] == "1.0.1" and page["status"] == "published" and page["project"] == "accounts"
    assert page["content"]["markdown"].startswith("# Opportunity report")
    assert "<table>" in page["content"]["html"] and page["deprecationNotice"] is None
    assert {"slug": f"accounts/{account}/target", "title": "Value targets and business case report",
            "type": "next_step"} in page["related"]  # fmt: skip


async def test_lifecycle_idempotency_key_returns_same_run(lc_api: Api) -> None:
    account = new_account()
    body = {"stage": "opportunity", "accountId": account, "inputs": {"persona": "CTO"}}
    headers = {"Idempotency-Key": f"key-{account}"}
    code, first = await lc_api.post("/v1/lifecycle/runs", body, headers=headers)
    assert code == 202 and first["created"] is True
    await lc_api.wait_state(first["runId"], "completed")
    code, again = await lc_api.post("/v1/lifecycle/runs", body, headers=headers)
    assert code == 202, again
    assert again["runId"] == first["runId"] and again["created"] is False and again["status"] == "completed"
    code, other = await lc_api.post("/v1/lifecycle/runs", {**body, "stage": "target"}, headers=headers)
    assert code == 422 and other["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"


async def test_lifecycle_target_approved_activates_targets(lc_api: Api, engine: Engine) -> None:
    account = new_account()
    opp = await run_stage(lc_api, account, "opportunity", OPPORTUNITY_INPUTS)
    assert opp["state"] == "completed"
    run_id = await start(lc_api, account, "target", {"investment": {"annualCost": 50000}})
    waiting = await lc_api.wait_gate(run_id, "business_case")
    assert waiting["state"] == "waiting_for_gate" and waiting["result"]["kpiTargets"] == 1
    # Proposed, not active: a draft page and no approved target yet.
    code, draft = await lc_api.get(f"/v1/docs/pages/accounts/{account}/target")
    assert code == 200 and draft["status"] == "draft", draft
    with Session(engine) as s:
        assert latest_approved_target(session=s, workspace="default", account_id=account) is None

    code, gate = await lc_api.decide(run_id, "business_case", True, "agreed")
    assert code == 200 and gate["status"] == "approved"
    final = await lc_api.wait_state(run_id, "completed", "failed")
    assert final["state"] == "completed" and final["result"]["approved"] is True, final
    assert types(await lc_api.events(run_id)) == [
        "run.started", "gate.requested", "gate.decided", "stage.completed", "run.completed",
    ]  # fmt: skip
    with Session(engine) as s:
        target = latest_approved_target(session=s, workspace="default", account_id=account)
        assert target is not None and [t.kpi for t in target.kpi_targets] == [KPI]
        # The target built on the opportunity's value model (baseline 100, +10% for a revenue KPI).
        assert target.kpi_targets[0].baseline == 100 and target.kpi_targets[0].target == 110
        assert [r.status for r in list_results(session=s, workspace="default", account_id=account, stage="target")] == [
            "approved"
        ]
    code, page = await lc_api.get(f"/v1/docs/pages/accounts/{account}/target")
    assert code == 200 and page["status"] == "published" and page["version"] == "1.0.1"
    assert "3-year ROI" in page["content"]["markdown"]


async def test_lifecycle_target_rejected_fails_and_stays_inactive(lc_api: Api, engine: Engine) -> None:
    account = new_account()
    run_id = await start(lc_api, account, "target", TARGET_INPUTS)
    await lc_api.wait_gate(run_id, "business_case")
    code, gate = await lc_api.decide(run_id, "business_case", False, "ROI too optimistic")
    assert code == 200 and gate["status"] == "rejected"
    final = await lc_api.wait_state(run_id, "failed", "completed")
    assert final["state"] == "failed" and final["error"]["code"] == "GATE_REJECTED"
    assert final["result"]["approved"] is False
    events = await lc_api.events(run_id)
    assert types(events)[-1] == "run.failed" and "stage.completed" not in types(events)
    with Session(engine) as s:
        assert latest_approved_target(session=s, workspace="default", account_id=account) is None
        rows = list_results(session=s, workspace="default", account_id=account, stage="target")
        assert [r.status for r in rows] == ["rejected"]
    code, page = await lc_api.get(f"/v1/docs/pages/accounts/{account}/target")
    assert code == 200 and page["status"] == "archived"
    assert "Rejected at the business_case gate" in page["deprecationNotice"]


async def test_lifecycle_realization_and_expansion_runs(lc_api: Api) -> None:
    account = new_account()
    await approved_target(lc_api, account)
    code, ingested = await lc_api.post("/v1/telemetry/events", samples(account, [210.0, 230.0]))
    assert code == 202 and ingested["accepted"] == 2, ingested

    run_id = await start(lc_api, account, "realization")
    final = await lc_api.wait_state(run_id, "completed", "failed")
    assert final["state"] == "completed", final
    assert final["result"]["overallStatus"] == "achieved" and final["result"]["kpis"] == {KPI: "achieved"}
    assert final["result"]["samples"] == 2
    events = await lc_api.events(run_id)
    assert types(events) == ["run.started", "stage.completed", "realization.updated", "run.completed"]
    assert events[2]["data"]["kpis"] == {KPI: "achieved"} and events[2]["data"]["source"] == "run"

    expansion = await run_stage(lc_api, account, "expansion")
    assert expansion["state"] == "completed", expansion
    assert expansion["result"]["opportunityScore"] == 100.0
    assert expansion["result"]["proposalTypes"] == ["cross_sell", "upsell"]
    code, page = await lc_api.get(f"/v1/docs/pages/accounts/{account}/expansion")
    assert code == 200 and "Opportunity score: 100 / 100" in page["content"]["markdown"]


async def test_lifecycle_run_pause_and_resume_at_gate(lc_api: Api) -> None:
    account = new_account()
    run_id = await start(lc_api, account, "target", TARGET_INPUTS)
    await lc_api.wait_gate(run_id, "business_case")
    code, paused = await lc_api.post(f"/v1/runs/{run_id}/pause", {"reason": "review"})
    assert code == 200 and paused["state"] == "paused", paused
    code, _ = await lc_api.decide(run_id, "business_case", True)
    assert code == 200
    code, resumed = await lc_api.post(f"/v1/runs/{run_id}/resume")
    assert code == 200, resumed
    final = await lc_api.wait_state(run_id, "completed", "failed")
    assert final["state"] == "completed"
    kinds = types(await lc_api.events(run_id))
    assert kinds.index("run.paused") < kinds.index("run.resumed") < kinds.index("stage.completed")


async def test_lifecycle_run_is_found_in_visibility_by_account_stage_and_state(
    lc_api: Api, client: Client, settings: Settings
) -> None:
    account = new_account()
    await run_stage(lc_api, account, "opportunity", OPPORTUNITY_INPUTS)
    run_id = await start(lc_api, account, "target", {"investment": {"annualCost": 50000}})
    await lc_api.wait_gate(run_id, "business_case")
    wid = workflow_id(RunKind.LIFECYCLE, "default", run_id)
    scope = f"TaskQueue = '{settings.task_queue}' AND QpRunKind = 'lifecycle' AND QpAccountId = '{account}'"

    async def found(query: str) -> set[str]:
        return {w.id async for w in client.list_workflows(f"{scope} AND {query}")}

    # What an operator filters by in the Web UI; visibility is eventually consistent, so poll.
    waiting = "QpStage = 'target' AND QpState = 'waiting_for_gate' AND QpPendingGate = 'business_case'"
    await eventually(lambda: found(waiting), lambda ids: ids == {wid}, what="waiting target run")
    attrs = (await client.get_workflow_handle(wid).describe()).typed_search_attributes
    assert (attrs.get(SA_ACCOUNT_ID), attrs.get(SA_STAGE), attrs.get(SA_WORKSPACE)) == (account, "target", "default")
    await lc_api.decide(run_id, "business_case", True, "agreed")
    await lc_api.wait_state(run_id, "completed")
    done = "QpStage = 'target' AND QpState = 'completed' AND QpPendingGate = ''"
    await eventually(lambda: found(done), lambda ids: ids == {wid}, what="completed target run")


def token_for(api: Api, engine: Engine, subject: str, scopes: tuple[str, ...] = ("gates:decide",)) -> Api:
    token, _ = create_token(engine, workspace="default", subject=subject, scopes=scopes)
    return Api(client=api.client, token=token)


async def test_lifecycle_business_case_gate_names_its_approvers_and_refuses_self_approval(
    lc_api: Api, engine: Engine
) -> None:
    account = new_account()
    await run_stage(lc_api, account, "opportunity", OPPORTUNITY_INPUTS)
    gate = {"approvers": ["carol", "scope:webhooks:manage"], "allowSelfApproval": False}
    run_id = await start(lc_api, account, "target", {"investment": {"annualCost": 50000}}, gate=gate)
    waiting = await lc_api.wait_gate(run_id, "business_case")
    assert waiting["gates"][0]["approvers"] == gate["approvers"]
    assert waiting["gates"][0]["allow_self_approval"] is False
    # The trigger's own token (subject "tester") is neither an approver nor allowed to approve its own run.
    code, denied = await lc_api.decide(run_id, "business_case", True)
    assert code == 403 and denied["error"]["code"] == "AUTHORIZATION_ERROR", denied
    code, denied = await token_for(lc_api, engine, "dave").decide(run_id, "business_case", True)
    assert code == 403 and "not an approver" in denied["error"]["message"], denied
    # A named subject may decide; so may any token holding a scope the list names.
    code, record = await token_for(lc_api, engine, "carol").decide(run_id, "business_case", True, "carol agrees")
    assert code == 200 and record["decided_by"] == "carol", record
    final = await lc_api.wait_state(run_id, "completed", "failed")
    assert final["state"] == "completed" and final["gates"][0]["decided_by"] == "carol"


async def test_lifecycle_gate_settings_timeout_and_only_for_the_target_stage(lc_api: Api) -> None:
    account = new_account()
    await run_stage(lc_api, account, "opportunity", OPPORTUNITY_INPUTS)
    run_id = await start(lc_api, account, "target", {"investment": {"annualCost": 1}}, gate={"timeoutS": 1})
    final = await lc_api.wait_state(run_id, "failed")
    assert final["error"]["code"] == "GATE_TIMEOUT", final["error"]
    body = {"stage": "opportunity", "accountId": account, "gate": {"approvers": ["carol"]}}
    code, refused = await lc_api.post("/v1/lifecycle/runs", body)
    assert code == 422 and refused["error"]["code"] == "VALIDATION_ERROR", refused
    assert "target stage" in str(refused["error"]), refused
    for bad in ({"approvers": ["has space"]}, {"timeoutS": 0}, {"unknown": True}):
        body = {"stage": "target", "accountId": account, "gate": bad}
        code, refused = await lc_api.post("/v1/lifecycle/runs", body)
        assert code == 422, (bad, refused)
