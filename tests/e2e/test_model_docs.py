"""Model-written documentation end to end: with models.arch the docs PR adds two pages from the (loopback) model."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from quantapilot.docs.generate import generate_docs
from quantapilot.docs.lint import lint_markdown
from quantapilot.docs.render import split_front_matter
from quantapilot.llm.spending import ModelUsage
from quantapilot.settings import Settings
from tests.llmserver import ChatServer, reply
from tests.review.support import Review
from tests.review.support import page as review_page
from tests.support import Api, git, make_remote, remote_file

KEY = "sk-e2e-docs-model-key-7d2e4b1a"
README = "# Greeter\n\nSays hello to whoever asks.\n"
MODULE = (
    '"""Greeting helpers."""\n\n\ndef greet(name: str) -> str:\n    """Say hello to ``name``."""\n    return name\n'
)
YML = """\
version: 1
models:
  arch: {model: arch-model, temperature: 0.2, max_output_tokens: 800}
policies: {gates: ['-first_merge']}
"""
OVERVIEW = "```markdown\n# Greeter\n\n## Purpose\n\nGreeter greets; `greeter.core.greet` says hello.\n```"
ARCHITECTURE = "## Components\n\n- `greeter/core.py`: the greeting function.\n"
FILES = {"README.md": README, "greeter/__init__.py": "", "greeter/core.py": MODULE}


@pytest.fixture
def model_settings(settings: Settings, llm: ChatServer) -> Settings:
    return settings.model_copy(update={"model_base_url": llm.base_url, "model_api_key": SecretStr(KEY)})


async def _approved_run(api: Api, url: str) -> dict:
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    await api.decide(run_id, "anchor", True)
    final = await api.wait_state(run_id, "completed", "failed", timeout=90)
    assert final["state"] == "completed", final
    return final


@pytest.mark.usefixtures("model_worker")
async def test_model_docs_pages_are_added_marked_and_grounded(
    model_api: Api, llm: ChatServer, engine: Engine, tmp_path: Path
) -> None:
    llm.script(reply(OVERVIEW, completion_tokens=40), reply(ARCHITECTURE, completion_tokens=30))
    with_models = make_remote(tmp_path, {**FILES, "quantapilot.yml": YML}, name="with")
    final = await _approved_run(model_api, with_models)
    assert llm.invalid == []
    assert [r.status for r in llm.requests] == [200, 200]
    for request in llm.requests:
        body = request.body
        assert body["model"] == "arch-model" and body["temperature"] == 0.2
        assert body["max_completion_tokens"] == 800
        user = body["messages"][1]["content"]
        # Grounded in the generated pages: the README (in the overview), the file tree, the API reference.
        assert "Says hello to whoever asks." in user
        assert "### Page file-tree" in user and "greeter/core.py" in user
        assert "### Page api/index" in user and "greet(name: str) -> str" in user
        assert KEY not in str(body)
    assert "overview" in llm.requests[0].body["messages"][1]["content"]
    assert "architecture" in llm.requests[1].body["messages"][1]["content"]

    overview = remote_file(with_models, "main", "docs/model/overview.md")
    architecture = remote_file(with_models, "main", "docs/model/architecture.md")
    assert overview is not None and architecture is not None
    meta, text = split_front_matter(overview)
    assert meta["generated_by"] == "arch-model" and meta["generator"] == "quantapilot-docgen"
    assert "## Purpose" in text and "```markdown" not in text and "\n# Greeter\n" not in text
    assert "- `greeter/core.py`: the greeting function." in architecture
    assert lint_markdown("overview", overview) == [] and lint_markdown("architecture", architecture) == []
    # The extracted pages carry no generated_by.
    index = remote_file(with_models, "main", "docs/index.md")
    assert index is not None and "generated_by" not in index

    calls = final["model_calls"]
    assert [(c["step"], c["role"], c["outcome"]) for c in calls] == [
        ("doc/overview", "arch", "written"),
        ("doc/architecture", "arch", "written"),
    ]
    assert calls[0]["output_tokens"] == 40 and calls[1]["output_tokens"] == 30
    usage = final["usage"]
    assert usage["calls"] == 2
    assert usage["tokens"] == usage["steps"]["doc"] == sum(c["input_tokens"] + c["output_tokens"] for c in calls)
    # Both calls are in model_usage too (what limits.tokens_per_day counts for the workspace), with the same figures.
    with Session(engine) as session:
        rows = session.exec(
            select(ModelUsage).where(col(ModelUsage.run_id) == final["run_id"]).order_by(col(ModelUsage.created_at))
        ).all()
    assert [(r.workspace, r.step, r.role, r.model) for r in rows] == [
        ("default", "doc/overview", "arch", "arch-model"),
        ("default", "doc/architecture", "arch", "arch-model"),
    ]
    assert [(r.input_tokens, r.output_tokens) for r in rows] == [(c["input_tokens"], c["output_tokens"]) for c in calls]

    # The extracted pages are byte for byte what the generator alone makes of the documented commit.
    clone = tmp_path / "clone"
    git("clone", "--quiet", with_models.removeprefix("file://"), str(clone), cwd=tmp_path)
    first = git("rev-list", "--max-parents=0", "HEAD", cwd=clone).strip()
    pages = generate_docs(
        clone,
        project="with",
        version=f"git-{first[:12]}",
        updated=final["created_at"][:10],
        owners=["quantapilot"],
        commit=first,
    )
    assert len(pages) == 6  # index, file-tree, guides, api/index, api/greeter, api/greeter.core
    for page in pages:
        assert remote_file(with_models, "main", page.path) == page.markdown, page.path


@pytest.mark.usefixtures("model_worker")
async def test_model_docs_budget_pauses_then_raise_and_resume(model_api: Api, llm: ChatServer, tmp_path: Path) -> None:
    api = model_api
    llm.script(reply(OVERVIEW, completion_tokens=20), reply(ARCHITECTURE, completion_tokens=20))
    yml = YML + "steps:\n  - {name: doc, tokens_budget: 50}\n"
    url = make_remote(tmp_path, {**FILES, "quantapilot.yml": yml})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    paused = await api.wait_state(run_id, "paused", timeout=60)
    assert paused["paused_reason"] == "budget_exceeded"
    assert llm.requests == []  # the call that would not fit was never made
    event = await api.wait_event(run_id, "run.paused")
    assert event["data"]["limit"] == "steps.tokens_budget" and event["data"]["needed"] > 50
    code, raised = await api.post(f"/v1/runs/{run_id}/budget", {"tokens": 100_000})
    assert code == 200, raised
    code, _ = await api.post(f"/v1/runs/{run_id}/resume")
    assert code == 200
    await api.wait_gate(run_id, "anchor", timeout=60)
    # The anchor's review page lists the two page calls behind the documentation it approves.
    code, link = await api.post(f"/v1/runs/{run_id}/gates/anchor/links", {})
    assert code == 201, link
    code, html, _ = await review_page(api.client, Review(run_id, link["url"]).path_and_query)
    assert code == 200, html
    assert '<table id="model-calls">' in html
    assert "doc/overview (try 1)" in html and "doc/architecture (try 1)" in html
    assert "arch, <code>arch-model</code></td><td>written</td>" in html
    await api.decide(run_id, "anchor", True)
    final = await api.wait_state(run_id, "completed", "failed", timeout=90)
    assert final["state"] == "completed", final
    assert len(llm.ok_requests) == 2
    assert remote_file(url, "main", "docs/model/architecture.md") is not None
    assert final["usage"]["granted_tokens"] == 100_000 and final["usage"]["steps"]["doc"] > 50


@pytest.mark.usefixtures("model_worker")
async def test_model_docs_empty_answer_fails_the_run_for_good(model_api: Api, llm: ChatServer, tmp_path: Path) -> None:
    llm.script(reply("   "))
    url = make_remote(tmp_path, {**FILES, "quantapilot.yml": YML})
    _, body = await model_api.post("/run", {"repo_url": url, "branch": "main"})
    final = await model_api.wait_state(body["run_id"], "failed", "completed", timeout=60)
    assert final["state"] == "failed" and final["error"]["code"] == "MODEL_ANSWER_REJECTED", final
    assert len(llm.requests) == 1  # not retried
