"""models.qa end to end: the qa model reviews the dev model's diff before the milestone's gate (loopback model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from quantapilot.settings import Settings
from tests.e2e.test_model_steps import new_file_diff
from tests.llmserver import ChatServer, reply
from tests.review.support import Review, active_content, page
from tests.support import Api, make_remote, remote_file

KEY = "sk-e2e-qa-model-key-1b8c6a0e"
YML = """\
version: 1
models:
  dev: {model: dev-model}
  qa: {model: qa-model, temperature: 0.0}
policies: {merge: squash, gates: ['-first_merge']}
milestones:
  - id: M-001
    title: Greet the world
    criteria: [greeting.txt says hello world]
    gate: true
    steps:
      - {name: impl, prompt: "Create greeting.txt containing the line 'hello world'."}
"""
DIFF = new_file_diff("greeting.txt", "hello world")


@pytest.fixture
def model_settings(settings: Settings, llm: ChatServer) -> Settings:
    return settings.model_copy(
        update={
            "command_repo_patterns": ["file://*"],
            "model_base_url": llm.base_url,
            "model_api_key": SecretStr(KEY),
        }
    )


@pytest.mark.usefixtures("model_worker")
async def test_model_qa_reviews_the_diff_before_the_gate(model_api: Api, llm: ChatServer, tmp_path: Path) -> None:
    api = model_api
    llm.script(
        reply(f"```diff\n{DIFF}```", completion_tokens=20),
        reply(
            "VERDICT: request_changes\nThe file lacks a trailing explanation. <img src=x onerror=alert(1)>",
            completion_tokens=12,
        ),
    )
    url = make_remote(tmp_path, {"README.md": "# Greeter\n", "quantapilot.yml": YML})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    await api.decide(run_id, "anchor", True)
    waiting = await api.wait_gate(run_id, "M-001", timeout=90)
    assert llm.invalid == [] and len(llm.requests) == 2
    review_request = llm.requests[1].body
    assert review_request["model"] == "qa-model" and review_request["temperature"] == 0.0
    user = review_request["messages"][1]["content"]
    assert "+hello world" in user and "greeting.txt says hello world" in user and KEY not in user
    milestone = waiting["milestones"][0]
    assert [(c["role"], c["outcome"]) for c in milestone["model_calls"]] == [
        ("dev", "applied"),
        ("qa", "request_changes"),
    ]
    assert "lacks a trailing explanation" in milestone["model_calls"][1]["answer"]
    gate = next(g for g in waiting["gates"] if g["name"] == "M-001")
    assert gate["description"].endswith("QA review by qa-model: request changes (see the milestone's model calls).")
    assert waiting["usage"]["calls"] == 2 and waiting["usage"]["steps"]["M-001/qa"] > 0
    # The review page shows both calls with what they were asked and answered, the model's diff, all escaped.
    code, link = await api.post(f"/v1/runs/{run_id}/gates/M-001/links", {})
    assert code == 201, link
    code, html, _ = await page(api.client, Review(run_id, link["url"]).path_and_query)
    assert code == 200, html
    assert '<table id="model-calls">' in html
    assert "dev, <code>dev-model</code></td><td>applied</td>" in html
    assert "qa, <code>qa-model</code></td><td>request_changes</td>" in html
    assert "+hello world" in html and "Create greeting.txt containing the line" in html
    assert "lacks a trailing explanation. &lt;img src=x onerror=alert(1)&gt;" in html
    assert active_content(html) == []
    # Advice only: the people at the gate decide.
    await api.decide(run_id, "M-001", True, "fine as it is")
    final = await api.wait_state(run_id, "completed", "failed", timeout=90)
    assert final["state"] == "completed", final
    assert remote_file(url, "main", "greeting.txt") == "hello world\n"
