"""The QA review's prompt and verdict (models.qa)."""

from __future__ import annotations

import pytest

from quantapilot.llm.review_prompts import build_review_messages, parse_verdict


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        ("VERDICT: approve\nLooks right.", "approve"),
        ("\n  **Verdict:** Approved\n", "approve"),
        ("verdict: request_changes\nMissing test.", "request_changes"),
        ("VERDICT: request changes", "request_changes"),
        ("I would approve this.\nVERDICT: approve", "comment"),  # the verdict belongs on the first line
        ("", "comment"),
    ],
)
def test_review_verdict_is_read_from_the_first_line(answer: str, verdict: str) -> None:
    assert parse_verdict(answer) == verdict


def test_review_prompt_has_the_milestone_the_diff_and_the_test_tail_without_secrets() -> None:
    system, user = build_review_messages(
        milestone_id="M-001",
        title="Greet",
        criteria=["says hello"],
        prompt="Write greeting.txt",
        diff="+hello sk-secret-0123456789",
        test_output="x" * 5000 + "END",
        secrets=["sk-secret-0123456789"],
    )
    assert "VERDICT: approve" in system.content
    assert "says hello" in user.content and "+hello [redacted]" in user.content
    assert user.content.count("x") < 4100 and "END" in user.content
