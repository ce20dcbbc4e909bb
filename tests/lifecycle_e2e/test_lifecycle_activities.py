"""The lifecycle activities as the worker calls them: failures no retry can fix are non-retryable, with codes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from temporalio.exceptions import ApplicationError

from activities.lifecycle import LifecycleActivities
from quantapilot.lifecycle.agents import OpportunityAgent, StageAgent, load_agents
from quantapilot.lifecycle.contracts import PublishStageInput, SetStatusInput, StageAgentInput, StoreStageResultInput
from quantapilot.lifecycle.outputs import StageInput, StageResult
from quantapilot.settings import Settings

ACCOUNT = "6f1c1d1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f"
AS_OF = datetime(2025, 11, 17, 12, tzinfo=UTC)


class WrongStageAgent:
    """A faulty plug-in: serves the target stage with an opportunity result."""

    stage = "target"

    def run(self, data: StageInput) -> StageResult:
        return OpportunityAgent().run(data.model_copy(update={"stage": "opportunity"}))


def activities(engine: Engine, tmp_path: Path, **agents: StageAgent) -> LifecycleActivities:
    settings = Settings(environment="test", state_dir=tmp_path / "state", database_url=str(engine.url))
    return LifecycleActivities(settings, engine, agents={**load_agents(entry_points=[]), **agents})


async def test_lifecycle_activities_missing_results_fail_for_good(db_engine: Engine, tmp_path: Path) -> None:
    acts = activities(db_engine, tmp_path)
    outcome = await acts.run_stage_agent(StageAgentInput(workspace="ws", account_id=ACCOUNT, stage="opportunity",
                                                         as_of=AS_OF))  # fmt: skip
    assert outcome.result is not None
    stored = await acts.store_stage_result(StoreStageResultInput(key="run-1", workspace="ws", run_id="run-1",
                                                                 status="completed", result=outcome.result))  # fmt: skip
    assert (stored.seq, stored.version) == (1, "1.0.1")
    page = await acts.publish_stage_page(PublishStageInput(key="run-1", workspace="ws"))
    assert page.slug == f"accounts/{ACCOUNT}/opportunity" and page.version == "1.0.1"
    for call in (
        acts.set_stage_result_status(SetStatusInput(key="missing", status="approved")),
        acts.publish_stage_page(PublishStageInput(key="missing", workspace="ws")),
        acts.publish_stage_page(PublishStageInput(key="run-1", workspace="other")),  # another workspace's result
    ):
        with pytest.raises(ApplicationError) as err:
            await call
        assert err.value.type == "PRECONDITION_FAILED" and err.value.non_retryable, err.value


async def test_lifecycle_activities_faulty_agent_and_skipped_refresh(db_engine: Engine, tmp_path: Path) -> None:
    acts = activities(db_engine, tmp_path, target=WrongStageAgent())
    with pytest.raises(ApplicationError) as err:
        await acts.run_stage_agent(StageAgentInput(workspace="ws", account_id=ACCOUNT, stage="target", as_of=AS_OF))
    assert err.value.type == "AGENT_FAILED" and err.value.non_retryable, err.value
    outcome = await acts.run_stage_agent(StageAgentInput(workspace="ws", account_id=ACCOUNT, stage="realization",
                                                         as_of=AS_OF, require_approved_target=True))  # fmt: skip
    assert outcome.result is None and outcome.skipped == "no approved target for the account: realization skipped"
