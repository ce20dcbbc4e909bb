"""Repository runs end to end: HTTP trigger -> real Temporal workflow -> real git remote -> HTTP status/events."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from quantapilot.models import RunKind
from quantapilot.runs.contracts import CLEANUP_WORKTREE, MERGE_PULL_REQUEST
from quantapilot.runs.ids import workflow_id
from quantapilot.settings import Settings
from tests.support import Api, git, remote_branches, remote_file
from tests.support import make_remote as _make_remote
from workflows.repo_run import PATCH_CLEANUP_LOCAL

README = "# Demo project\n\nA small project used by the tests.\n"
PKG = '"""Demo package."""\n\n\ndef add(a: int, b: int = 1) -> int:\n    """Add two numbers."""\n    return a + b\n'


def make_remote(tmp_path: Path, extra: dict[str, str] | None = None) -> str:
    return _make_remote(tmp_path, {"README.md": README, "demo/__init__.py": PKG, **(extra or {})})


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


@pytest.mark.usefixtures("worker")
async def test_repo_run_approve_anchor_completes(api: Api, tmp_path: Path) -> None:
    url = make_remote(tmp_path)
    code, body = await api.post("/run", {"repo_url": url, "branch": "main", "correlation_id": "corr-1"})
    assert code == 202, body
    run_id = body["run_id"]
    assert body["status_url"].endswith(f"/v1/runs/{run_id}")

    status = await api.wait_gate(run_id, "anchor")
    assert status["state"] == "waiting_for_gate"
    assert status["correlation_id"] == "corr-1"
    docs_branch = f"quantapilot/{run_id}/docs"  # one per run: concurrent runs of a repository never collide
    assert status["docs_branch"] == docs_branch
    # Documentation was really committed and pushed to the remote's docs branch.
    index = remote_file(url, docs_branch, "docs/index.md")
    assert index is not None and index.startswith("---\n") and "Demo project" in index
    assert docs_branch in remote_branches(url)
    # Its commit names the run it was made by after the subject (Worktrees.commit_and_push).
    subject, trailer = (
        git("log", "-1", "--format=%B", docs_branch, cwd=Path(url.removeprefix("file://"))).strip().split("\n\n")
    )
    assert subject.startswith("docs: generate documentation for ") and trailer == f"QuantaPilot run {run_id}."

    code, gate = await api.decide(run_id, "anchor", True, "looks right")
    assert code == 200, gate
    assert gate["status"] == "approved" and gate["decided_by"] == "tester" and gate["source"] == "api"

    final = await api.wait_state(run_id, "completed")
    assert final["error"] is None
    # Approving the anchor merged the docs PR into main on the remote.
    assert remote_file(url, "main", "docs/index.md") is not None
    assert [p["state"] for p in final["pull_requests"]] == ["merged"]

    events = await api.events(run_id)
    assert types(events) == [
        "run.started",
        "documentation.generated",
        "gate.requested",
        "gate.decided",
        "run.completed",
    ]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert events[0]["data"] == {"run_id": run_id, "repo_url": url, "branch": "main", "correlation_id": "corr-1"}
    assert events[1]["data"]["pr_number"] == final["pull_requests"][0]["number"]
    assert events[3]["data"] == {"run_id": run_id, "gate": "anchor", "approved": True, "reason": "looks right"}

    # Same decision again is idempotent; the opposite one now conflicts (the run is closed).
    code, again = await api.decide(run_id, "anchor", True)
    assert code == 409, again


@pytest.mark.usefixtures("worker")
async def test_repo_run_reject_fails_run(api: Api, tmp_path: Path) -> None:
    url = make_remote(tmp_path)
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    code, gate = await api.decide(run_id, "anchor", False, "wrong scope")
    assert code == 200 and gate["status"] == "rejected"
    code, again = await api.decide(run_id, "anchor", True)
    assert code == 409 and again["error"]["code"] == "CONFLICT"

    final = await api.wait_state(run_id, "failed")
    assert final["error"]["code"] == "GATE_REJECTED"
    events = await api.events(run_id)
    assert events[-1]["type"] == "run.failed"
    assert events[-1]["data"]["error_code"] == "GATE_REJECTED"
    # Nothing was merged into main.
    assert remote_file(url, "main", "docs/index.md") is None


@pytest.mark.usefixtures("worker")
async def test_repo_run_pause_holds_and_resume_continues(api: Api, tmp_path: Path) -> None:
    url = make_remote(tmp_path)
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")

    code, paused = await api.post(f"/v1/runs/{run_id}/pause", {"reason": "security review"})
    assert code == 200, paused
    assert paused["state"] == "paused" and paused["paused_reason"] == "security review"
    # A decision is accepted while paused, but no new step starts.
    code, _ = await api.decide(run_id, "anchor", True)
    assert code == 200
    await asyncio.sleep(1.5)
    held = await api.status(run_id)
    assert held["state"] == "paused"
    assert remote_file(url, "main", "docs/index.md") is None

    code, resumed = await api.post(f"/v1/runs/{run_id}/resume")
    assert code == 200, resumed
    final = await api.wait_state(run_id, "completed")
    assert final["paused_reason"] is None
    kinds = types(await api.events(run_id))
    assert kinds.index("run.paused") < kinds.index("run.resumed") < kinds.index("run.completed")
    assert remote_file(url, "main", "docs/index.md") is not None


@pytest.mark.usefixtures("worker")
async def test_repo_run_cancel(api: Api, tmp_path: Path) -> None:
    url = make_remote(tmp_path)
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    code, resp = await api.post(f"/v1/runs/{run_id}/cancel")
    assert code == 202, resp
    final = await api.wait_state(run_id, "cancelled")
    assert final["completed_at"] is not None
    assert types(await api.events(run_id))[-1] == "run.cancelled"
    code, resp = await api.post(f"/v1/runs/{run_id}/cancel")
    assert code == 409


@pytest.mark.usefixtures("worker")
async def test_repo_run_bad_config_fails_with_config_invalid(api: Api, tmp_path: Path) -> None:
    url = make_remote(tmp_path, {"quantapilot.yml": "version: 1\nmilestones:\n  - id: bad\n    title: x\n"})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    final = await api.wait_state(body["run_id"], "failed")
    assert final["error"]["code"] == "CONFIG_INVALID"
    assert "milestones[0].id" in final["error"]["message"]
    events = await api.events(body["run_id"])
    assert types(events) == ["run.started", "run.failed"]
    assert events[-1]["data"]["error_code"] == "CONFIG_INVALID"


@pytest.mark.usefixtures("worker")
async def test_repo_run_missing_branch_and_unreachable_repo(api: Api, tmp_path: Path) -> None:
    url = make_remote(tmp_path)
    _, missing = await api.post("/run", {"repo_url": url, "branch": "nope"})
    _, unreachable = await api.post("/run", {"repo_url": f"file://{tmp_path}/absent.git", "branch": "main"})
    final = await api.wait_state(missing["run_id"], "failed")
    assert final["error"]["code"] == "BRANCH_NOT_FOUND"
    final = await api.wait_state(unreachable["run_id"], "failed", timeout=90)
    assert final["error"]["code"] == "REPO_CLONE_FAILED"


@pytest.mark.usefixtures("worker")
async def test_repo_run_url_not_allowed(api: Api, tmp_path: Path) -> None:
    _, body = await api.post("/run", {"repo_url": "https://example.invalid/org/repo", "branch": "main"})
    final = await api.wait_state(body["run_id"], "failed")
    assert final["error"]["code"] == "REPO_URL_NOT_ALLOWED"


@pytest.mark.usefixtures("worker")
async def test_repo_run_concurrent_runs_of_one_repository_do_not_collide(api: Api, tmp_path: Path) -> None:
    url = make_remote(tmp_path)
    (_, first), (_, second) = await asyncio.gather(
        api.post("/run", {"repo_url": url, "branch": "main"}), api.post("/run", {"repo_url": url, "branch": "main"})
    )
    runs = [first["run_id"], second["run_id"]]
    for run_id in runs:
        await api.wait_gate(run_id, "anchor")
    for run_id in runs:
        code, _ = await api.decide(run_id, "anchor", True)
        assert code == 200
    finals = [await api.wait_state(run_id, "completed") for run_id in runs]
    assert {f["docs_branch"] for f in finals} == {f"quantapilot/{r}/docs" for r in runs}
    assert {f"quantapilot/{r}/docs" for r in runs} <= set(remote_branches(url))
    assert remote_file(url, "main", "docs/index.md") is not None


@pytest.mark.usefixtures("worker")
async def test_repo_run_clones_shallow_and_still_merges_into_a_main_that_moved_on(
    api: Api, tmp_path: Path, settings: Settings
) -> None:
    url = make_remote(tmp_path)
    seed = tmp_path / "project-seed"
    for n in range(3):  # some history the run does not need
        (seed / f"history-{n}.txt").write_text(f"{n}\n", encoding="utf-8")
        git("add", "--all", cwd=seed)
        git("commit", "--quiet", "-m", f"history {n}", cwd=seed)
    git("push", "--quiet", url, "main:main", cwd=seed)
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    status = await api.wait_gate(run_id, "anchor")
    worktree = settings.run_workdir / status["workspace"] / run_id / "repo"
    assert git("rev-parse", "--is-shallow-repository", cwd=worktree).strip() == "true"
    assert git("rev-list", "--count", "origin/main", cwd=worktree).strip() == "1"
    # Someone pushes to main while the run waits: the docs merge must fetch it and merge on top.
    (seed / "meanwhile.txt").write_text("pushed during the gate\n", encoding="utf-8")
    git("add", "--all", cwd=seed)
    git("commit", "--quiet", "-m", "meanwhile", cwd=seed)
    git("push", "--quiet", url, "main:main", cwd=seed)
    await api.decide(run_id, "anchor", True)
    final = await api.wait_state(run_id, "completed")
    assert [p["state"] for p in final["pull_requests"]] == ["merged"]
    assert remote_file(url, "main", "meanwhile.txt") == "pushed during the gate\n"
    assert remote_file(url, "main", "docs/index.md") is not None
    assert remote_file(url, "main", "history-2.txt") == "2\n"


@pytest.mark.usefixtures("worker")
async def test_repo_run_pages_are_served_by_the_docs_api_at_the_commit_version(api: Api, tmp_path: Path) -> None:
    url = make_remote(tmp_path)
    sha = remote_branches(url)["main"]
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    await api.wait_gate(body["run_id"], "anchor")
    code, listing = await api.get("/v1/docs/pages?project=project")
    assert code == 200, listing
    slugs = {p["slug"] for p in listing["pages"]}
    assert "project/index" in slugs, slugs
    code, page = await api.get("/v1/docs/pages/project/index")
    assert code == 200, page
    assert page["project"] == "project" and page["version"] == f"git-{sha[:12]}"
    # The stored page is the one committed to the docs branch, rendered to HTML.
    committed = remote_file(url, f"quantapilot/{body['run_id']}/docs", "docs/index.md")
    assert committed is not None and page["content"]["markdown"] in committed
    assert "Demo project" in page["content"]["html"]
    code, same = await api.get(f"/v1/docs/pages/project/index?version=git-{sha[:12]}")
    assert code == 200 and same["content"] == page["content"]


@pytest.mark.usefixtures("worker")
async def test_repo_run_docs_lint_failure_ends_the_run_unless_switched_off(api: Api, tmp_path: Path) -> None:
    # Personal data in the front matter (an owner given as a real e-mail address; example.com would pass as
    # reserved) fails the lint, naming page and field.
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    linted = make_remote(tmp_path / "a", {"quantapilot.yml": "version: 1\ndocs: {owners: [alice@acme-widgets.io]}\n"})
    _, body = await api.post("/run", {"repo_url": linted, "branch": "main"})
    failed = await api.wait_state(body["run_id"], "failed")
    assert failed["error"]["code"] == "DOCS_LINT_FAILED", failed["error"]
    assert "field owners" in failed["error"]["message"] and "page " in failed["error"]["message"]
    assert list(remote_branches(linted)) == ["main"]  # nothing was pushed
    events = await api.events(body["run_id"])
    assert types(events) == ["run.started", "run.failed"]
    assert events[-1]["data"]["error_code"] == "DOCS_LINT_FAILED"
    # The same repository with gates.docs_lint off documents and reaches the anchor gate.
    off = make_remote(
        tmp_path / "b",
        {"quantapilot.yml": "version: 1\ngates: {docs_lint: false}\ndocs: {owners: [alice@acme-widgets.io]}\n"},
    )
    _, body = await api.post("/run", {"repo_url": off, "branch": "main"})
    status = await api.wait_gate(body["run_id"], "anchor")
    assert status["state"] == "waiting_for_gate"


@pytest.mark.usefixtures("worker")
async def test_repo_run_removes_its_worktree_with_a_local_activity_after_the_merge(
    api: Api, client: Client, settings: Settings, tmp_path: Path
) -> None:
    url = make_remote(tmp_path)
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    await api.decide(run_id, "anchor", True)
    await api.wait_state(run_id, "completed")
    handle = client.get_workflow_handle(workflow_id(RunKind.REPOSITORY, "default", run_id))
    await handle.result()
    events = (await handle.fetch_history()).events
    kinds = [e.event_type for e in events]
    scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name for e in events]
    merge_at = scheduled.index(MERGE_PULL_REQUEST)
    after_merge = kinds[merge_at:]
    # The merge is the last activity task: after it, the run's cleanup is a local activity's marker and the run
    # completes (how many workflow tasks the SDK takes for it is its business: a long one heartbeats).
    assert after_merge.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == 1
    assert kinds[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
    markers = [
        json.loads(e.marker_recorded_event_attributes.details["data"].payloads[0].data)["activity_type"]
        for e in events[merge_at:]
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and e.marker_recorded_event_attributes.marker_name == "core_local_activity"
    ]
    assert markers == [CLEANUP_WORKTREE]
    assert PATCH_CLEANUP_LOCAL.encode() in b"".join(
        e.SerializeToString() for e in events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
    )
    # It did its work: the worktree is gone, and the final event it carried is in the log.
    assert not (settings.run_workdir / "default" / run_id).exists()
    assert types(await api.events(run_id))[-1] == "run.completed"
