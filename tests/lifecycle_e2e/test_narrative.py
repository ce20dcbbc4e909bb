"""Lifecycle narratives by a (loopback) model: QP_LIFECYCLE_MODELS words the agents' prose, the figures stay theirs."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio.client import Client

from quantapilot.llm.spending import ModelUsage, day_key, save_model_call
from quantapilot.repos.config import BudgetsConfig, ModelsConfig, TokenLimitsConfig
from quantapilot.settings import Settings
from tests.lifecycle_e2e.conftest import LcApiFactory
from tests.lifecycle_e2e.helpers import TARGET_INPUTS, new_account, start
from tests.llmserver import ChatServer, chat_server, reply
from tests.support import Api

KEY = "sk-lifecycle-model-key-3e9f0c7d"
INPUTS = {
    "persona": "CFO",
    "discoveryNotes": "Manual reporting costs us hours. Churn is rising.",
    "benchmarks": [{"kpi": "report_hours", "value": 40, "unit": "h"}],
}
NARRATIVE = {"summary": "A CFO wants fewer reporting hours.", "persona_reasoning": "The CFO owns the budget."}


@pytest.fixture
async def llm() -> AsyncIterator[ChatServer]:
    async with chat_server(KEY) as server:
        yield server


def _settings(
    settings: Settings,
    llm: ChatServer,
    *,
    budgets: BudgetsConfig | None = None,
    limits: TokenLimitsConfig | None = None,
) -> Settings:
    return settings.model_copy(
        update={
            "model_base_url": llm.base_url,
            "model_api_key": SecretStr(KEY),
            "lifecycle_models": ModelsConfig.model_validate({"arch": {"model": "arch-model", "temperature": 0.3}}),
            "lifecycle_budgets": budgets,
            "lifecycle_limits": limits,
        }
    )


@pytest.fixture
async def narrating(
    client: Client, settings: Settings, llm: ChatServer, make_lc_api: LcApiFactory
) -> AsyncIterator[Api]:
    from worker import build_worker

    model_settings = _settings(settings, llm)
    async with build_worker(client, model_settings):
        yield await make_lc_api(app_settings=model_settings)


async def _stored(api: Api, account: str, stage: str) -> dict[str, Any]:
    code, page = await api.get(f"/v1/docs/pages/accounts/{account}/{stage}")
    assert code == 200, page
    return page


async def test_lifecycle_narrative_words_the_opportunity_and_keeps_the_figures(
    narrating: Api, lc_api: Api, llm: ChatServer, engine: Engine
) -> None:
    llm.script(reply("```json\n" + json.dumps(NARRATIVE) + "\n```", completion_tokens=25))
    account = new_account()
    run_id = await start(narrating, account, "opportunity", INPUTS)
    final = await narrating.wait_state(run_id, "completed", "failed")
    assert final["state"] == "completed", final
    assert llm.invalid == []
    (request,) = llm.requests
    assert request.body["model"] == "arch-model" and request.body["temperature"] == 0.3
    user = request.body["messages"][1]["content"]
    assert "report_hours" in user and "persona_reasoning" in user and KEY not in user
    (call,) = final["model_calls"]
    assert call["step"] == "narrative/opportunity" and call["outcome"] == "narrated" and call["role"] == "arch"
    assert final["usage"]["calls"] == 1 and final["usage"]["tokens"] == call["input_tokens"] + call["output_tokens"]
    # The call is in model_usage too, counted for the workspace's day like repository runs' calls.
    with Session(engine) as session:
        (row,) = session.exec(select(ModelUsage).where(col(ModelUsage.run_id) == run_id)).all()
    assert (row.workspace, row.step, row.role, row.model) == ("default", "narrative/opportunity", "arch", "arch-model")
    assert (row.input_tokens, row.output_tokens) == (call["input_tokens"], call["output_tokens"])
    page = await _stored(narrating, account, "opportunity")
    assert (
        NARRATIVE["summary"] in page["content"]["markdown"]
        and NARRATIVE["persona_reasoning"] in page["content"]["markdown"]
    )

    # The same request without a model: the same figures, the agent's own words, no call.
    plain_account = new_account()
    plain_id = await start(lc_api, plain_account, "opportunity", INPUTS)
    plain = await lc_api.wait_state(plain_id, "completed", "failed")
    assert plain["model_calls"] == [] and plain["usage"] is None and len(llm.requests) == 1
    narrated_result, plain_result = final["result"], plain["result"]
    for key in set(narrated_result) - {"docsVersion", "docsSlug"}:
        assert narrated_result[key] == plain_result[key], key
    plain_page = await _stored(lc_api, plain_account, "opportunity")
    assert NARRATIVE["summary"] not in plain_page["content"]["markdown"]


async def test_lifecycle_narrative_answer_that_does_not_fit_keeps_the_agents_words(
    narrating: Api, llm: ChatServer
) -> None:
    llm.script(reply('{"summary": "Only one key."}'))
    account = new_account()
    run_id = await start(narrating, account, "opportunity", INPUTS)
    final = await narrating.wait_state(run_id, "completed", "failed")
    assert final["state"] == "completed", final
    (call,) = final["model_calls"]
    assert call["outcome"] == "kept" and "keys" in call["feedback"]
    assert "Only one key." not in (await _stored(narrating, account, "opportunity"))["content"]["markdown"]


async def test_lifecycle_narrative_realization_has_none_and_calls_no_model(narrating: Api, llm: ChatServer) -> None:
    account = new_account()
    run_id = await start(narrating, account, "realization", {})
    final = await narrating.wait_state(run_id, "completed", "failed")
    assert final["model_calls"] == [] and llm.requests == []


async def test_lifecycle_narrative_budget_pauses_then_raise_and_resume(
    client: Client, settings: Settings, llm: ChatServer, make_lc_api: LcApiFactory
) -> None:
    from worker import build_worker

    narrative = {"business_case_summary": "Doubling conversion pays.", "value_commitment": "We commit to 200."}
    llm.script(reply(json.dumps(narrative), completion_tokens=15))
    model_settings = _settings(settings, llm, budgets=BudgetsConfig(tokens=30))
    async with build_worker(client, model_settings):
        api = await make_lc_api(app_settings=model_settings)
        run_id = await start(api, new_account(), "target", TARGET_INPUTS)
        paused = await api.wait_state(run_id, "paused")
        assert paused["paused_reason"] == "budget_exceeded" and llm.requests == []
        event = await api.wait_event(run_id, "run.paused")
        assert event["data"]["limit"] == "budgets.tokens" and event["data"]["tokens_budget"] == 30
        code, raised = await api.post(f"/v1/runs/{run_id}/budget", {"tokens": 50_000})
        assert code == 200, raised
        code, _ = await api.post(f"/v1/runs/{run_id}/resume")
        assert code == 200
        await api.wait_gate(run_id, "business_case")
        await api.decide(run_id, "business_case", True, "ok")
        final = await api.wait_state(run_id, "completed", "failed")
    assert final["state"] == "completed", final
    assert [c["outcome"] for c in final["model_calls"]] == ["narrated"]
    assert final["usage"]["granted_tokens"] == 50_000 and final["usage"]["tokens"] > 30


DAY_LIMIT = 5000


async def test_lifecycle_narrative_day_limit_pauses_then_raise_and_resume(
    client: Client, settings: Settings, llm: ChatServer, make_lc_api: LcApiFactory, engine: Engine
) -> None:
    from worker import build_worker

    llm.script(reply(json.dumps(NARRATIVE), completion_tokens=15))
    # A repository run of the workspace spent nearly all of today's tokens: the narrative's call would pass them.
    today = day_key(datetime.now(UTC))
    save_model_call(
        engine,
        call_id=f"earlier-{uuid.uuid4().hex}",
        workspace="default",
        run_id="an-earlier-repository-run",
        step="M-001/impl",
        role="dev",
        model="dev-model",
        input_tokens=DAY_LIMIT - 10,
        output_tokens=0,
    )
    model_settings = _settings(settings, llm, limits=TokenLimitsConfig(tokens_per_day=DAY_LIMIT))
    async with build_worker(client, model_settings):
        api = await make_lc_api(app_settings=model_settings)
        run_id = await start(api, new_account(), "opportunity", INPUTS)
        paused = await api.wait_state(run_id, "paused")
        assert paused["paused_reason"] == "budget_exceeded" and llm.requests == []
        assert paused["usage"]["tokens_per_day"] == DAY_LIMIT and paused["usage"]["calls"] == 0
        event = await api.wait_event(run_id, "run.paused")
        data = event["data"]
        assert data["limit"] == "limits.tokens_per_day" and data["tokens_per_day"] == DAY_LIMIT
        assert data["day_tokens_spent"] == DAY_LIMIT - 10 and data["needed"] > 10
        assert datetime.fromisoformat(data["resumes_at"]) > datetime.now(UTC)
        code, raised = await api.post(f"/v1/runs/{run_id}/budget", {"tokens": 100_000})
        assert code == 200, raised
        code, _ = await api.post(f"/v1/runs/{run_id}/resume")
        assert code == 200
        final = await api.wait_state(run_id, "completed", "failed")
    assert final["state"] == "completed", final
    assert [c["outcome"] for c in final["model_calls"]] == ["narrated"] and len(llm.ok_requests) == 1
    assert final["usage"]["granted_tokens"] == 100_000
    # Counted for the workspace's day like any call, so the next run of the workspace sees it.
    with Session(engine) as session:
        (row,) = session.exec(select(ModelUsage).where(col(ModelUsage.run_id) == run_id)).all()
    assert row.day == today and row.input_tokens + row.output_tokens == final["usage"]["tokens"]


async def test_lifecycle_narrative_within_the_day_limit_is_not_paused(
    client: Client, settings: Settings, llm: ChatServer, make_lc_api: LcApiFactory
) -> None:
    from worker import build_worker

    llm.script(reply(json.dumps(NARRATIVE), completion_tokens=15))
    model_settings = _settings(settings, llm, limits=TokenLimitsConfig(tokens_per_day=10 * DAY_LIMIT))
    async with build_worker(client, model_settings):
        api = await make_lc_api(app_settings=model_settings)
        run_id = await start(api, new_account(), "opportunity", INPUTS)
        final = await api.wait_state(run_id, "completed", "failed")
    assert final["state"] == "completed", final
    assert [c["outcome"] for c in final["model_calls"]] == ["narrated"]
    assert "run.paused" not in [e["type"] for e in await api.events(run_id)]
