"""Replaying recorded histories with today's workflow code: a non-deterministic change fails here first.

Every workflow the worker registers has at least one recorded history. Re-record with
``python -m tests.replay.record`` when a change is meant to alter the workflows' commands (after guarding it with
``workflow.patched``, see docs/DEPLOY.md).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from quantapilot.events.carry import EVENTS_HEADER, RECORD_EVENTS
from quantapilot.lifecycle.contracts import NARRATE_STAGE, RUN_STAGE_AGENT, STORE_STAGE_RESULT
from quantapilot.runs.contracts import (
    CLEANUP_WORKTREE,
    CLONE_REPOSITORY,
    GENERATE_DOCUMENTATION,
    MERGE_PULL_REQUEST,
    OPEN_PULL_REQUEST,
    RECORD_EVENT,
)
from quantapilot.runs.model_contracts import (
    CALL_DOCS_MODEL,
    CALL_MODEL,
    GENERATE_DOCUMENTATION_WITH_MODELS,
    REVIEW_MODEL_DIFF,
)
from tests.replay.changed_workflow import (
    DelayedWebhookDelivery,
    PatchedRepoRun,
    PatchedWebhookDelivery,
    ReorderedRepoRun,
)
from tests.replay.record import SCENARIOS, workflow_type
from worker import worker_interceptors
from workflows.base import PATCH_GATE_N_OF_M, PATCH_GATE_TIMEOUT_IN_EVENT
from workflows.common import PATCH_EVENTS_CARRIED
from workflows.lifecycle_run import PATCH_LIFECYCLE_NARRATIVE
from workflows.model_budget import PATCH_TOKENS_PER_DAY
from workflows.model_docs import PATCH_MODEL_DOCS
from workflows.model_qa import PATCH_MODEL_QA
from workflows.model_steps import PATCH_MODEL_STEPS
from workflows.registry import WORKFLOWS
from workflows.repo_run import PATCH_CLEANUP_LOCAL, PATCH_WORKTREE_CLEANUP

HISTORIES = Path(__file__).resolve().parent / "histories"
# Histories recorded by earlier releases, kept while runs of those releases may still be open (docs/DEPLOY.md).
PREVIOUS = HISTORIES / "previous"


def load(name: str) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"replay/{name}", (HISTORIES / f"{name}.json").read_text(encoding="utf-8"))


def event_types(history: WorkflowHistory) -> list[int]:
    return [e.event_type for e in history.events]


def recorded_type(path: Path) -> str:
    """The workflow type a history file starts."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    return str(raw["events"][0]["workflowExecutionStartedEventAttributes"]["workflowType"]["name"])


def scenarios_of(cls: type) -> list[str]:
    """The scenarios that record ``cls``'s workflow type (a changed copy is registered under the original's name)."""
    return [name for name, s in SCENARIOS.items() if s.workflow_type == workflow_type(cls)]


@dataclass(frozen=True)
class Shape:
    """What a recording must show, so it is the run its name says: how it closed and events it must contain."""

    closing: int
    must_contain: list[int] = field(default_factory=list)
    activities: int | None = None


E = EventType
CLOSED = {
    E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    E.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
    E.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
    E.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
}
SHAPES: dict[str, Shape] = {
    # Events carried by the run's activities, the cleanup a local activity: six activities (seven with the cleanup
    # an activity, eleven before events were carried, five of them record_event).
    "repo_run_approved": Shape(E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, [E.EVENT_TYPE_MARKER_RECORDED], activities=6),
    "repo_run_rejected": Shape(E.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED),
    "repo_run_paused_resumed": Shape(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, [E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED]
    ),
    "repo_run_two_milestones": Shape(E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED),
    # N-of-M: the patch marker, three decision updates (alice, alice again, bob) on the anchor gate.
    "repo_run_two_of_three": Shape(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        [E.EVENT_TYPE_MARKER_RECORDED, E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED],
    ),
    # The anchor gate has a timeout: the gate-timeout-in-event marker, decided by an update before the deadline.
    "repo_run_gate_deadline": Shape(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        [E.EVENT_TYPE_MARKER_RECORDED, E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED],
    ),
    # The budget's timer fired during the milestone command, whose activity was cancelled (the patch's path).
    "repo_run_time_budget_stopped_step": Shape(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        [E.EVENT_TYPE_TIMER_FIRED, E.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED, E.EVENT_TYPE_ACTIVITY_TASK_CANCELED],
    ),
    # limits.tokens_per_day paused the model call (the patch's marker); the budget raise and the resume are updates.
    "model_steps_day_raised": Shape(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        [E.EVENT_TYPE_MARKER_RECORDED, E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED],
    ),
    # limits.tokens_per_day paused the model call; the next day's timer resumed the run.
    "model_steps_next_day": Shape(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, [E.EVENT_TYPE_MARKER_RECORDED, E.EVENT_TYPE_TIMER_FIRED]
    ),
    # models.arch: the patch marker, the budget raise (an update), the two pages' calls and the docs step.
    "repo_run_model_docs_budget_raised": Shape(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        [E.EVENT_TYPE_MARKER_RECORDED, E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED],
    ),
    # QP_LIFECYCLE_MODELS: the patch marker, the budget raise (an update), the narrative's calls.
    "lifecycle_opportunity_narrated": Shape(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        [E.EVENT_TYPE_MARKER_RECORDED, E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED],
    ),
    # QP_LIFECYCLE_LIMITS: the markers (narrative, tokens-per-day), the budget raise and the resume (updates).
    "lifecycle_opportunity_narrated_day_raised": Shape(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        [E.EVENT_TYPE_MARKER_RECORDED, E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED],
    ),
    # models.dev and models.qa: the patch markers (model-steps, model-qa), the anchor and milestone gate updates.
    "repo_run_model_qa_reviewed": Shape(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        [E.EVENT_TYPE_MARKER_RECORDED, E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED],
    ),
    # The business_case decision arrives as an update.
    "lifecycle_target_approved": Shape(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, [E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED]
    ),
    "lifecycle_target_rejected": Shape(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED, [E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED]
    ),
    # A signal claiming an API source meets the self-approval rule (its patch marker), then an operator's signal.
    "lifecycle_target_api_signal_held": Shape(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        [E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED, E.EVENT_TYPE_MARKER_RECORDED],
    ),
    # N-of-M by signals: the patch marker, an approving and a rejecting decide_gate signal.
    "lifecycle_target_two_of_three_rejected": Shape(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED, [E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED, E.EVENT_TYPE_MARKER_RECORDED]
    ),
    # Telemetry signals, the coalescing window's timer, two refreshes of four activities, then continue-as-new.
    "account_realization_refreshed": Shape(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
        [E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED, E.EVENT_TYPE_TIMER_FIRED],
        activities=8,
    ),
    # A refresh's agent activity failed (database away; the patch marker of the retry), the backoff's timer, the
    # retried refresh: two successful refreshes of four activities, then continue-as-new.
    "account_realization_refresh_retried": Shape(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
        [E.EVENT_TYPE_ACTIVITY_TASK_FAILED, E.EVENT_TYPE_MARKER_RECORDED, E.EVENT_TYPE_TIMER_FIRED],
        activities=8,
    ),
    # Attempt 1 answered 500, the schedule's timer, attempt 2 delivered.
    "webhook_retried_delivered": Shape(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, [E.EVENT_TYPE_TIMER_FIRED], activities=2
    ),
    "amqp_publish_confirmed": Shape(E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, activities=1),
}


def test_replay_every_scenario_has_a_recorded_history() -> None:
    assert sorted(p.stem for p in HISTORIES.glob("*.json")) == sorted(SCENARIOS)
    assert sorted(SHAPES) == sorted(SCENARIOS), "give every scenario its expected Shape"
    for name, scenario in SCENARIOS.items():
        assert recorded_type(HISTORIES / f"{name}.json") == scenario.workflow_type, name


def test_replay_every_registered_workflow_has_a_recorded_history() -> None:
    recorded = {recorded_type(path) for path in HISTORIES.glob("*.json")}
    missing = sorted(workflow_type(cls) for cls in WORKFLOWS if workflow_type(cls) not in recorded)
    assert not missing, f"no recorded history for {missing}: add a scenario to tests/replay/record.py and record it"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_replay_recorded_history_is_deterministic(name: str) -> None:
    history = load(name)
    shape = SHAPES[name]
    # The recording is what the name says: the run ended the expected way.
    kinds = event_types(history)
    assert kinds[-1] == shape.closing
    assert set(shape.must_contain) <= set(kinds)
    if shape.activities is not None:
        assert kinds.count(E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED) == shape.activities
    # With the worker's interceptors: tracing and the run context must not change what a workflow does either.
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter, interceptors=worker_interceptors())
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{name} no longer replays: {result.replay_failure}"


def scheduled_activities(history: WorkflowHistory) -> list[str]:
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


def local_activities(history: WorkflowHistory) -> list[str]:
    """The types of the local activities the history's markers record, in order (one marker per attempt)."""
    types = []
    for e in history.events:
        attrs = e.marker_recorded_event_attributes
        if e.event_type == E.EVENT_TYPE_MARKER_RECORDED and attrs.marker_name == "core_local_activity":
            (payload,) = attrs.details["data"].payloads
            types.append(str(json.loads(payload.data)["activity_type"]))
    return types


@pytest.mark.parametrize(
    "path",
    [*(HISTORIES / f"{n}.json" for n in sorted(SCENARIOS) if n.startswith("repo_run_")), *PREVIOUS.glob("repo_run_*")],
    ids=lambda p: p.stem,
)
def test_replay_repo_run_recordings_end_with_the_worktree_cleanup_and_the_final_event(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text(encoding="utf-8"))
    activities = scheduled_activities(history)
    if PATCH_WORKTREE_CLEANUP not in patch_ids(history):
        assert CLEANUP_WORKTREE not in activities  # recorded before runs removed their worktrees
        return
    if PATCH_CLEANUP_LOCAL in patch_ids(history):
        # The cleanup is a local activity, the run's last step: no activity task after it (its marker holds no
        # header, so the final event it carried is not in the history; tests/e2e read the event log for that).
        assert CLEANUP_WORKTREE not in activities
        assert local_activities(history) == [CLEANUP_WORKTREE]
        kinds = event_types(history)
        last_marker = max(i for i, kind in enumerate(kinds) if kind == E.EVENT_TYPE_MARKER_RECORDED)
        assert E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in kinds[last_marker:]
        assert PATCH_EVENTS_CARRIED in patch_ids(history)
        return
    assert activities.count(CLEANUP_WORKTREE) == 1
    if PATCH_EVENTS_CARRIED in patch_ids(history):
        # The final event rides on the cleanup, the run's last activity: recorded before the worktree is removed and
        # before the run enters its final state.
        carrier, events = recording_calls(history)[-1]
        assert activities[-1] == carrier == CLEANUP_WORKTREE, activities[-4:]
        assert events[-1]["type"] in {"run.completed", "run.failed", "run.cancelled"}, events
    else:
        # Before it: the run's last steps remove its worktree, then record its final event.
        assert activities[-2:] == [CLEANUP_WORKTREE, RECORD_EVENT], activities[-4:]


@pytest.mark.parametrize("path", sorted(PREVIOUS.glob("*.json")), ids=lambda p: p.stem)
async def test_replay_history_of_an_earlier_release_still_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(f"replay/previous/{path.stem}", path.read_text(encoding="utf-8"))
    assert event_types(history)[-1] in CLOSED
    # With the worker's interceptors: tracing and the run context must not change what a workflow does either.
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter, interceptors=worker_interceptors())
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name} no longer replays: {result.replay_failure}"


@pytest.mark.parametrize("changed", [ReorderedRepoRun, DelayedWebhookDelivery])
async def test_replay_detects_an_unguarded_change(changed: type) -> None:
    replayer = Replayer(workflows=[changed], data_converter=pydantic_data_converter)
    names = scenarios_of(changed)
    assert names
    for name in names:
        with pytest.raises(NondeterminismError):
            await replayer.replay_workflow(load(name))


@pytest.mark.parametrize("patched", [PatchedRepoRun, PatchedWebhookDelivery])
async def test_replay_accepts_the_same_change_behind_a_patch(patched: type) -> None:
    # With the worker's interceptors, as a worker replays: the recordings' events ride on activity headers.
    replayer = Replayer(workflows=[patched], data_converter=pydantic_data_converter, interceptors=worker_interceptors())
    names = scenarios_of(patched)
    assert names

    async def histories() -> AsyncIterator[WorkflowHistory]:
        for name in names:
            yield load(name)

    results = await replayer.replay_workflows(histories(), raise_on_replay_failure=False)
    assert results.replay_failures == {}


def patch_ids(history: WorkflowHistory) -> set[str]:
    """The workflow.patched ids whose markers the history recorded."""
    return patch_ids_in(history.events)


def patch_ids_in(events: Sequence[HistoryEvent]) -> set[str]:
    """The workflow.patched ids whose markers these events of a history record."""
    ids = set()
    for e in events:
        details = e.marker_recorded_event_attributes.details
        if e.event_type == E.EVENT_TYPE_MARKER_RECORDED and "patch-data" in details:
            # The SDK core's patch marker: {"id": ..., "deprecated": ...} as JSON.
            (payload,) = details["patch-data"].payloads
            ids.add(json.loads(payload.data)["id"])
    return ids


def recording_calls(history: WorkflowHistory) -> list[tuple[str, list[dict[str, Any]]]]:
    """Each scheduled activity that recorded run events, in order: its type and the events it was given.

    Before the events-carried patch: one record_event activity per event. Under it: record_events batches, and
    any activity carrying events in its qp-events header (recorded before its body).
    """
    calls = []
    for e in history.events:
        attrs = e.activity_task_scheduled_event_attributes
        if e.event_type != E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            continue
        name = attrs.activity_type.name
        if name == RECORD_EVENT:
            calls.append((name, [json.loads(attrs.input.payloads[0].data)]))
        elif name == RECORD_EVENTS:
            calls.append((name, list(json.loads(attrs.input.payloads[0].data))))
        elif EVENTS_HEADER in attrs.header.fields:
            calls.append((name, list(json.loads(attrs.header.fields[EVENTS_HEADER].data))))
    return calls


def recorded_events(history: WorkflowHistory) -> list[dict[str, Any]]:
    """The run events the history recorded, each once (a carrier that failed hands its events on), by seq."""
    by_id: dict[str, dict[str, Any]] = {}
    for _, events in recording_calls(history):
        for event in events:
            assert by_id.setdefault(event["id"], event) == event, f"event {event['id']} recorded differently"
    events = sorted(by_id.values(), key=lambda event: int(event["seq"]))
    first = events[0]["seq"] if events else 1
    assert [event["seq"] for event in events] == list(range(first, first + len(events))), "the seq has a gap"
    return events


def recorded_event_types(history: WorkflowHistory) -> list[str]:
    """The run event types the history's record_event activities were given, in order."""
    return [event["type"] for event in recorded_events(history)]


@pytest.mark.parametrize("name", ["repo_run_two_of_three", "lifecycle_target_two_of_three_rejected"])
def test_replay_n_of_m_recordings_take_the_patched_path(name: str) -> None:
    history = load(name)
    assert PATCH_GATE_N_OF_M in patch_ids(history)
    kinds = recorded_event_types(history)
    # One partial approval reported, then the gate decided once.
    assert kinds.count("gate.approval_recorded") == 1, kinds
    assert kinds.count("gate.decided") == 1
    assert kinds.index("gate.approval_recorded") < kinds.index("gate.decided")


def test_replay_recordings_before_n_of_m_have_no_such_marker() -> None:
    # The histories recorded before the patch keep covering the one-decision path.
    before = PREVIOUS / "repo_run_approved.2026-12-07.json"
    history = WorkflowHistory.from_json("before", before.read_text(encoding="utf-8"))
    assert PATCH_GATE_N_OF_M not in patch_ids(history)


def gate_requested_data(name: str) -> list[dict[str, Any]]:
    """The data of each gate.requested event a recording recorded."""
    return [e["data"] for e in recorded_events(load(name)) if e["type"] == "gate.requested"]


def test_replay_gate_deadline_recording_carries_timeout_and_deadline() -> None:
    assert PATCH_GATE_TIMEOUT_IN_EVENT in patch_ids(load("repo_run_gate_deadline"))
    (data,) = gate_requested_data("repo_run_gate_deadline")
    assert data["timeout_s"] == 3600
    # RFC 3339 in UTC, an hour after the request.
    deadline = datetime.fromisoformat(data["deadline"])
    assert data["deadline"].endswith("Z") and deadline.utcoffset() == timedelta(0)
    requested = next(e for e in recorded_events(load("repo_run_gate_deadline")) if e["type"] == "gate.requested")
    assert timedelta(seconds=3599) < deadline - datetime.fromisoformat(requested["created_at"]) <= timedelta(hours=1)


def test_replay_gates_without_timeout_record_no_deadline_and_no_marker() -> None:
    # Gates that wait forever ask for no patch: their histories are the ones recorded before it.
    assert PATCH_GATE_TIMEOUT_IN_EVENT not in patch_ids(load("repo_run_two_milestones"))
    for data in gate_requested_data("repo_run_two_milestones"):
        assert set(data) == {"run_id", "gate", "description"}, data


def model_calls(history: WorkflowHistory) -> list[dict[str, object]]:
    """The inputs of the history's call_model activities, in order."""
    calls = []
    for e in history.events:
        attrs = e.activity_task_scheduled_event_attributes
        if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED and attrs.activity_type.name == CALL_MODEL:
            calls.append(json.loads(attrs.input.payloads[0].data))
    return calls


@pytest.mark.parametrize("name", ["model_steps_day_raised", "model_steps_next_day"])
def test_replay_day_limit_recordings_take_the_patched_path(name: str) -> None:
    history = load(name)
    assert PATCH_TOKENS_PER_DAY in patch_ids(history)
    kinds = recorded_event_types(history)
    # One pause by the daily limit before the call, one resume, then the run went on.
    assert kinds.count("run.paused") == 1 and kinds.count("run.resumed") == 1, kinds
    assert kinds.index("run.paused") < kinds.index("run.resumed") < kinds.index("run.completed")
    first, second = model_calls(history)
    # The call was asked again after the pause; a raise lifts the day's limit by the grant.
    assert first["day_limit"] == 5000
    assert second["day_limit"] == (105_000 if name == "model_steps_day_raised" else 5000)


def test_replay_recordings_before_the_day_limit_have_no_such_marker() -> None:
    assert PATCH_TOKENS_PER_DAY not in patch_ids(load("repo_run_two_milestones"))


def test_replay_model_docs_recording_takes_the_patched_path() -> None:
    history = load("repo_run_model_docs_budget_raised")
    assert PATCH_MODEL_DOCS in patch_ids(history)
    activities = scheduled_activities(history)
    # The first call refused (it would pass the budget), then the two pages' calls after the raise.
    assert activities.count(CALL_DOCS_MODEL) == 3
    assert GENERATE_DOCUMENTATION not in activities
    assert activities.index(CALL_DOCS_MODEL) < activities.index(GENERATE_DOCUMENTATION_WITH_MODELS)
    kinds = recorded_event_types(history)
    assert kinds.index("run.paused") < kinds.index("run.resumed") < kinds.index("documentation.generated")


@pytest.mark.parametrize("name", sorted(n for n in SCENARIOS if n.startswith("repo_run_") and "model" not in n))
def test_replay_runs_without_models_record_no_model_docs_marker(name: str) -> None:
    history = load(name)
    assert PATCH_MODEL_DOCS not in patch_ids(history)
    assert CALL_DOCS_MODEL not in scheduled_activities(history)


def test_replay_lifecycle_narrative_recording_takes_the_patched_path() -> None:
    history = load("lifecycle_opportunity_narrated")
    assert PATCH_LIFECYCLE_NARRATIVE in patch_ids(history)
    activities = scheduled_activities(history)
    # Refused once (over the budget), then made after the raise; before the result is stored.
    assert activities.count(NARRATE_STAGE) == 2
    assert activities.index(RUN_STAGE_AGENT) < activities.index(NARRATE_STAGE) < activities.index(STORE_STAGE_RESULT)


def narrate_calls(history: WorkflowHistory) -> list[dict[str, object]]:
    """The inputs of the history's narrate_stage activities, in order."""
    calls = []
    for e in history.events:
        attrs = e.activity_task_scheduled_event_attributes
        if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED and attrs.activity_type.name == NARRATE_STAGE:
            calls.append(json.loads(attrs.input.payloads[0].data))
    return calls


def test_replay_lifecycle_day_limit_recording_takes_the_patched_path() -> None:
    history = load("lifecycle_opportunity_narrated_day_raised")
    assert {PATCH_LIFECYCLE_NARRATIVE, PATCH_TOKENS_PER_DAY} <= patch_ids(history)
    kinds = recorded_event_types(history)
    assert kinds.count("run.paused") == 1 and kinds.count("run.resumed") == 1, kinds
    assert kinds.index("run.paused") < kinds.index("run.resumed") < kinds.index("run.completed")
    # Refused by the workspace's day first, asked again after the raise (which lifts the day's limit by the grant).
    first, second = narrate_calls(history)
    assert (first["day_limit"], second["day_limit"]) == (5000, 105_000)


def test_replay_lifecycle_runs_without_a_daily_limit_record_no_day_marker() -> None:
    # Runs without QP_LIFECYCLE_LIMITS (and those triggered before it) never ask for the patch, so they replay.
    history = load("lifecycle_opportunity_narrated")
    assert PATCH_TOKENS_PER_DAY not in patch_ids(history)
    assert all(call.get("day_limit") is None for call in narrate_calls(history))


@pytest.mark.parametrize("name", sorted(n for n in SCENARIOS if n.startswith("lifecycle_") and "narrated" not in n))
def test_replay_lifecycle_runs_without_models_record_no_narrative_marker(name: str) -> None:
    history = load(name)
    assert PATCH_LIFECYCLE_NARRATIVE not in patch_ids(history)
    assert NARRATE_STAGE not in scheduled_activities(history)


def test_replay_model_qa_recording_takes_the_patched_path() -> None:
    history = load("repo_run_model_qa_reviewed")
    assert {PATCH_MODEL_STEPS, PATCH_MODEL_QA} <= patch_ids(history)
    activities = scheduled_activities(history)
    # The review follows the applied diff and comes before the milestone's pull request.
    assert activities.count(REVIEW_MODEL_DIFF) == 1
    assert activities.index(CALL_MODEL) < activities.index(REVIEW_MODEL_DIFF)
    milestone_pr = max(i for i, name in enumerate(activities) if name == OPEN_PULL_REQUEST)
    assert activities.index(REVIEW_MODEL_DIFF) < milestone_pr


@pytest.mark.parametrize("name", sorted(n for n in SCENARIOS if n.startswith("repo_run_") and "model_qa" not in n))
def test_replay_runs_without_models_qa_record_no_model_qa_marker(name: str) -> None:
    history = load(name)
    assert PATCH_MODEL_QA not in patch_ids(history)
    assert REVIEW_MODEL_DIFF not in scheduled_activities(history)


MINIMAL_RUN_EVENTS = ["run.started", "documentation.generated", "gate.requested", "gate.decided", "run.completed"]


def test_replay_minimal_run_carries_its_events_on_four_fewer_round_trips() -> None:
    before = WorkflowHistory.from_json(
        "before", (PREVIOUS / "repo_run_approved.2026-12-07.json").read_text(encoding="utf-8")
    )
    after = WorkflowHistory.from_json(
        "after", (PREVIOUS / "repo_run_approved.2026-12-07-carried.json").read_text(encoding="utf-8")
    )
    assert PATCH_EVENTS_CARRIED not in patch_ids(before) and PATCH_EVENTS_CARRIED in patch_ids(after)
    # The same run, the same events, each recorded once and in order either way.
    assert recorded_event_types(before) == recorded_event_types(after) == MINIMAL_RUN_EVENTS
    assert event_types(before).count(E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED) == 11
    assert scheduled_activities(before).count(RECORD_EVENT) == 5
    # Under the patch: run.started rides on the clone, gate.decided on the merge, run.completed on the cleanup, and
    # the two events before the gate's wait are recorded by one record_events.
    assert event_types(after).count(E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED) == 7
    assert RECORD_EVENT not in scheduled_activities(after)
    assert [(name, [e["type"] for e in events]) for name, events in recording_calls(after)] == [
        (CLONE_REPOSITORY, ["run.started"]),
        (RECORD_EVENTS, ["documentation.generated", "gate.requested"]),
        (MERGE_PULL_REQUEST, ["gate.decided"]),
        (CLEANUP_WORKTREE, ["run.completed"]),
    ]


@pytest.mark.parametrize("name", ["repo_run_paused_resumed", "repo_run_two_of_three", "lifecycle_target_approved"])
def test_replay_carried_recordings_record_every_event_of_the_run_in_order(name: str) -> None:
    history = load(name)
    assert PATCH_EVENTS_CARRIED in patch_ids(history)
    # Every recording call is given the events not yet known recorded, from the oldest: each call's events follow
    # one another without a gap (an event recorded twice, as a pause handler's flush overlapping a step, is one row).
    for _, events in recording_calls(history):
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    kinds = recorded_event_types(history)
    assert kinds[0] == "run.started" and kinds[-1] == "run.completed", kinds


def test_replay_minimal_run_removes_its_worktree_with_a_local_activity_one_round_trip_fewer() -> None:
    before = WorkflowHistory.from_json(
        "before", (PREVIOUS / "repo_run_approved.2026-12-07-carried.json").read_text(encoding="utf-8")
    )
    after = load("repo_run_approved")
    assert PATCH_CLEANUP_LOCAL not in patch_ids(before) and PATCH_CLEANUP_LOCAL in patch_ids(after)
    # The same steps up to the merge, each carrying the same events; then the cleanup: an activity task (and the
    # workflow task that followed it) before, a local activity's marker in the merge's next workflow task now.
    assert scheduled_activities(before) == [*scheduled_activities(after), CLEANUP_WORKTREE]
    assert [(name, [e["type"] for e in events]) for name, events in recording_calls(after)] == [
        (CLONE_REPOSITORY, ["run.started"]),
        (RECORD_EVENTS, ["documentation.generated", "gate.requested"]),
        (MERGE_PULL_REQUEST, ["gate.decided"]),
    ]
    assert local_activities(before) == [] and local_activities(after) == [CLEANUP_WORKTREE]
    tasks = E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    assert event_types(after).count(tasks) < event_types(before).count(tasks)
    # Both cleanup patches are asked as the run starts: after the merge, only the local activity's marker and the
    # final state's search attributes, no patch marker (nor the TemporalChangeVersion upsert that comes with one).
    merged = max(i for i, e in enumerate(after.events) if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    tail = after.events[merged:]
    assert [
        e.marker_recorded_event_attributes.marker_name for e in tail if e.event_type == E.EVENT_TYPE_MARKER_RECORDED
    ] == ["core_local_activity"]
    assert [e.event_type for e in tail].count(E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES) == 1
    first_task = next(i for i, e in enumerate(after.events) if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    assert {PATCH_CLEANUP_LOCAL, PATCH_WORKTREE_CLEANUP} <= patch_ids_in(after.events[:first_task])


async def test_replay_carried_recording_replays_on_a_worker_that_starts_no_carrying_run() -> None:
    # QP_WORKER_EVENT_CARRY=false decides only for runs not yet started: a carrying run's history says it carries.
    replayer = Replayer(
        workflows=WORKFLOWS, data_converter=pydantic_data_converter, interceptors=worker_interceptors(event_carry=False)
    )
    result = await replayer.replay_workflow(load("repo_run_approved"), raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure
