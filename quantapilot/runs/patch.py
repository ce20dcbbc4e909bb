"""A model's unified diff: taken out of its answer, checked as hostile input, then applied with ``git apply``.

What the check refuses (``MODEL_DIFF_REJECTED``, permanent: the same answer would be refused again):

- a path that is absolute, has a ``..`` or ``.`` segment, a backslash, a control character, or a ``.git``
  segment (any case), in any header (``diff --git``, ``---``/``+++``, rename and copy lines);
- a symbolic link or a submodule (mode ``120000`` or ``160000``), and binary patches;
- a path whose existing part in the worktree is a symbolic link (a write through it would leave the worktree);
- more bytes or files than the settings allow.

``git apply`` then applies the diff (it refuses on its own a patch that goes beyond a symbolic link); a diff that
does not apply is no attack but a wrong answer, returned as the step's output for the model to correct.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from quantapilot.errors import ErrorCode
from quantapilot.forges import gitops
from quantapilot.runs.errors import StepError, permanent

_FENCE = re.compile(r"```(?:diff|patch)?[^\n]*\n(.*?)```", re.DOTALL)
_GIT_HEADER = re.compile(r"^diff --git (\S+) (\S+)$")
_PATH_LINE = re.compile(r"^(?:---|\+\+\+) (\S+)")
_RENAME_LINE = re.compile(r"^(?:rename|copy) (?:from|to) (.+)$")
_MODE_LINE = re.compile(r"^(?:new file mode|new mode|old mode|deleted file mode|index \S+) ?(\d{6})?")
_FORBIDDEN_MODES = {"120000", "160000"}
_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class CheckedDiff:
    """A diff that passed the check, and the files it touches."""

    text: str
    files: tuple[str, ...]


def extract_diff(answer: str) -> str:
    """The diff in a model's answer: the first fenced ``diff`` block, else the answer from its first header."""
    match = _FENCE.search(answer)
    text = match.group(1) if match else answer
    for marker in ("diff --git ", "--- "):
        at = text.find(marker)
        if at == 0 or (at > 0 and text[at - 1] == "\n"):
            text = text[at:]
            break
    return text if text.endswith("\n") else text + "\n"


def _header_paths(line: str) -> list[str]:
    """The paths a header line names (none for other lines); refuses binary patches, links and submodules."""
    if m := _GIT_HEADER.match(line):
        return [m.group(1), m.group(2)]
    if m := _PATH_LINE.match(line):
        return [m.group(1)]
    if m := _RENAME_LINE.match(line):
        return [m.group(1)]
    if line.startswith(("GIT binary patch", "Binary files ")):
        raise permanent(ErrorCode.MODEL_DIFF_REJECTED, "binary patches are refused")
    mode = _MODE_LINE.match(line)
    if (mode and mode.group(1) in _FORBIDDEN_MODES) or (
        line.startswith("index ") and line.rsplit(" ", 1)[-1] in _FORBIDDEN_MODES
    ):
        raise permanent(ErrorCode.MODEL_DIFF_REJECTED, "symbolic links and submodules are refused")
    return []


def _strip_prefix(path: str) -> str | None:
    if path == "/dev/null":
        return None
    if path.startswith(("a/", "b/")):
        return path[2:]
    return path


def path_problem(path: str) -> str | None:
    """Why ``path`` (relative to the worktree) may not be touched, or None."""
    if not path or path.startswith("/") or "\\" in path or _CONTROL.search(path):
        return f"path {path!r} is not a relative POSIX path"
    for part in path.split("/"):
        if part in {"", ".", ".."}:
            return f"path {path!r} leaves the worktree"
        if part.lower() == ".git":
            return f"path {path!r} touches .git"
    return None


def check_diff(text: str, root: Path, *, max_bytes: int, max_files: int) -> CheckedDiff:
    """Check a diff against the worktree at ``root`` (see the module docstring).

    Raises:
        StepError: ``MODEL_DIFF_REJECTED`` with the reason.
    """
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise permanent(ErrorCode.MODEL_DIFF_REJECTED, f"the diff has {size} bytes, more than {max_bytes}")
    if not text.strip():
        raise permanent(ErrorCode.MODEL_DIFF_REJECTED, "the answer holds no diff")
    files: list[str] = []
    left_old = left_new = 0  # lines of the current hunk still to come: they are content, not headers
    for line in text.splitlines():
        if left_old > 0 or left_new > 0:
            if line.startswith("-"):
                left_old -= 1
            elif line.startswith("+"):
                left_new -= 1
            elif not line.startswith("\\"):
                left_old, left_new = left_old - 1, left_new - 1
            continue
        if m := _HUNK.match(line):
            # An omitted count is 1 (GNU diff's unified format).
            left_old = int(m.group(1)) if m.group(1) is not None else 1
            left_new = int(m.group(2)) if m.group(2) is not None else 1
            continue
        for raw in _header_paths(line):
            path = _strip_prefix(raw)
            if path is None:
                continue
            problem = path_problem(path)
            if problem:
                raise permanent(ErrorCode.MODEL_DIFF_REJECTED, problem)
            if path not in files:
                files.append(path)
    if not files:
        raise permanent(ErrorCode.MODEL_DIFF_REJECTED, "the answer holds no file header of a unified diff")
    if len(files) > max_files:
        raise permanent(ErrorCode.MODEL_DIFF_REJECTED, f"the diff touches {len(files)} files, more than {max_files}")
    for path in files:
        link = _link_on_the_way(root, path)
        if link:
            raise permanent(ErrorCode.MODEL_DIFF_REJECTED, f"path {path!r} goes through the symbolic link {link!r}")
    return CheckedDiff(text=text, files=tuple(files))


def _link_on_the_way(root: Path, path: str) -> str | None:
    """The first existing component of ``path`` under ``root`` that is a symbolic link (the file itself included)."""
    current = root
    walked: list[str] = []
    for part in path.split("/"):
        current = current / part
        walked.append(part)
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(info.st_mode):
            return "/".join(walked)
    return None


async def apply_diff(diff: CheckedDiff, root: Path) -> str | None:
    """Apply a checked diff to the worktree; the reason it does not apply (for the model), or None when applied.

    Raises:
        StepError: A git failure other than the patch not applying.
    """
    patch_file = root.parent / f".{root.name}.model.patch"
    patch_file.write_text(diff.text, encoding="utf-8")
    try:
        # The paths as git itself reads the patch (a hunk whose counts lie could hide a header from our parse).
        listed = await gitops.git(
            "apply", "--numstat", "-z", "--", str(patch_file), cwd=root, check=False, timeout_s=60
        )
        if listed.returncode != 0:
            return (listed.stderr or "git apply could not read the diff").strip()[-4000:]
        for path in _numstat_paths(listed.stdout):
            problem = path_problem(path) or (
                f"path {path!r} goes through a symbolic link" if _link_on_the_way(root, path) else None
            )
            if problem:
                raise permanent(ErrorCode.MODEL_DIFF_REJECTED, problem)
        # --check first: a patch that applies in part leaves nothing half-applied behind.
        for args in (("apply", "--check", "--whitespace=nowarn"), ("apply", "--whitespace=nowarn")):
            result = await gitops.git(*args, "--", str(patch_file), cwd=root, check=False, timeout_s=60)
            if result.returncode != 0:
                return (result.stderr or result.stdout or "git apply failed").strip()[-4000:]
    except gitops.GitError as exc:
        raise StepError(ErrorCode.TOOL_FAILURE, f"git apply failed: {exc}", retryable=True) from None
    finally:
        patch_file.unlink(missing_ok=True)
    return None


def _numstat_paths(output: str) -> list[str]:
    """Paths of ``git apply --numstat -z``: added, deleted and path split by tabs; a rename has two paths."""
    fields = output.split("\0")
    paths: list[str] = []
    index = 0
    while index < len(fields):
        entry = fields[index]
        index += 1
        if not entry:
            continue
        parts = entry.split("\t", 2)
        if len(parts) == 3 and parts[2]:
            paths.append(parts[2])
        elif len(parts) == 3:
            paths += fields[index : index + 2]
            index += 2
    return paths
