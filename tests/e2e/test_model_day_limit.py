"""limits.tokens_per_day end to end: the workspace's spending today (model_usage) pauses a run before a model
call; a raise and resume, or the next day's timer, continues it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from quantapilot.llm.spending import ModelUsage, day_key, save_model_call
from quantapilot.models import RunKind
from quantapilot.runs.ids import workflow_id
from quantapilot.settings import Settings
from tests.cli.test_runs_list import qp
from tests.conftest import ApiFactory
from tests.e2e.test_model_steps import KEY, README, YML, new_file_diff
from tests.llmserver import ChatServer, reply
from tests.support import Api, make_remote, remote_file
from tests.ui.test_visibility import current_details

DAY_LIMIT = 5000
# A "day" of this many seconds in the next-day test (QP_MODEL_DAY_S, test-only). The run is approved in the first
# third of a day, so the way from its gate to its model call has over 13 s to reach the pause before the day ends.
SHORT_DAY_S = 20.0
DAY_YML = YML.replace("policies:", f"limits: {{tokens_per_day: {DAY_LIMIT}}}\npolicies:")
ANSWER = f"```diff\n{new_file_diff('greeting.txt', 'hello world')}```"


def _model_settings(settings: Settings, llm: ChatServer, **updates: object) -> Settings:
    return settings.model_copy(
        update={
            "command_repo_patterns": ["file://*"],
            # The milestone's one test command (grep) runs unsandboxed: these tests are about budgets, and
            # tests/e2e/test_model_steps.py covers model steps inside the sandbox.
            "command_sandbox": "none",
            "model_base_url": llm.base_url,
            "model_api_key": SecretStr(KEY),
            **updates,
        }
    )


def _spend_today(engine: Engine, tokens: int, *, day_s: float = 86400.0, workspace: str = "default") -> str:
    """Another run of the workspace spent ``tokens`` today; returns today's day key."""
    now = datetime.now(UTC)
    save_model_call(
        engine,
        call_id=f"earlier-{time.monotonic_ns()}",
        workspace=workspace,
        run_id="an-earlier-run",
        step="M-001/impl",
        role="dev",
        model="dev-model",
        input_tokens=tokens,
        output_tokens=0,
        at=now,
        day_s=day_s,
    )
    return day_key(now, day_s)


def _rows(engine: Engine, run_id: str) -> list[ModelUsage]:
    with Session(engine) as session:
        return list(session.exec(select(ModelUsage).where(col(ModelUsage.run_id) == run_id)).all())


async def _start(api: Api, tmp_path: Path, yml: str = DAY_YML) -> tuple[str, str]:
    url = make_remote(tmp_path, {"README.md": README, "quantapilot.yml": yml})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    await api.decide(run_id, "anchor", True)
    return run_id, url


async def test_model_day_limit_pauses_then_raise_and_resume(
    make_api: ApiFactory, settings: Settings, client, engine: Engine, llm: ChatServer, tmp_path: Path
) -> None:
    from worker import build_worker

    model_settings = _model_settings(settings, llm)
    api = await make_api(model_settings)
    llm.script(reply(ANSWER, completion_tokens=20))
    today = _spend_today(engine, DAY_LIMIT - 10)
    # Another workspace's spending today counts against its own limit only.
    _spend_today(engine, 10 * DAY_LIMIT, workspace="elsewhere")
    async with build_worker(client, model_settings):
        run_id, url = await _start(api, tmp_path)
        paused = await api.wait_state(run_id, "paused", timeout=60)
        assert paused["paused_reason"] == "budget_exceeded"
        assert llm.requests == []  # the call that would not fit today was never made
        event = await api.wait_event(run_id, "run.paused")
        data = event["data"]
        assert data["limit"] == "limits.tokens_per_day" and data["tokens_per_day"] == DAY_LIMIT
        assert data["day_tokens_spent"] == DAY_LIMIT - 10 and data["needed"] > 10
        assert datetime.fromisoformat(data["resumes_at"]) > datetime.now(UTC)
        # qp status and the Temporal Web UI say what was spent against which budget, and why the run waits.
        code, out, err = await qp(api, "status", run_id)
        assert code == 0, err
        assert "paused: budget_exceeded" in out
        assert f"Models: 0 tokens, $0.0000 in 0 calls; the workspace may spend {DAY_LIMIT} tokens per UTC day" in out
        handle = client.get_workflow_handle(workflow_id(RunKind.REPOSITORY, "default", run_id))
        details = await current_details(handle)
        assert f"limits.tokens_per_day: {DAY_LIMIT - 10} of {DAY_LIMIT} tokens spent by the workspace today" in details
        assert data["resumes_at"] in details and f"{DAY_LIMIT} tokens per UTC day" in details
        code, raised = await api.post(f"/v1/runs/{run_id}/budget", {"tokens": 100_000})
        assert code == 200, raised
        code, _ = await api.post(f"/v1/runs/{run_id}/resume")
        assert code == 200
        final = await api.wait_state(run_id, "completed", "failed", timeout=90)
        done = await current_details(handle)
        code, out, _ = await qp(api, "status", run_id)
    assert final["state"] == "completed", final
    assert len(llm.ok_requests) == 1
    tokens = final["usage"]["tokens"]
    assert f"Models: {tokens} tokens, $0.0000 in 1 calls" in done and "tokens_per_day:" not in done
    assert f"Models: {tokens} tokens, $0.0000 in 1 calls" in out and "paused:" not in out
    assert remote_file(url, "main", "greeting.txt") == "hello world\n"
    # The call is in model_usage: once, with the tokens the run's ledger counted, on today's day.
    (row,) = _rows(engine, run_id)
    assert row.workspace == "default" and row.step == "M-001/impl" and row.role == "dev" and row.day == today
    assert row.input_tokens + row.output_tokens == final["usage"]["tokens"] and row.output_tokens == 20
    events = [e["type"] for e in await api.events(run_id)]
    assert events.count("run.paused") == 1 and events.count("run.resumed") == 1


@pytest.mark.slow  # waits out a short "day" of SHORT_DAY_S
async def test_model_day_limit_resumes_by_itself_the_next_day(
    make_api: ApiFactory, settings: Settings, client, engine: Engine, llm: ChatServer, tmp_path: Path
) -> None:
    from worker import build_worker

    model_settings = _model_settings(settings, llm, model_day_s=SHORT_DAY_S)
    api = await make_api(model_settings)
    llm.script(reply(ANSWER, completion_tokens=20))
    async with build_worker(client, model_settings):
        url = make_remote(tmp_path, {"README.md": README, "quantapilot.yml": DAY_YML})
        _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
        run_id = body["run_id"]
        # The run waits at its gate (clone and documentation behind it, no model call yet). Approve it early in
        # a "day", so it reaches its model call before that day ends: only the way from the gate to the call
        # has to fit in the day's remaining two thirds, and the test waits out about one short day, not two.
        await api.wait_gate(run_id, "anchor")
        into_day = time.time() % SHORT_DAY_S
        if into_day > SHORT_DAY_S / 3:
            await asyncio.sleep(SHORT_DAY_S - into_day + 0.05)
        today = _spend_today(engine, DAY_LIMIT, day_s=SHORT_DAY_S)
        code, _ = await api.decide(run_id, "anchor", True)
        assert code == 200
        paused = await api.wait_state(run_id, "paused", timeout=SHORT_DAY_S)
        assert paused["paused_reason"] == "budget_exceeded"
        assert llm.requests == []
        # Nobody resumes it: the timer of the next day does.
        final = await api.wait_state(run_id, "completed", "failed", timeout=SHORT_DAY_S + 60)
    assert final["state"] == "completed", final
    events = await api.events(run_id)
    pause = next(e for e in events if e["type"] == "run.paused")
    assert pause["data"]["limit"] == "limits.tokens_per_day" and pause["data"]["day_tokens_spent"] == DAY_LIMIT
    resumed = next(e for e in events if e["type"] == "run.resumed")
    # At the next day, not before (the workflow's clock may lag the worker's by a little).
    resumes_at = datetime.fromisoformat(pause["data"]["resumes_at"])
    assert datetime.fromisoformat(resumed["created_at"]) >= resumes_at - timedelta(seconds=0.5)
    (row,) = _rows(engine, run_id)
    assert row.day != today  # counted on the new day
    assert remote_file(url, "main", "greeting.txt") == "hello world\n"


async def test_model_day_limit_pauses_the_documentation_pages_too(
    make_api: ApiFactory, settings: Settings, client, engine: Engine, llm: ChatServer, tmp_path: Path
) -> None:
    from worker import build_worker

    model_settings = _model_settings(settings, llm)
    api = await make_api(model_settings)
    llm.script(
        reply("## Purpose\n\nGreets.\n", completion_tokens=10), reply("## Parts\n\nOne.\n", completion_tokens=10)
    )
    _spend_today(engine, DAY_LIMIT - 10)
    yml = f"version: 1\nmodels:\n  arch: {{model: arch-model}}\nlimits: {{tokens_per_day: {DAY_LIMIT}}}\n"
    url = make_remote(tmp_path, {"README.md": README, "quantapilot.yml": yml})
    async with build_worker(client, model_settings):
        _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
        run_id = body["run_id"]
        paused = await api.wait_state(run_id, "paused", timeout=60)
        assert paused["paused_reason"] == "budget_exceeded"
        assert llm.requests == []  # the documentation page that would not fit today was never asked for
        event = await api.wait_event(run_id, "run.paused")
        assert event["data"]["limit"] == "limits.tokens_per_day" and event["data"]["day_tokens_spent"] == DAY_LIMIT - 10
        code, _ = await api.post(f"/v1/runs/{run_id}/budget", {"tokens": 100_000})
        assert code == 200
        code, _ = await api.post(f"/v1/runs/{run_id}/resume")
        assert code == 200
        await api.wait_gate(run_id, "anchor", timeout=60)
        await api.decide(run_id, "anchor", True)
        final = await api.wait_state(run_id, "completed", "failed", timeout=90)
    assert final["state"] == "completed", final
    assert len(llm.ok_requests) == 2
    assert sorted(r.step for r in _rows(engine, run_id)) == ["doc/architecture", "doc/overview"]
