"""The review page of a milestone gate: the milestone's steps (commands, exit codes, output tails) and its diff."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.review.support import Review, active_content, form_fields, page, post_form, repo_files, trigger
from tests.support import make_remote
from tests.webhook_e2e.conftest import StackFactory

BASE = "http://review.example.test:8443"
# M-001's steps print recognisable output (one line of it hostile HTML); its gate is the milestone's own.
MILESTONE = """\
version: 1
policies: {gates: ['-first_merge']}
milestones:
  - id: M-001
    title: Add a changelog
    gate: true
    steps:
      - {name: impl, run: "printf 'v1 notes\\\\n' > CHANGELOG.md && echo wrote-the-changelog", timeout_s: 30}
      - {name: test, run: "test -s CHANGELOG.md && echo '<b>checked</b> tail-line'", timeout_s: 30}
"""


def row(html: str, step: str) -> str:
    """The steps table row of one step."""
    match = re.search(rf"<tr><td>{step}</td>.*?</tr>", html, re.S)
    assert match, f"no row for step {step}"
    return match.group(0)


@pytest.mark.slow
async def test_review_milestone_gate_shows_steps_with_exit_codes_output_and_diff(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    # The commands are this test's own: they run unsandboxed (no bubblewrap needed); the sandbox has its own tests.
    stack = await make_stack(public_base_url=BASE, command_repo_patterns=["file://*"], command_sandbox="none")
    api = stack.api
    run_id = await trigger(api, make_remote(tmp_path, repo_files(tmp_path, yml=MILESTONE)))
    await api.decide(run_id, "anchor", True, "docs ok")
    status = await api.wait_gate(run_id, "M-001")
    assert [s["exit_code"] for s in status["milestones"][0]["steps"]] == [0, 0], status["milestones"]

    code, body = await api.post(f"/v1/runs/{run_id}/gates/M-001/links", {})
    assert code == 201, body
    review = Review(run_id, body["url"])
    code, html, headers = await page(api.client, review.path_and_query)
    assert code == 200, html
    assert headers["Cache-Control"] == "no-store"
    assert "Milestone M-001: Add a changelog" in html
    # Each step: its command, its exit code and the tail of its output, escaped.
    impl, check = row(html, "impl"), row(html, "test")
    assert "echo wrote-the-changelog</code>" in impl
    assert '<td class="exit">0</td>' in impl and "wrote-the-changelog\n" in impl
    assert '<td class="exit">0</td>' in check and "&lt;b&gt;checked&lt;/b&gt; tail-line" in check
    assert active_content(html) == [] and "<b>checked</b>" not in html
    # The milestone branch's diff: the file it added with its counts, and the patch.
    assert 'id="files"' in html and "<code>CHANGELOG.md</code>" in html
    assert re.search(r"<code>CHANGELOG.md</code></td><td class=\"add\">1</td><td class=\"del\">0</td>", html), html
    assert '<span class="add">+v1 notes</span>' in html
    # Not the anchor's page: no generated documentation on it.
    assert 'id="page-list"' not in html

    fields = form_fields(html)
    decision = f"/ui/runs/{run_id}/gates/M-001/decision"
    code, text = await post_form(api.client, decision, {**fields, "decision": "approve", "reason": "steps pass"})
    assert code == 200, text
    status = await api.wait_state(run_id, "completed")
    gate = next(g for g in status["gates"] if g["name"] == "M-001")
    assert (gate["status"], gate["source"], gate["reason"]) == ("approved", "link", "steps pass")
