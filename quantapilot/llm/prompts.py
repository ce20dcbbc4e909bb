"""The prompts of model steps, built from the milestone and the repository (read as data, never run).

Only what the repository and the milestone say goes in: no setting, no environment variable, no credential of the
service. Files whose names suggest secrets (``.env``, keys, certificates) are left out even when the milestone names
them, and any text equal to a secret the caller passes (the model API key, forge tokens) is masked.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from quantapilot.llm.provider import ChatMessage
from quantapilot.repos.files import EntryKind, FileRefusedError, RepoFiles, RepoReadError

SECRET_NAMES = (".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa*", "id_ed25519*", "*.keystore", ".netrc")
TREE_LIMIT = 400
FEEDBACK_CHARS = 4000

SYSTEM_IMPL = (
    "You are the development agent of an automated software factory. You change a git repository to meet a "
    "milestone. Answer with one unified diff (the format of `git diff`) against the files as shown, inside a "
    "```diff fenced block, and nothing that is not part of the change. Paths are relative to the repository root; "
    "never touch .git, never create symbolic links, never write outside the repository. When a previous diff "
    "failed, answer with a complete new diff against the original files, not against your previous diff."
)
SYSTEM_PLAN = (
    "You are the planning agent of an automated software factory. Write a short, concrete implementation plan "
    "for the milestone: the files to change and what to change in each, and how the tests will show it works."
)


@dataclass(frozen=True, slots=True)
class Milestone:
    """What the model is told about the milestone."""

    milestone_id: str
    title: str
    criteria: Sequence[str]
    prompt: str
    plan: str | None = None
    previous_diff: str | None = None
    feedback: str | None = None


def _secret_named(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SECRET_NAMES)


def relevant_files(files: RepoFiles, text: str) -> list[str]:
    """Tracked regular files the milestone text names (by path, or by a file name that is unique), in order."""
    paths = [p for p in files.paths(EntryKind.FILE) if not _secret_named(p)]
    by_name: dict[str, list[str]] = {}
    for p in paths:
        by_name.setdefault(p.rsplit("/", 1)[-1], []).append(p)
    words = set(re.findall(r"[A-Za-z0-9_./-]+", text))
    chosen = [p for p in paths if p in words]
    chosen += [found[0] for name, found in by_name.items() if name in words and len(found) == 1]
    return list(dict.fromkeys(chosen))


def mask(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret (of 8 characters or more) in ``text`` by ``[redacted]``."""
    for secret in secrets:
        if secret and len(secret) >= 8:
            text = text.replace(secret, "[redacted]")
    return text


def build_messages(
    milestone: Milestone,
    files: RepoFiles,
    *,
    kind: str,
    file_bytes: int,
    total_bytes: int,
    secrets: Iterable[str] = (),
) -> list[ChatMessage]:
    """The system and user messages of one plan or impl call."""
    named = " ".join([milestone.title, milestone.prompt, *milestone.criteria])
    tree = [p for p in files.paths() if not _secret_named(p)]
    parts = [f"# Milestone {milestone.milestone_id}: {milestone.title}", "", "## Task", milestone.prompt]
    if milestone.criteria:
        parts += ["", "## Acceptance criteria", *(f"- {c}" for c in milestone.criteria)]
    if milestone.plan:
        parts += ["", "## Plan", milestone.plan]
    parts += ["", "## Repository files", *tree[:TREE_LIMIT]]
    if len(tree) > TREE_LIMIT:
        parts.append(f"... and {len(tree) - TREE_LIMIT} more")
    budget = total_bytes
    for path in relevant_files(files, named) or [p for p in ("README.md",) if p in files.entries]:
        try:
            body = files.read_text(path)
        except (FileRefusedError, RepoReadError):
            continue
        body = body[:file_bytes]
        if len(body) > budget:
            break
        budget -= len(body)
        parts += ["", f"## File {path}", "```", body, "```"]
    if milestone.previous_diff is not None:
        parts += ["", "## Your previous diff", "```diff", milestone.previous_diff, "```"]
    if milestone.feedback is not None:
        parts += ["", "## Why it failed (output tail)", "```", milestone.feedback[-FEEDBACK_CHARS:], "```"]
        parts += ["", "Answer with a corrected complete diff."]
    system = SYSTEM_PLAN if kind == "plan" else SYSTEM_IMPL
    user = mask("\n".join(parts), secrets)
    return [ChatMessage(role="system", content=system), ChatMessage(role="user", content=user)]


def estimate_tokens(messages: Sequence[ChatMessage]) -> int:
    """A cautious token count before the call (about four characters a token, plus the framing of each message)."""
    return sum(len(m.content) // 3 + 4 for m in messages) + 3
