"""Run events carried by the run's activities (the events-carried patch): fewer round trips, each event once.

A run's events ride on its next activity (the qp-events header, recorded by the worker's interceptor before the
body) or are recorded in batches by record_events where the run waits; these tests read the workflow's history
to see which activity recorded what, and the event log to see that each event is there once, gapless.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory

from activities.event_carry import EventCarryInterceptor
from quantapilot.events.carry import EVENTS_HEADER, EVENTS_NOT_RECORDED, RECORD_EVENTS
from quantapilot.events.record import EventRecord
from quantapilot.events.table import RunEvent
from quantapilot.models import RunKind
from quantapilot.runs.contracts import (
    CLEANUP_WORKTREE,
    CLONE_REPOSITORY,
    MERGE_PULL_REQUEST,
    RECORD_EVENT,
)
from quantapilot.runs.ids import workflow_id
from quantapilot.settings import Settings
from tests.support import Api, make_remote
from tests.webhook_e2e.support import fast_run
from worker import build_worker

E = EventType
APPROVED = ["run.started", "documentation.generated", "gate.requested", "gate.decided", "run.completed"]


async def history_of(client: Client, run_id: str) -> WorkflowHistory:
    handle = client.get_workflow_handle(workflow_id(RunKind.REPOSITORY, "default", run_id))
    await handle.result()  # closed: the whole history
    return await handle.fetch_history()


def recordings(history: WorkflowHistory) -> list[tuple[str, list[str]]]:
    """Each scheduled activity that recorded events: its type and the types of the events it was given."""
    calls = []
    for e in history.events:
        if e.event_type != E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            continue
        attrs = e.activity_task_scheduled_event_attributes
        name = attrs.activity_type.name
        if name == RECORD_EVENTS:
            calls.append((name, [ev["type"] for ev in json.loads(attrs.input.payloads[0].data)]))
        elif name == RECORD_EVENT:
            calls.append((name, [json.loads(attrs.input.payloads[0].data)["type"]]))
        elif EVENTS_HEADER in attrs.header.fields:
            calls.append((name, [ev["type"] for ev in json.loads(attrs.header.fields[EVENTS_HEADER].data)]))
    return calls


def local_activities(history: WorkflowHistory) -> list[tuple[str, str]]:
    """Each local activity attempt the history's markers record: its type and its failure's type ("" when none).

    A local activity leaves a marker, not activity tasks: what it carried in its header is not in the history.
    """
    calls = []
    for e in history.events:
        attrs = e.marker_recorded_event_attributes
        if e.event_type == E.EVENT_TYPE_MARKER_RECORDED and attrs.marker_name == "core_local_activity":
            (payload,) = attrs.details["data"].payloads
            calls.append((json.loads(payload.data)["activity_type"], attrs.failure.application_failure_info.type))
    return calls


def failures(history: WorkflowHistory) -> list[str]:
    """The error types of the history's failed activity attempts (the last attempt of each)."""
    return [
        e.activity_task_failed_event_attributes.failure.application_failure_info.type
        for e in history.events
        if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_FAILED
    ]


def stored(engine: Engine, run_id: str) -> list[tuple[int, str]]:
    with Session(engine) as session:
        rows = session.exec(select(RunEvent).where(RunEvent.run_id == run_id).order_by(col(RunEvent.seq))).all()
    return [(row.seq, row.type) for row in rows]


async def approved_run(api: Api, tmp_path: Path) -> str:
    url = make_remote(tmp_path, {"README.md": "# Carried\n"})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = str(body["run_id"])
    await api.wait_gate(run_id, "anchor")
    await api.decide(run_id, "anchor", True)
    final = await api.wait_state(run_id, "completed")
    assert final["last_event_seq"] == len(APPROVED), final
    return run_id


@pytest.mark.usefixtures("worker")
async def test_event_carry_minimal_run_takes_six_activities_and_a_local_cleanup_instead_of_eleven(
    api: Api, client: Client, engine: Engine, tmp_path: Path
) -> None:
    run_id = await approved_run(api, tmp_path)
    history = await history_of(client, run_id)
    kinds = [e.event_type for e in history.events]
    # clone, read_config, generate_docs, open_pr, record_events, merge: one round trip for events where there were
    # five (one record_event each); the cleanup, which carries run.completed, is a local activity.
    assert kinds.count(E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == 6
    assert kinds.count(E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED) == 6
    assert recordings(history) == [
        (CLONE_REPOSITORY, ["run.started"]),
        (RECORD_EVENTS, ["documentation.generated", "gate.requested"]),  # before the gate's wait
        (MERGE_PULL_REQUEST, ["gate.decided"]),
    ]
    assert local_activities(history) == [(CLEANUP_WORKTREE, "")]
    # No activity recorded run.completed, yet it is stored: the local cleanup carried it.
    assert stored(engine, run_id) == list(enumerate(APPROVED, start=1))
    assert [e["type"] for e in await api.events(run_id)] == APPROVED


@pytest.mark.usefixtures("worker")
async def test_event_carry_event_carried_by_a_failing_activity_is_recorded_once(
    api: Api, client: Client, engine: Engine
) -> None:
    # The clone of a repository the settings do not allow fails for good, after it recorded the run.started it
    # carried; the run still holds that event (its carrier failed) and hands it on with run.failed.
    run_id = await fast_run(api, "carried-failing")
    final = await api.wait_state(run_id, "failed")
    history = await history_of_failed(client, run_id)
    # The clone carried run.started and failed; the local cleanup carried it again, with run.failed.
    assert recordings(history) == [(CLONE_REPOSITORY, ["run.started"])]
    assert local_activities(history) == [(CLEANUP_WORKTREE, "")]
    assert failures(history)[0] == final["error"]["code"]
    # Recorded twice, stored once: the log is whole and gapless.
    assert stored(engine, run_id) == [(1, "run.started"), (2, "run.failed")]
    assert final["last_event_seq"] == 2


async def history_of_failed(client: Client, run_id: str) -> WorkflowHistory:
    handle = client.get_workflow_handle(workflow_id(RunKind.REPOSITORY, "default", run_id))
    with pytest.raises(Exception):  # noqa: B017, PT011 - the run failed: WorkflowFailureError
        await handle.result()
    return await handle.fetch_history()


async def test_event_carry_events_not_recorded_by_the_carrier_are_recorded_by_the_workflow(
    api: Api, client: Client, settings: Settings, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The interceptor's recording fails every time (as while the database is away); the registered record_events
    # activity, bound when the worker was built, still works.
    calls: list[list[str]] = []

    class Refusing:
        async def record_events(self, events: list[EventRecord]) -> None:
            calls.append([e.type for e in events])
            raise ConnectionError("database away")

    worker = build_worker(client, settings)
    (carry,) = [i for i in worker.config()["interceptors"] if isinstance(i, EventCarryInterceptor)]
    monkeypatch.setattr(carry, "_events", Refusing())
    async with worker:
        run_id = await approved_run(api, tmp_path)
    history = await history_of(client, run_id)
    # Each carrier failed before its body ran; the workflow recorded its events, then ran the step again. The
    # local cleanup's failure is in its marker (it raises ApplicationError, not ActivityError): handled the same.
    assert calls == [["run.started"], ["gate.decided"], ["run.completed"]]
    assert failures(history) == [EVENTS_NOT_RECORDED] * 2
    assert local_activities(history) == [(CLEANUP_WORKTREE, EVENTS_NOT_RECORDED), (CLEANUP_WORKTREE, "")]
    names = [name for name, _ in recordings(history)]
    assert names == [
        CLONE_REPOSITORY,
        RECORD_EVENTS,
        RECORD_EVENTS,
        MERGE_PULL_REQUEST,
        RECORD_EVENTS,
        RECORD_EVENTS,
    ]
    assert stored(engine, run_id) == list(enumerate(APPROVED, start=1))


async def test_event_carry_worker_with_it_off_starts_runs_one_activity_per_event(
    api: Api, client: Client, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    # QP_WORKER_EVENT_CARRY=false (a rolling deploy from a release without it): new runs take the earlier shape.
    async with build_worker(client, settings.model_copy(update={"worker_event_carry": False})):
        run_id = await approved_run(api, tmp_path)
    history = await history_of(client, run_id)
    assert recordings(history) == [(RECORD_EVENT, [kind]) for kind in APPROVED]
    markers = [e for e in history.events if e.event_type == E.EVENT_TYPE_MARKER_RECORDED]
    assert all(b"events-carried" not in m.SerializeToString() for m in markers)
    assert stored(engine, run_id) == list(enumerate(APPROVED, start=1))
