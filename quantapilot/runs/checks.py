"""What a repository run checks before it works: the repository URL, and its quantapilot.yml."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from urllib.parse import urlsplit

from quantapilot.docs.write import default_output_folder
from quantapilot.errors import ErrorCode
from quantapilot.repos.config import QuantapilotConfig
from quantapilot.repos.config_loader import MAX_CONFIG_BYTES, ConfigError, load_config
from quantapilot.repos.files import FileRefusedError, RepoReadError, open_repo_files
from quantapilot.repos.policy import docs_branch_problem, with_self_approval_floor
from quantapilot.repos.worktree import UnsafePathError, normalise_path
from quantapilot.runs.errors import StepError, permanent


def repo_url_problem(url: str, patterns: list[str]) -> str | None:
    """Tell why a repository URL is refused, or None when it is allowed.

    Credentials in the URL and git's ``ext::`` transport are always refused; anything else must match one of the
    operator's fnmatch patterns (so ``file://`` and local paths only work when a pattern admits them).
    """
    if url.startswith("-") or "::" in url.split("/", 1)[0]:
        return "transport not allowed"
    parts = urlsplit(url)
    # A password anywhere, or any user name on http(s) (where it is often a token), is a credential; the
    # user name of ssh://git@host/... is not.
    if parts.password or (parts.username and parts.scheme.lower() in ("http", "https", "ftp", "ftps")):
        return "credentials in the URL are not allowed"
    if any(ch in url for ch in "\r\n\t ") or len(url) > 2000:
        return "malformed URL"
    if not any(fnmatch.fnmatchcase(url, pattern) for pattern in patterns):
        return "URL does not match the allowed repository patterns"
    return None


def read_config_text(root: Path, commit: str | None, path: str) -> str | None:
    """The text of quantapilot.yml from the commit's objects; ``None`` when the repository has no such file.

    A link (the file, or a folder on its path), a submodule, a file over the size limit or a path leaving the
    repository ends the run with ``CONFIG_INVALID``: the file is never read through a link.
    """
    try:
        rel = normalise_path(path)
        with open_repo_files(root, commit=commit, paths=[rel], max_file_bytes=MAX_CONFIG_BYTES) as repo:
            if rel not in repo.entries and repo.link_on_path(rel) is None:
                return None
            return repo.read_text(rel)
    except (UnsafePathError, FileRefusedError) as exc:
        raise permanent(ErrorCode.CONFIG_INVALID, f"{path}: {exc.reason}") from None
    except RepoReadError as exc:
        raise StepError(ErrorCode.TOOL_FAILURE, str(exc), retryable=True) from None


def run_config(
    text: str | None,
    *,
    source: str,
    run_id: str,
    repo_url: str,
    allow_self_approval: bool | None,
    command_repo_patterns: list[str],
) -> tuple[QuantapilotConfig, bool]:
    """Validate a run's quantapilot.yml (documented defaults when the file is absent) against the run.

    Args:
        text: The file's text, or None when the repository has none.
        source: The file's path, for messages.
        run_id: The run (its docs branch must stay in the run's namespace unless it is only created).
        repo_url: The repository (milestone commands only run where ``QP_COMMAND_REPO_PATTERNS`` allows).
        allow_self_approval: The run's ``QP_ALLOW_SELF_APPROVAL``, a floor under every gate; None: no floor.
        command_repo_patterns: Repositories allowed to run milestone commands.

    Returns:
        The configuration, and whether it has milestone commands (which need the sandbox).

    Raises:
        StepError: ``CONFIG_INVALID`` or ``COMMANDS_NOT_ALLOWED``.
    """
    try:
        config = load_config(text, source=source)
    except ConfigError as exc:
        raise permanent(ErrorCode.CONFIG_INVALID, str(exc)) from None
    if config.gates.tests_required:
        untested = [m.id for m in config.milestones if not any(s.name == "test" and s.run for s in m.steps)]
        if untested:
            raise permanent(
                ErrorCode.CONFIG_INVALID,
                f"gates.tests_required is on but milestones {', '.join(untested)} have no `test` step",
            )
    branch_problem = docs_branch_problem(config, run_id)
    if branch_problem:
        raise permanent(ErrorCode.CONFIG_INVALID, branch_problem)
    if allow_self_approval is not None:
        config = with_self_approval_floor(config, allowed=allow_self_approval)
    has_commands = any(step.run for m in config.milestones for step in m.steps)
    allowed = any(fnmatch.fnmatchcase(repo_url, p) for p in command_repo_patterns)
    if has_commands and not allowed:
        raise permanent(
            ErrorCode.COMMANDS_NOT_ALLOWED,
            "quantapilot.yml has milestone commands but this repository is not allowed to run commands",
        )
    return config, has_commands


def with_docs_folder(config: QuantapilotConfig, root: Path, commit: str | None) -> QuantapilotConfig:
    """The configuration with its documentation folder settled against the repository.

    An ``output_folder`` given in quantapilot.yml stands as written; without one the folder is ``docs``, or
    ``docs/quantapilot`` when the repository's ``docs/`` holds files of its own
    (:func:`quantapilot.docs.write.default_output_folder`). Call it on the configuration as loaded: whether the
    file named the folder is known only before the configuration is serialized.

    Args:
        config: The configuration from :func:`run_config`.
        root: The run's work tree.
        commit: The run's commit (its objects are read, never the work tree).

    Raises:
        StepError: ``TOOL_FAILURE`` (retryable) when git cannot list the commit.
    """
    if "output_folder" in config.docs.model_fields_set:
        return config
    try:
        with open_repo_files(root, commit=commit) as repo:
            folder = default_output_folder(repo)
    except RepoReadError as exc:
        raise StepError(ErrorCode.TOOL_FAILURE, str(exc), retryable=True) from None
    if folder == config.docs.output_folder:
        return config
    return config.model_copy(update={"docs": config.docs.model_copy(update={"output_folder": folder})})
