"""What an operator sees in the Web UI: search attributes kept current, current details and activity summaries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowHandle

from quantapilot.settings import Settings
from quantapilot.temporal import (
    SA_BRANCH,
    SA_CORRELATION_ID,
    SA_PENDING_GATE,
    SA_REPO_URL,
    SA_RUN_KIND,
    SA_STATE,
    SA_WORKSPACE,
)
from tests.support import Api, eventually, make_remote

README = "# Console demo\n\nA project for the operators' console tests.\n"


def handle_of(client: Client, run_id: str) -> WorkflowHandle:
    return client.get_workflow_handle(f"repo-run/default/{run_id}")


async def visible(client: Client, query: str) -> set[str]:
    return {w.id async for w in client.list_workflows(query)}


async def wait_visible(client: Client, query: str, expected: set[str]) -> None:
    async def probe() -> set[str]:
        return await visible(client, query)

    await eventually(probe, lambda got: got == expected, what=query)


async def current_details(handle: WorkflowHandle) -> str:
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return metadata.current_details


@pytest.mark.usefixtures("worker")
async def test_visibility_attributes_follow_runs_through_gates_pause_and_completion(
    api: Api, client: Client, settings: Settings, tmp_path: Path
) -> None:
    url = make_remote(tmp_path, {"README.md": README})
    tag = uuid.uuid4().hex[:8]
    ids: dict[str, str] = {}
    for name in ("waiting", "paused", "done"):
        code, body = await api.post("/run", {"repo_url": url, "branch": "main", "correlation_id": f"{name}-{tag}"})
        assert code == 202, body
        ids[name] = body["run_id"]
    for run_id in ids.values():
        await api.wait_gate(run_id, "anchor")
    code, _ = await api.post(f"/v1/runs/{ids['paused']}/pause", {"reason": "audit"})
    assert code == 200
    code, _ = await api.decide(ids["done"], "anchor", True)
    assert code == 200
    await api.wait_state(ids["done"], "completed")

    wid = {name: f"repo-run/default/{run_id}" for name, run_id in ids.items()}
    # Scoped to this test's task queue: the dev server is shared by the whole session.
    scope = f"TaskQueue = '{settings.task_queue}'"
    expectations = {
        f"{scope} AND QpWorkspace = 'default' AND QpState = 'waiting_for_gate'": {wid["waiting"]},
        f"{scope} AND QpPendingGate = 'anchor'": {wid["waiting"], wid["paused"]},
        f"{scope} AND QpState = 'paused'": {wid["paused"]},
        f"{scope} AND QpState = 'completed' AND QpPendingGate = ''": {wid["done"]},
        f"{scope} AND QpRunKind = 'repository' AND QpRepoUrl = '{url}' AND QpBranch = 'main'": set(wid.values()),
        f"QpCorrelationId = 'waiting-{tag}'": {wid["waiting"]},
    }
    for query, expected in expectations.items():
        # Visibility is eventually consistent: poll until the query answers exactly the expected runs.
        await wait_visible(client, query, expected)

    described = await handle_of(client, ids["waiting"]).describe()
    attrs = described.typed_search_attributes
    assert attrs.get(SA_WORKSPACE) == "default"
    assert attrs.get(SA_RUN_KIND) == "repository"
    assert attrs.get(SA_REPO_URL) == url
    assert attrs.get(SA_BRANCH) == "main"
    assert attrs.get(SA_CORRELATION_ID) == f"waiting-{tag}"
    assert attrs.get(SA_STATE) == "waiting_for_gate"
    assert attrs.get(SA_PENDING_GATE) == "anchor"
    assert await described.static_summary() == f"Repository run of {url} @ main"


@pytest.mark.usefixtures("worker")
async def test_visibility_current_details_and_activity_summaries_tell_the_story(
    api: Api, client: Client, tmp_path: Path
) -> None:
    url = make_remote(tmp_path, {"README.md": README})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    handle = handle_of(client, run_id)
    await api.wait_gate(run_id, "anchor")

    waiting = await current_details(handle)
    assert f"**Repository run** `{run_id}` is **waiting for gate**." in waiting
    assert f"Repository `{url}` at `main`." in waiting
    assert "| anchor | pending |  |" in waiting
    assert f"Approve with `qp approve {run_id} anchor`" in waiting
    assert "#1 docs (open)" in waiting

    await api.post(f"/v1/runs/{run_id}/pause", {"reason": "audit"})
    paused = await current_details(handle)
    assert "is **paused**" in paused and f"resume with `qp resume {run_id}`" in paused

    await api.post(f"/v1/runs/{run_id}/resume")
    await api.decide(run_id, "anchor", True)
    await api.wait_state(run_id, "completed")
    done = await current_details(handle)
    assert "is **completed**" in done
    assert "| anchor | approved | tester |" in done
    assert "Approve with" not in done and "Current step" not in done
    assert "#1 docs (merged)" in done

    # Each step's activity carries a readable summary, shown as its title in the Web UI's history; the worktree
    # cleanup, a local activity (cleanup-worktree-local), has no scheduled event but a marker, which carries it.
    summaries = []
    titled = {EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED, EventType.EVENT_TYPE_MARKER_RECORDED}
    async for event in handle.fetch_history_events():
        if event.event_type in titled and event.HasField("user_metadata") and event.user_metadata.HasField("summary"):
            summaries.append(client.data_converter.payload_converter.from_payload(event.user_metadata.summary, str))
    assert summaries == [
        f"Clone {url} at main",
        "Read quantapilot.yml",
        "Generate the documentation into docs",
        f"Open a pull request for docs: quantapilot/{run_id}/docs into main",
        # Events with no step of their own to ride on are recorded before the run waits (events-carried).
        "Record documentation.generated, gate.requested",
        "Record run.paused",
        "Record run.resumed",
        "Merge pull request #1 (docs, merge)",
        "Remove the run's worktree",
    ]


@pytest.mark.usefixtures("worker")
async def test_visibility_current_details_say_by_when_a_gate_with_a_timeout_must_be_decided(
    api: Api, client: Client, tmp_path: Path
) -> None:
    yml = "version: 1\ngate_definitions:\n  anchor: {timeout_s: 900}\n"
    url = make_remote(tmp_path, {"README.md": README, "quantapilot.yml": yml})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    status = await api.wait_gate(run_id, "anchor")
    deadline = datetime.fromisoformat(status["gates"][0]["deadline"])
    waiting = await current_details(handle_of(client, run_id))
    assert f"Decide by {deadline.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC: the gate times out then." in waiting
    await api.decide(run_id, "anchor", True)
    await api.wait_state(run_id, "completed")
    assert "Decide by" not in await current_details(handle_of(client, run_id))
