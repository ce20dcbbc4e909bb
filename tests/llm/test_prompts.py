"""What a milestone's model is shown: title, criteria, the plan, the files the milestone names, never secrets."""

from __future__ import annotations

from pathlib import Path

from quantapilot.llm.prompts import Milestone, build_messages, estimate_tokens, mask, relevant_files
from quantapilot.llm.provider import ChatMessage
from quantapilot.repos.files import open_repo_files
from tests.support import make_remote

KEY = "sk-prompt-test-key-9a8b7c6d"
FILES = {
    "README.md": "# Greeter\n",
    "src/greeter/hello.py": "def hello() -> str:\n    return 'hello'\n",
    "src/other/hello.py": "def hello() -> str:\n    return 'other'\n",
    "src/greeter/config.py": f"API_KEY = '{KEY}'\n",
    ".env": "SECRET=do-not-show-this-value\n",
    "deploy/server.pem": "-----BEGIN PRIVATE KEY-----\n",
}


def _repo(tmp_path: Path) -> Path:
    make_remote(tmp_path, FILES)
    return tmp_path / "project-seed"


def _user(tmp_path: Path, milestone: Milestone, **kw: object) -> str:
    with open_repo_files(_repo(tmp_path)) as files:
        system, user = build_messages(
            milestone, files, kind=str(kw.pop("kind", "impl")), file_bytes=4096, total_bytes=65536, secrets=[KEY]
        )
    assert system.role == "system" and user.role == "user"
    return user.content


def test_prompt_relevant_files_are_the_named_ones_never_secret_files(tmp_path: Path) -> None:
    with open_repo_files(_repo(tmp_path)) as files:
        # By path, or by a file name only one file has; hello.py is two files' name, .env a secret's.
        text = "Change src/greeter/hello.py and config.py, not .env or server.pem or hello.py"
        assert relevant_files(files, text) == ["src/greeter/hello.py", "src/greeter/config.py"]


def test_prompt_has_the_milestone_plan_files_and_feedback_and_masks_secrets(tmp_path: Path) -> None:
    milestone = Milestone(
        milestone_id="M-001",
        title="Say hello world",
        criteria=["hello() returns 'hello world'"],
        prompt="Change src/greeter/hello.py; config.py holds the settings.",
        plan="1. Edit hello() in src/greeter/hello.py.",
        previous_diff="--- a/src/greeter/hello.py\n",
        feedback="AssertionError: 'hello' != 'hello world'",
    )
    user = _user(tmp_path, milestone)
    for part in (
        "# Milestone M-001: Say hello world",
        "- hello() returns 'hello world'",
        "## Plan\n1. Edit hello() in src/greeter/hello.py.",
        "## File src/greeter/hello.py\n```\ndef hello() -> str:\n    return 'hello'\n",
        "## Your previous diff",
        "AssertionError: 'hello' != 'hello world'",
        "Answer with a corrected complete diff.",
    ):
        assert part in user, part
    # The tree is shown without secret-named files; the key is masked wherever it appears.
    assert "src/other/hello.py" in user and ".env" not in user and "server.pem" not in user
    assert "do-not-show-this-value" not in user and KEY not in user and "API_KEY = '[redacted]'" in user


def test_prompt_without_named_files_shows_the_readme_and_no_feedback_sections(tmp_path: Path) -> None:
    user = _user(tmp_path, Milestone(milestone_id="M-002", title="Tidy", criteria=[], prompt="Tidy up."), kind="plan")
    assert "## File README.md\n```\n# Greeter\n" in user
    assert "## Plan" not in user and "Your previous diff" not in user and "Why it failed" not in user


def test_prompt_mask_and_estimate() -> None:
    assert mask(f"key={KEY} short=abc", [KEY, "abc", ""]) == "key=[redacted] short=abc"  # short values stay
    messages = [ChatMessage(role="user", content="x" * 300)]
    assert estimate_tokens(messages) == 300 // 3 + 4 + 3
