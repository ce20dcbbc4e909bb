"""Which repository URLs a run may clone (the activity's own check, behind the API's)."""

from __future__ import annotations

import pytest

from quantapilot.runs.checks import repo_url_problem

PATTERNS = ["https://*", "ssh://*", "git@*:*"]


@pytest.mark.parametrize(
    "url",
    ["https://github.com/org/repo.git", "ssh://git@github.com/org/repo.git", "git@github.com:org/repo.git"],
)
def test_repo_urls_allowed(url: str) -> None:
    assert repo_url_problem(url, PATTERNS) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://x-access-token:ghp_abc@github.com/org/repo.git", "credentials"),
        ("https://ghp_abc@github.com/org/repo.git", "credentials"),
        ("ssh://git:secret@github.com/org/repo.git", "credentials"),
        ("ext::sh -c touch% /tmp/pwned", "transport"),
        ("-uhttps://github.com/x", "transport"),
        ("file:///etc", "patterns"),
        ("/srv/git/repo.git", "patterns"),
        ("https://github.com/org/re po", "malformed"),
    ],
)
def test_repo_urls_refused(url: str, reason: str) -> None:
    problem = repo_url_problem(url, PATTERNS)
    assert problem is not None
    assert reason in problem
