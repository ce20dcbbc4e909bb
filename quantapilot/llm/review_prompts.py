"""The QA model's review of a model milestone's diff (``models.qa``): its prompt, and the verdict read from it.

The review is advice for the people at the milestone's gate: it is recorded (the run status, the gate's
description) and decides nothing by itself. The reviewer answers with a first line ``VERDICT: approve`` or
``VERDICT: request_changes`` and then its reasons; an answer without such a line is a ``comment``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

from quantapilot.llm.prompts import mask
from quantapilot.llm.provider import ChatMessage

Verdict = Literal["approve", "request_changes", "comment"]

SYSTEM_REVIEW = (
    "You are the quality assurance agent of an automated software factory. You review a diff that another model "
    "wrote for a milestone, against the milestone's task and acceptance criteria and the output of its tests. "
    "Look for criteria not met, bugs, missing tests, security problems and changes outside the task. Start your "
    "answer with one line, `VERDICT: approve` or `VERDICT: request_changes`, then give your reasons briefly."
)
# Test output shown to the reviewer, from its end.
TEST_OUTPUT_CHARS = 4000

_VERDICT_RE = re.compile(r"^\W*verdict\W*:?\W*(approve|approved|request[ _-]?changes)\b", re.IGNORECASE)


def build_review_messages(
    *,
    milestone_id: str,
    title: str,
    criteria: Sequence[str],
    prompt: str,
    diff: str,
    test_output: str,
    secrets: Iterable[str] = (),
) -> list[ChatMessage]:
    """The system and user messages of one review."""
    parts = [f"# Milestone {milestone_id}: {title}", "", "## Task", prompt]
    if criteria:
        parts += ["", "## Acceptance criteria", *(f"- {c}" for c in criteria)]
    parts += ["", "## The diff", "```diff", diff, "```"]
    if test_output:
        parts += ["", "## Test output (tail)", "```", test_output[-TEST_OUTPUT_CHARS:], "```"]
    user = mask("\n".join(parts), secrets)
    return [ChatMessage(role="system", content=SYSTEM_REVIEW), ChatMessage(role="user", content=user)]


def parse_verdict(answer: str) -> Verdict:
    """The verdict of the review's first non-empty line; ``comment`` when it gives none."""
    first = next((line for line in answer.splitlines() if line.strip()), "")
    match = _VERDICT_RE.match(first.strip())
    if match is None:
        return "comment"
    return "approve" if match.group(1).lower().startswith("approve") else "request_changes"
