"""Replaying recorded run histories with today's workflow code: a non-deterministic change fails here first.

Re-record with ``python -m tests.replay.record`` when a change is meant to alter the workflows' commands (after
guarding it with ``workflow.patched``, see docs/DEPLOY.md).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from tests.replay.changed_workflow import PatchedRepoRun, ReorderedRepoRun
from tests.replay.record import SCENARIOS
from workflows.registry import WORKFLOWS

HISTORIES = Path(__file__).resolve().parent / "histories"


def load(name: str) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"replay/{name}", (HISTORIES / f"{name}.json").read_text(encoding="utf-8"))


def event_types(history: WorkflowHistory) -> list[int]:
    return [e.event_type for e in history.events]


def test_replay_every_scenario_has_a_recorded_history() -> None:
    assert sorted(p.stem for p in HISTORIES.glob("*.json")) == sorted(SCENARIOS)
    for name in SCENARIOS:
        raw = json.loads((HISTORIES / f"{name}.json").read_text(encoding="utf-8"))
        started = raw["events"][0]["workflowExecutionStartedEventAttributes"]
        assert started["workflowType"]["name"] == "RepoRun"


@pytest.mark.parametrize(
    ("name", "closing", "must_contain"),
    [
        ("repo_run_approved", EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, []),
        ("repo_run_rejected", EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED, []),
        (
            "repo_run_paused_resumed",
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
            [EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED],
        ),
        ("repo_run_two_milestones", EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, []),
    ],
)
async def test_replay_recorded_history_is_deterministic(name: str, closing: int, must_contain: list[int]) -> None:
    history = load(name)
    # The recording is what the name says: the run ended the expected way.
    assert event_types(history)[-1] == closing
    assert set(must_contain) <= set(event_types(history))
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{name} no longer replays: {result.replay_failure}"


async def test_replay_detects_an_unguarded_change() -> None:
    replayer = Replayer(workflows=[ReorderedRepoRun], data_converter=pydantic_data_converter)
    with pytest.raises(NondeterminismError):
        await replayer.replay_workflow(load("repo_run_approved"))


async def test_replay_accepts_the_same_change_behind_a_patch() -> None:
    replayer = Replayer(workflows=[PatchedRepoRun], data_converter=pydantic_data_converter)

    async def histories() -> AsyncIterator[WorkflowHistory]:
        for name in SCENARIOS:
            yield load(name)

    results = await replayer.replay_workflows(histories(), raise_on_replay_failure=False)
    assert results.replay_failures == {}
