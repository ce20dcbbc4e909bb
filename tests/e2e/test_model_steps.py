"""Model steps end to end: a milestone with `prompt:` gets its diff from the (loopback) model, tests it, retries."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from quantapilot.settings import Settings
from tests.llmserver import ChatServer, rate_limited, reply
from tests.support import Api, make_remote, remote_branches, remote_file, require_bwrap

KEY = "sk-e2e-model-key-5f1c2a9b"
README = "# Greeter\n\nSays hello.\n"

YML = """\
version: 1
models:
  dev: {model: dev-model, temperature: 0.1, max_output_tokens: 2000}
policies: {merge: squash, gates: ['-first_merge']}
milestones:
  - id: M-001
    title: Greet the world
    criteria: [greeting.txt says hello world]
    gate: false
    steps:
      - {name: impl, prompt: "Create greeting.txt containing the line 'hello world'.", retries: 2}
      - {name: test, run: "grep -qx 'hello world' greeting.txt", timeout_s: 30}
"""


def new_file_diff(path: str, line: str) -> str:
    return f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n@@ -0,0 +1 @@\n+{line}\n"


@pytest.fixture
def model_settings(settings: Settings, llm: ChatServer) -> Settings:
    require_bwrap()
    return settings.model_copy(
        update={
            "command_repo_patterns": ["file://*"],
            "model_base_url": llm.base_url,
            "model_api_key": SecretStr(KEY),
        }
    )


@pytest.mark.usefixtures("model_worker")
async def test_model_step_diff_passes_tests_on_second_try_after_a_429(
    model_api: Api, llm: ChatServer, tmp_path: Path
) -> None:
    api = model_api
    llm.script(
        rate_limited("1"),
        reply(f"Here it is:\n```diff\n{new_file_diff('greeting.txt', 'hello word')}```", completion_tokens=30),
        reply(f"```diff\n{new_file_diff('greeting.txt', 'hello world')}```", completion_tokens=25),
    )
    url = make_remote(tmp_path, {"README.md": README, "quantapilot.yml": YML})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    await api.decide(run_id, "anchor", True)
    final = await api.wait_state(run_id, "completed", "failed", timeout=90)
    assert final["state"] == "completed", final
    assert llm.invalid == []
    # The 429 was retried by the activity (one request each), and the model saw its failure the second time.
    assert [r.status for r in llm.requests] == [429, 200, 200]
    first, second = (r.body for r in llm.ok_requests)
    assert first["model"] == "dev-model" and first["temperature"] == 0.1
    assert first["messages"][0]["role"] == "system"
    user1, user2 = first["messages"][1]["content"], second["messages"][1]["content"]
    assert "Greet the world" in user1 and "greeting.txt says hello world" in user1 and "README.md" in user1
    assert "Your previous diff" not in user1
    assert "+hello word" in user2 and "exited with 1" in user2 and "grep -qx" in user2
    for r in llm.requests:
        assert KEY not in str(r.body)  # the key travels in the header only
    # The PR's diff is the model's, merged with passing tests.
    assert remote_file(url, "main", "greeting.txt") == "hello world\n"
    milestone = final["milestones"][0]
    assert milestone["status"] == "completed"
    assert [c["outcome"] for c in milestone["model_calls"]] == ["tests_failed", "applied"]
    assert milestone["model_calls"][1]["diff"] == new_file_diff("greeting.txt", "hello world")
    assert "exited with 1" in milestone["model_calls"][0]["feedback"]
    assert [(s["name"], s["exit_code"]) for s in milestone["steps"]] == [("impl", 0), ("test", 0)]
    usage = final["usage"]
    assert usage["calls"] == 2 and usage["steps"]["M-001/impl"] == usage["tokens"]
    assert usage["tokens"] == sum(c["input_tokens"] + c["output_tokens"] for c in milestone["model_calls"])
    assert milestone["model_calls"][0]["output_tokens"] == 30
    assert any(b.startswith(f"quantapilot/{run_id}/") for b in remote_branches(url))


@pytest.mark.usefixtures("model_worker")
async def test_model_step_budget_pauses_then_raise_and_resume(model_api: Api, llm: ChatServer, tmp_path: Path) -> None:
    api = model_api
    llm.script(reply(f"```diff\n{new_file_diff('greeting.txt', 'hello world')}```", completion_tokens=20))
    yml = YML.replace("policies:", "budgets: {tokens: 40}\npolicies:")
    url = make_remote(tmp_path, {"README.md": README, "quantapilot.yml": yml})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    await api.decide(run_id, "anchor", True)
    paused = await api.wait_state(run_id, "paused", timeout=60)
    assert paused["paused_reason"] == "budget_exceeded"
    assert llm.requests == []  # the call that would not fit was never made
    event = await api.wait_event(run_id, "run.paused")
    assert event["data"]["limit"] == "budgets.tokens" and event["data"]["tokens_budget"] == 40
    assert event["data"]["needed"] > 40 and event["data"]["tokens_spent"] == 0
    code, raised = await api.post(f"/v1/runs/{run_id}/budget", {"tokens": 100_000})
    assert code == 200, raised
    assert raised["usage"]["granted_tokens"] == 100_000
    code, _ = await api.post(f"/v1/runs/{run_id}/resume")
    assert code == 200
    final = await api.wait_state(run_id, "completed", "failed", timeout=90)
    assert final["state"] == "completed", final
    assert len(llm.ok_requests) == 1
    assert remote_file(url, "main", "greeting.txt") == "hello world\n"
    assert final["usage"]["tokens"] > 40


@pytest.mark.usefixtures("model_worker")
async def test_model_step_diff_escaping_the_worktree_fails_the_run(
    model_api: Api, llm: ChatServer, tmp_path: Path
) -> None:
    api = model_api
    llm.script(reply(f"```diff\n{new_file_diff('../../escaped.txt', 'pwned')}```"))
    url = make_remote(tmp_path, {"README.md": README, "quantapilot.yml": YML})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    await api.decide(run_id, "anchor", True)
    final = await api.wait_state(run_id, "failed", "completed", timeout=90)
    assert final["state"] == "failed" and final["error"]["code"] == "MODEL_DIFF_REJECTED", final
    assert not list(tmp_path.rglob("escaped.txt"))
    assert len(llm.requests) == 1


@pytest.mark.usefixtures("model_worker")
async def test_model_step_usd_budget_without_a_price_refuses_to_start(model_api: Api, tmp_path: Path) -> None:
    api = model_api
    yml = YML.replace("policies:", "budgets: {tokens: 1000, usd: 1}\npolicies:")
    url = make_remote(tmp_path, {"README.md": README, "quantapilot.yml": yml})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    final = await api.wait_state(body["run_id"], "failed", timeout=60)
    assert final["error"]["code"] == "CONFIG_INVALID"
    assert "dev-model" in final["error"]["message"] and "QP_MODEL_PRICES" in final["error"]["message"]
