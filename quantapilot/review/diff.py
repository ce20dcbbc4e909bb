"""A pull request's diff as the review page shows it: files with +/- counts and the patch, computed with git.

Read from the run's worktree (``<QP_WORKDIR>/<workspace>/<run_id>/repo``), where the worker keeps the clone while
the run waits at a gate; the API process sees it when it shares the work directory with the worker (``qp up``,
one host). Every byte is the repository's, so the page escapes it; refs are resolved to commit ids before they
reach ``git diff`` (a branch name is never read as an option), and no external diff or textconv driver runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from quantapilot.forges.gitops import GitError, git

#: The patch shown is cut after this many characters (the file list is always complete).
MAX_PATCH_CHARS: Final = 300_000
MAX_FILES: Final = 2000
_DIFF_FLAGS: Final = ("--no-ext-diff", "--no-textconv", "--no-color", "--no-renames")


@dataclass(frozen=True, slots=True)
class FileChange:
    """One file of a diff (``added``/``removed`` are None for a binary file)."""

    path: str
    added: int | None
    removed: int | None


@dataclass(frozen=True, slots=True)
class Diff:
    """A diff between two commits, or why there is none to show."""

    base: str
    head: str
    files: list[FileChange] = field(default_factory=list)
    patch: str = ""
    truncated: bool = False
    unavailable: str | None = None

    @property
    def added(self) -> int:
        """Lines added in all text files."""
        return sum(f.added or 0 for f in self.files)

    @property
    def removed(self) -> int:
        """Lines removed in all text files."""
        return sum(f.removed or 0 for f in self.files)


def run_worktree(workdir: Path, workspace: str, run_id: str) -> Path:
    """The run's clone on this host (as :meth:`quantapilot.runs.worktree.Worktrees.path` lays it out)."""
    return workdir / workspace / run_id / "repo"


async def _commit(repo: Path, *candidates: str) -> str | None:
    for ref in candidates:
        if not ref:
            continue
        result = await git(
            "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}", cwd=repo, check=False
        )
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
    return None


def _numstat(text: str) -> list[FileChange]:
    files: list[FileChange] = []
    for line in text.splitlines()[:MAX_FILES]:
        added, _, rest = line.partition("\t")
        removed, _, path = rest.partition("\t")
        if not path:
            continue
        files.append(
            FileChange(
                path=path,
                added=int(added) if added.isdigit() else None,
                removed=int(removed) if removed.isdigit() else None,
            )
        )
    return files


async def branch_diff(repo: Path, *, base: str, head: str) -> Diff:
    """The diff of ``head`` against ``base`` in the clone at ``repo`` (local branches first, then ``origin/``).

    Never raises for a missing clone or ref: the result says what is unavailable.
    """
    if not (repo / ".git").exists():
        return Diff(
            base=base, head=head, unavailable="the run's worktree is not on this host (the run moved on or ended)"
        )
    try:
        base_sha = await _commit(repo, f"refs/remotes/origin/{base}", f"refs/heads/{base}")
        head_sha = await _commit(repo, f"refs/heads/{head}", f"refs/remotes/origin/{head}")
        if base_sha is None or head_sha is None:
            missing = base if base_sha is None else head
            return Diff(base=base, head=head, unavailable=f"branch {missing} is not in the run's worktree")
        stat = await git("-c", "core.quotepath=off", "diff", "--numstat", *_DIFF_FLAGS, base_sha, head_sha, cwd=repo)
        patch = await git("-c", "core.quotepath=off", "diff", *_DIFF_FLAGS, base_sha, head_sha, cwd=repo)
    except GitError as exc:
        return Diff(base=base, head=head, unavailable=f"git could not compute the diff ({exc.returncode})")
    text = patch.stdout
    return Diff(
        base=base,
        head=head,
        files=_numstat(stat.stdout),
        patch=text[:MAX_PATCH_CHARS],
        truncated=len(text) > MAX_PATCH_CHARS,
    )
