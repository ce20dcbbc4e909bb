"""Helpers of the lifecycle end-to-end tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support import Api, eventually

KPI = "deal_conversion"


def new_account() -> str:
    return str(uuid.uuid4())


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


async def start(api: Api, account: str, stage: str, inputs: dict[str, Any] | None = None, **extra: Any) -> str:
    body: dict[str, Any] = {"stage": stage, "accountId": account, **extra}
    if inputs is not None:
        body["inputs"] = inputs
    code, resp = await api.post("/v1/lifecycle/runs", body)
    assert code == 202, resp
    return str(resp["runId"])


async def run_stage(api: Api, account: str, stage: str, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a stage without a gate to completion and return its final status."""
    run_id = await start(api, account, stage, inputs)
    return await api.wait_state(run_id, "completed", "failed")


TARGET_INPUTS = {"kpis": [{"kpi": KPI, "baseline": 100, "target": 200, "unit": "pct"}]}


async def approved_target(api: Api, account: str) -> str:
    """Run the target stage (deal_conversion 100 -> 200) and approve its business case."""
    run_id = await start(api, account, "target", TARGET_INPUTS)
    status = await api.wait_gate(run_id, "business_case")
    assert status["state"] == "waiting_for_gate", status
    code, gate = await api.decide(run_id, "business_case", True, "numbers agreed")
    assert code == 200, gate
    final = await api.wait_state(run_id, "completed", "failed")
    assert final["state"] == "completed", final
    return run_id


def samples(
    account: str, values: list[float], *, kpi: str = KPI, age: timedelta = timedelta(hours=1)
) -> dict[str, Any]:
    at = datetime.now(UTC) - age
    return {
        "events": [
            {
                "accountId": account,
                "kpi": kpi,
                "value": v,
                "timestamp": (at + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z"),
                "unit": "pct",
                "metadata": {"source": "crm"},
            }
            for i, v in enumerate(values)
        ]
    }


async def account_events(api: Api, account: str) -> list[dict[str, Any]]:
    code, body = await api.get(f"/v1/accounts/{account}/events")
    assert code == 200, body
    return list(body["events"])


async def wait_realization(
    api: Api, account: str, predicate: Any, *, timeout: float = 60.0, what: str = "realization.updated"
) -> list[dict[str, Any]]:
    """Poll the account stream until a ``realization.updated`` event satisfies ``predicate``."""
    return await eventually(
        lambda: account_events(api, account),
        lambda evs: any(e["type"] == "realization.updated" and predicate(e["data"]) for e in evs),
        timeout=timeout,
        what=what,
    )
