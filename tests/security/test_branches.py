"""A repository's quantapilot.yml cannot make the worker rewrite a branch outside the run's own namespace."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from quantapilot.models import RunKind
from quantapilot.runs.ids import new_run_id
from tests.support import Api, git, make_remote, remote_branches


def refs(url: str) -> dict[str, str]:
    """Every ref of a bare remote with its object (branches, tags, notes), as git stores them."""
    out = git("for-each-ref", "--format=%(refname) %(objectname)", cwd=Path(url.removeprefix("file://")))
    return dict(line.split(" ", 1) for line in out.splitlines())


def add_branch(url: str, tmp_path: Path, branch: str, files: dict[str, str]) -> str:
    """Push a branch with its own commit to the bare remote; return its sha."""
    seed = tmp_path / f"seed-{branch.replace('/', '-')}"
    git("clone", "--quiet", url, str(seed), cwd=tmp_path)
    git("checkout", "--quiet", "-b", branch, cwd=seed)
    for rel, content in files.items():
        (seed / rel).write_text(content, encoding="utf-8")
    git("add", "--all", cwd=seed)
    git("commit", "--quiet", "-m", f"{branch} work", cwd=seed)
    git("push", "--quiet", "origin", f"{branch}:{branch}", cwd=seed)
    return remote_branches(url)[branch]


@pytest.mark.usefixtures("worker")
async def test_branches_docs_branch_naming_an_existing_branch_is_refused(api: Api, tmp_path: Path) -> None:
    yml = "version: 1\ndocs: {branch: release}\n"
    url = make_remote(tmp_path, {"README.md": "# x\n", "quantapilot.yml": yml})
    add_branch(url, tmp_path, "release", {"RELEASE.md": "v1.0 as shipped\n"})
    before = refs(url)
    code, body = await api.post("/v1/runs", {"repo_url": url, "branch": "main"})
    assert code == 202, body
    final = await api.wait_state(body["run_id"], "failed", "completed", "waiting_for_gate")
    assert refs(url) == before  # release (and everything else) exactly as it was
    assert final["state"] == "failed", final
    assert final["error"]["code"] == "CONFIG_INVALID", final["error"]


@pytest.mark.usefixtures("worker")
async def test_branches_docs_branch_in_another_runs_namespace_is_refused(api: Api, tmp_path: Path) -> None:
    victim_key = f"victim-{uuid.uuid4().hex}"
    victim = new_run_id(RunKind.REPOSITORY, "default", victim_key)
    hostile = f"version: 1\ndocs: {{branch: quantapilot/{victim}/docs}}\n"
    url = make_remote(tmp_path, {"README.md": "# x\n", "hostile.yml": hostile})
    code, body = await api.post(
        "/v1/runs", {"repo_url": url, "branch": "main"}, headers={"Idempotency-Key": victim_key}
    )
    assert code == 202 and body["run_id"] == victim, body
    await api.wait_gate(victim, "anchor")
    before = refs(url)
    assert f"refs/heads/quantapilot/{victim}/docs" in before
    code, body = await api.post("/v1/runs", {"repo_url": url, "branch": "main", "quantapilot_yaml_path": "hostile.yml"})
    assert code == 202, body
    final = await api.wait_state(body["run_id"], "failed", "completed", "waiting_for_gate")
    assert refs(url) == before  # the victim's docs branch untouched
    assert final["state"] == "failed" and final["error"]["code"] == "CONFIG_INVALID", final
    assert "namespace" in final["error"]["message"]
    code, _ = await api.decide(victim, "anchor", True)
    assert code == 200
    assert (await api.wait_state(victim, "completed"))["state"] == "completed"


@pytest.mark.usefixtures("worker")
async def test_branches_a_new_docs_branch_outside_the_namespace_is_created(api: Api, tmp_path: Path) -> None:
    url = make_remote(tmp_path, {"README.md": "# x\n", "quantapilot.yml": "version: 1\ndocs: {branch: docs-site}\n"})
    code, body = await api.post("/v1/runs", {"repo_url": url, "branch": "main"})
    assert code == 202, body
    status = await api.wait_gate(body["run_id"], "anchor")
    assert status["docs_branch"] == "docs-site" and "docs-site" in remote_branches(url), status
    code, _ = await api.decide(body["run_id"], "anchor", True)
    assert code == 200
    assert (await api.wait_state(body["run_id"], "completed"))["state"] == "completed"
