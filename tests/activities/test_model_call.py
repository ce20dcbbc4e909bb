"""The call_model activity against the loopback model: one model_usage row per call, kept once across retries,
and the workspace's daily limit checked before the model is asked."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.models import ModelActivities
from quantapilot.errors import ErrorCode
from quantapilot.llm.spending import ModelUsage, day_key, day_spent
from quantapilot.runs.contracts import RepoRef
from quantapilot.runs.model_contracts import ModelCallInput
from quantapilot.runs.worktree import Worktrees
from quantapilot.settings import Settings
from tests.llmserver import ChatServer, chat_server, failure, rate_limited, reply
from tests.support import make_remote

KEY = "sk-activity-model-key-0c4d1e77"


@pytest.fixture
async def llm() -> AsyncIterator[ChatServer]:
    async with chat_server(KEY) as server:
        yield server


@pytest.fixture
async def models(settings: Settings, engine: Engine, llm: ChatServer) -> AsyncIterator[ModelActivities]:
    model_settings = settings.model_copy(update={"model_base_url": llm.base_url, "model_api_key": SecretStr(KEY)})
    activities = ModelActivities(model_settings, Worktrees(model_settings), engine)
    yield activities
    await activities.close()


def _input(url: str, **updates: object) -> ModelCallInput:
    return ModelCallInput(
        repo=RepoRef(run_id="rr_activity", workspace="default", repo_url=url, branch="main"),
        step="M-001/plan",
        kind="plan",
        role="dev",
        model="dev-model",
        milestone_id="M-001",
        title="Greet the world",
        criteria=["greeting.txt says hello world"],
        prompt="Plan the greeting.",
        **updates,
    )


def _env(activity_id: str, attempt: int = 1) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info,
        workflow_id="repo-run/default/rr_activity",
        workflow_run_id="r-1",
        activity_id=activity_id,
        attempt=attempt,
    )
    return env


def _rows(engine: Engine) -> list[ModelUsage]:
    with Session(engine) as session:
        return list(session.exec(select(ModelUsage).where(col(ModelUsage.run_id) == "rr_activity")).all())


async def test_model_call_saves_one_row_per_call_and_once_across_retries(
    models: ModelActivities, engine: Engine, llm: ChatServer, tmp_path: Path
) -> None:
    url = make_remote(tmp_path, {"README.md": "# Greeter\n"})
    llm.script(
        reply("First, a plan.", prompt_tokens=100, completion_tokens=10),
        reply("Another call's plan.", prompt_tokens=50, completion_tokens=5),
        reply("A plan nobody should have asked for.", prompt_tokens=100, completion_tokens=12),
    )
    first = await _env("3").run(models.call_model, _input(url))
    # The same activity retried (its completion lost with its worker): the first answer, not a second call.
    retried = await _env("3", attempt=2).run(models.call_model, _input(url))
    other = await _env("4").run(models.call_model, _input(url))
    assert len(llm.ok_requests) == 2
    assert (first.answer, first.input_tokens, first.output_tokens) == ("First, a plan.", 100, 10)
    # The workflow counts the retry's result: the same figures as the row, so run ledger and day agree.
    assert retried.model_dump(exclude={"at"}) == first.model_dump(exclude={"at"})
    assert (other.answer, other.input_tokens, other.output_tokens) == ("Another call's plan.", 50, 5)
    rows = sorted(_rows(engine), key=lambda r: r.call_id)
    assert [r.call_id for r in rows] == ["repo-run/default/rr_activity/r-1/3", "repo-run/default/rr_activity/r-1/4"]
    assert [(r.input_tokens, r.output_tokens, r.answer) for r in rows] == [
        (100, 10, "First, a plan."),
        (50, 5, "Another call's plan."),
    ]
    assert rows[0].workspace == "default" and rows[0].step == "M-001/plan" and rows[0].role == "dev"
    assert rows[0].model == "dev-model" and rows[0].day == day_key(rows[0].created_at)
    assert rows[0].response_id == first.response_id and rows[0].response_id is not None


async def test_model_call_retry_without_a_saved_answer_asks_the_model(
    models: ModelActivities, engine: Engine, llm: ChatServer, tmp_path: Path
) -> None:
    url = make_remote(tmp_path, {"README.md": "# Greeter\n"})
    llm.script(reply("A plan.", prompt_tokens=40, completion_tokens=4))
    # Attempt 1 failed before the model answered (a 429, a timeout): nothing saved, so attempt 2 asks.
    made = await _env("5", attempt=2).run(models.call_model, _input(url))
    assert made.called and made.answer == "A plan." and len(llm.ok_requests) == 1
    (row,) = _rows(engine)
    assert (row.input_tokens, row.output_tokens) == (40, 4)


async def test_model_call_retry_after_the_answer_is_not_refused_by_the_day_it_spent(
    models: ModelActivities, engine: Engine, llm: ChatServer, tmp_path: Path
) -> None:
    url = make_remote(tmp_path, {"README.md": "# Greeter\n"})
    llm.script(reply("A plan.", prompt_tokens=300, completion_tokens=20))
    made = await _env("6").run(models.call_model, _input(url, day_limit=400))
    assert made.called and made.at is not None
    assert day_spent(engine, "default", day_key(made.at)) == 320
    # Its own tokens leave less than the prompt needs today, but the retry's call was made already: no pause.
    retried = await _env("6", attempt=3).run(models.call_model, _input(url, day_limit=400))
    assert retried.called and retried.over_budget is None and retried.answer == "A plan."
    assert len(llm.ok_requests) == 1


async def test_model_call_over_the_days_limit_is_refused_before_the_model_is_asked(
    models: ModelActivities, engine: Engine, llm: ChatServer, tmp_path: Path
) -> None:
    url = make_remote(tmp_path, {"README.md": "# Greeter\n"})
    llm.script(reply("A plan.", prompt_tokens=300, completion_tokens=20))
    made = await _env("1").run(models.call_model, _input(url, day_limit=100_000))
    assert made.called and made.at is not None
    today = day_key(made.at)
    spent = day_spent(engine, "default", today)
    assert spent == 320
    refused = await _env("2").run(models.call_model, _input(url, day_limit=spent + 5))
    assert not refused.called and refused.over_budget == "day"
    assert refused.day_spent == spent and refused.needed_tokens > 5
    assert refused.next_day_at is not None and refused.next_day_at > made.at
    assert len(llm.ok_requests) == 1  # the refused call never reached the model


async def test_model_call_failures_take_temporals_shape(
    models: ModelActivities, engine: Engine, llm: ChatServer, tmp_path: Path
) -> None:
    url = make_remote(tmp_path, {"README.md": "# Greeter\n"})
    llm.script(rate_limited("7"), failure(503, "overloaded"), failure(400, "bad request", code="invalid_value"))
    # 429: retryable, and Retry-After becomes the next retry's delay (the activity's retry policy, not the client).
    with pytest.raises(ApplicationError) as err:
        await _env("7").run(models.call_model, _input(url))
    assert (err.value.type, err.value.non_retryable) == (ErrorCode.MODEL_UNAVAILABLE, False)
    assert err.value.next_retry_delay == timedelta(seconds=7)
    # 5xx without Retry-After: retryable on the policy's own schedule.
    with pytest.raises(ApplicationError) as err:
        await _env("7", attempt=2).run(models.call_model, _input(url))
    assert (err.value.type, err.value.non_retryable, err.value.next_retry_delay) == (
        ErrorCode.MODEL_UNAVAILABLE,
        False,
        None,
    )
    # Another 4xx: permanent, with its stable code and the provider's reason (never the key).
    with pytest.raises(ApplicationError) as err:
        await _env("7", attempt=3).run(models.call_model, _input(url))
    assert (err.value.type, err.value.non_retryable) == (ErrorCode.MODEL_REQUEST_REJECTED, True)
    assert "invalid_value" in err.value.message and KEY not in err.value.message
    assert _rows(engine) == []  # no answer, nothing counted
