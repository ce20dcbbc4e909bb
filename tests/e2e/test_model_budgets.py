"""The run's own model budgets end to end: budgets.usd (priced), limits.tokens_per_run and steps' tokens_budget
pause the run before the call that would not fit; a raise and a resume make it; the ledger crosses continue-as-new.
And a plan step's answer reaches the impl step's prompt."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio.client import Client

from quantapilot.llm import ModelPrice
from quantapilot.llm.spending import ModelUsage
from quantapilot.models import RunKind
from quantapilot.runs.ids import workflow_id
from quantapilot.settings import Settings
from tests.conftest import ApiFactory
from tests.e2e.test_milestones import executions_of
from tests.e2e.test_model_steps import README, YML, new_file_diff
from tests.llmserver import ChatServer, reply
from tests.support import Api, eventually, make_remote, remote_file

KEY = "sk-e2e-budget-key-71c0d9e4"
ANSWER = f"```diff\n{new_file_diff('greeting.txt', 'hello world')}```"
# $0.001 a prompt token, $0.002 an answer token: a prompt of a few hundred tokens costs some tenths of a dollar.
PRICE = ModelPrice(input_per_mtok=1000.0, output_per_mtok=2000.0)


@pytest.fixture
def model_settings(settings: Settings, llm: ChatServer) -> Settings:
    return settings.model_copy(
        update={
            "command_repo_patterns": ["file://*"],
            # The one test command (grep) runs unsandboxed: these tests are about budgets (test_model_steps.py
            # covers model steps inside the sandbox).
            "command_sandbox": "none",
            "model_base_url": llm.base_url,
            "model_api_key": SecretStr(KEY),
            "model_prices": {"dev-model": PRICE},
        }
    )


async def _start(api: Api, tmp_path: Path, yml: str) -> tuple[str, str]:
    url = make_remote(tmp_path, {"README.md": README, "quantapilot.yml": yml})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    await api.decide(run_id, "anchor", True)
    return run_id, url


@pytest.mark.usefixtures("model_worker")
async def test_model_usd_budget_pauses_then_raise_and_resume(
    model_api: Api, llm: ChatServer, engine: Engine, tmp_path: Path
) -> None:
    api = model_api
    llm.script(reply(ANSWER, completion_tokens=20))
    run_id, url = await _start(
        api, tmp_path, YML.replace("policies:", "budgets: {tokens: 100000, usd: 0.05}\npolicies:")
    )
    paused = await api.wait_state(run_id, "paused", timeout=60)
    assert paused["paused_reason"] == "budget_exceeded" and llm.requests == []
    data = (await api.wait_event(run_id, "run.paused"))["data"]
    assert data["limit"] == "budgets.usd" and data["usd_budget"] == 0.05 and data["usd_left"] == 0.05
    assert data["needed"] > 0.05 and data["usd_spent"] == 0
    code, raised = await api.post(f"/v1/runs/{run_id}/budget", {"usd": 10})
    assert code == 200, raised
    assert raised["usage"]["granted_usd"] == 10
    code, _ = await api.post(f"/v1/runs/{run_id}/resume")
    assert code == 200
    final = await api.wait_state(run_id, "completed", "failed", timeout=90)
    assert final["state"] == "completed", final
    assert remote_file(url, "main", "greeting.txt") == "hello world\n"
    (call,) = final["milestones"][0]["model_calls"]
    cost = PRICE.cost(call["input_tokens"], call["output_tokens"])
    assert call["usd"] == pytest.approx(cost) and final["usage"]["usd"] == pytest.approx(cost)
    # The answer was capped at what the dollars left could buy, and the table priced the call the same.
    (request,) = llm.ok_requests
    assert request.body["max_completion_tokens"] <= 2000
    with Session(engine) as session:
        (row,) = session.exec(select(ModelUsage).where(col(ModelUsage.run_id) == run_id)).all()
    assert row.usd == pytest.approx(cost)


@pytest.mark.parametrize(
    ("change", "limit"),
    [
        (("policies:", "limits: {tokens_per_run: 40}\npolicies:"), "limits.tokens_per_run"),
        (("retries: 2}", "retries: 2, tokens_budget: 40}"), "steps.tokens_budget"),
        (("policies:", "steps: [{name: impl, tokens_budget: 40}]\npolicies:"), "steps.tokens_budget"),
    ],
    ids=["tokens_per_run", "milestone_step", "top_level_step"],
)
@pytest.mark.usefixtures("model_worker")
async def test_model_token_limit_pauses_then_raise_and_resume(
    model_api: Api, llm: ChatServer, tmp_path: Path, change: tuple[str, str], limit: str
) -> None:
    api = model_api
    llm.script(reply(ANSWER, completion_tokens=20))
    yml = YML.replace(*change)
    assert yml != YML
    run_id, url = await _start(api, tmp_path, yml)
    paused = await api.wait_state(run_id, "paused", timeout=60)
    assert paused["paused_reason"] == "budget_exceeded" and llm.requests == []
    data = (await api.wait_event(run_id, "run.paused"))["data"]
    assert data["limit"] == limit and data["tokens_left"] == 40 and data["needed"] > 40
    code, _ = await api.post(f"/v1/runs/{run_id}/budget", {"tokens": 100_000})
    assert code == 200
    code, _ = await api.post(f"/v1/runs/{run_id}/resume")
    assert code == 200
    final = await api.wait_state(run_id, "completed", "failed", timeout=90)
    assert final["state"] == "completed", final
    assert len(llm.ok_requests) == 1 and remote_file(url, "main", "greeting.txt") == "hello world\n"


PLAN = "1. Create greeting.txt with one line.\n2. The grep test checks it."


@pytest.mark.usefixtures("model_worker")
async def test_model_plan_step_answer_goes_into_the_impl_prompt(
    model_api: Api, llm: ChatServer, tmp_path: Path
) -> None:
    api = model_api
    llm.script(reply(PLAN, completion_tokens=12), reply(ANSWER, completion_tokens=20))
    yml = YML.replace(
        "      - {name: impl,", '      - {name: plan, prompt: "Plan the greeting."}\n      - {name: impl,'
    )
    run_id, url = await _start(api, tmp_path, yml)
    final = await api.wait_state(run_id, "completed", "failed", timeout=90)
    assert final["state"] == "completed", final
    plan_request, impl_request = (r.body for r in llm.ok_requests)
    assert "planning agent" in plan_request["messages"][0]["content"]
    assert "development agent" in impl_request["messages"][0]["content"]
    assert f"## Plan\n{PLAN}" in impl_request["messages"][1]["content"]
    calls = final["milestones"][0]["model_calls"]
    assert [(c["step"], c["outcome"]) for c in calls] == [("M-001/plan", "plan"), ("M-001/impl", "applied")]
    assert calls[0]["answer"] == PLAN
    usage = final["usage"]
    assert set(usage["steps"]) == {"M-001/plan", "M-001/impl"} and usage["calls"] == 2
    assert remote_file(url, "main", "greeting.txt") == "hello world\n"


TWO_MODEL_MILESTONES = """\
version: 1
models:
  dev: {model: dev-model, max_output_tokens: 2000}
budgets: {tokens: 20000}
policies: {merge: squash, gates: ['-first_merge']}
milestones:
  - id: M-001
    title: Greet the world
    gate: false
    steps:
      - {name: impl, prompt: "Create greeting.txt containing the line 'hello world'."}
      - {name: test, run: "grep -qx 'hello world' greeting.txt", timeout_s: 30}
  - id: M-002
    title: Say goodbye
    gate: false
    steps:
      - {name: impl, prompt: "Create farewell.txt containing the line 'goodbye'."}
      - {name: test, run: "grep -qx 'goodbye' farewell.txt", timeout_s: 30}
"""


async def test_model_ledger_survives_continue_as_new_between_milestones(
    make_api: ApiFactory, model_settings: Settings, client: Client, llm: ChatServer, tmp_path: Path
) -> None:
    from worker import build_worker

    settings = model_settings.model_copy(update={"continue_as_new_every_milestones": 1})
    api = await make_api(settings)
    # M-001's call uses nearly all of budgets.tokens: M-002's, in the next execution, must see that and pause.
    llm.script(
        reply(ANSWER, prompt_tokens=19_900, completion_tokens=20),
        reply(f"```diff\n{new_file_diff('farewell.txt', 'goodbye')}```", completion_tokens=10),
    )
    async with build_worker(client, settings):
        run_id, url = await _start(api, tmp_path, TWO_MODEL_MILESTONES)
        paused = await api.wait_state(run_id, "paused", timeout=90)
        assert paused["paused_reason"] == "budget_exceeded" and len(llm.ok_requests) == 1
        data = (await api.wait_event(run_id, "run.paused"))["data"]
        assert data["limit"] == "budgets.tokens" and data["tokens_spent"] == 19_920 and data["tokens_left"] == 80
        assert paused["milestones"][0]["status"] == "completed"
        await api.post(f"/v1/runs/{run_id}/budget", {"tokens": 10_000})
        await api.post(f"/v1/runs/{run_id}/resume")
        final = await api.wait_state(run_id, "completed", "failed", timeout=90)
    assert final["state"] == "completed", final
    usage = final["usage"]
    assert usage["calls"] == 2 and set(usage["steps"]) == {"M-001/impl", "M-002/impl"}
    assert usage["tokens"] == 19_920 + usage["steps"]["M-002/impl"] and usage["granted_tokens"] == 10_000
    assert [len(m["model_calls"]) for m in final["milestones"]] == [1, 1]
    assert remote_file(url, "main", "farewell.txt") == "goodbye\n"
    handle = client.get_workflow_handle(workflow_id(RunKind.REPOSITORY, "default", run_id))
    await eventually(
        lambda: executions_of(client, handle.id), lambda n: n >= 2, timeout=15, what="two executions listed"
    )
