"""A repository run on the GitHub forge (REST contract server on loopback): PR creation that keeps failing
exhausts the step's attempts and pauses the run (budget_exceeded); raising the attempts and resuming finishes it."""

from __future__ import annotations

from pathlib import Path

from quantapilot.settings import Settings
from tests.conftest import ApiFactory
from tests.forges.conftest import serve
from tests.forges.contracts import ContractState, github_app
from tests.support import make_remote


async def test_github_run_attempts_exhausted_pause_then_budget_and_resume(
    make_api: ApiFactory, settings: Settings, client, tmp_path: Path
) -> None:
    from worker import build_worker

    owner_dir = tmp_path / "octo"
    owner_dir.mkdir()
    url = make_remote(owner_dir, {"README.md": "# on github\n"}, name="hello")
    state = ContractState(owner="octo", repo="hello", token="gh-test-token", bare=Path(url.removeprefix("file://")))
    # Every attempt of the first PR creation answers 502 (three attempts by default).
    state.fail_next = [502, 502, 502]
    async with serve(github_app(state)) as gh_url:
        run_settings = settings.model_copy(
            update={"default_forge": "github", "github_api_url": gh_url, "github_token": "gh-test-token"}
        )
        api = await make_api(run_settings)
        async with build_worker(client, run_settings):
            _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
            run_id = body["run_id"]
            paused = await api.wait_state(run_id, "paused", timeout=90)
            assert paused["paused_reason"] == "budget_exceeded"
            assert paused["current_step"] == "open_pr:docs"
            code, raised = await api.post(f"/v1/runs/{run_id}/budget", {"extra_attempts": 2})
            assert code == 200, raised
            code, _ = await api.post(f"/v1/runs/{run_id}/resume")
            assert code == 200
            await api.wait_gate(run_id, "anchor")
            await api.decide(run_id, "anchor", True)
            final = await api.wait_state(run_id, "completed")
    assert state.violations == []
    assert [p["state"] for p in final["pull_requests"]] == ["merged"]
    assert final["pull_requests"][0]["url"].endswith("/octo/hello/pull/1")
    paths = [(method, path.split("?")[0]) for method, path in state.requests]
    assert ("POST", "/repos/octo/hello/pulls") in paths
    assert ("PUT", "/repos/octo/hello/pulls/1/merge") in paths
    assert len(state.pulls) == 1
    kinds = [e["type"] for e in await api.events(run_id)]
    assert kinds.count("run.paused") == 1
    assert kinds.count("run.resumed") == 1
