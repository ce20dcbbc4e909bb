"""Files of a repository are data, never a path out: the one place that reads them.

A hostile repository can track symbolic links (``README.md -> /proc/self/environ``, ``notes.md ->
../../quantapilot.db``, ``docs -> /etc``) and submodules. Everything the service reads from a repository (its
``quantapilot.yml``, README, package metadata, guides, Python sources) goes through :func:`open_repo_files`:

* In a git work tree the files come from the **git objects** of one commit (``git ls-tree -r -z -l`` once, then
  one ``git cat-file --batch`` process for the contents), never from the work tree, so a link is seen as what
  it is (mode ``120000``) and is never followed; a submodule (mode ``160000``) has no content here. Each file's
  size is known before it is read, and a file over the cap is not read at all.
* In a plain directory (no ``.git``) only regular files are listed and read, each opened without following a
  link at any level of its path.

Writes into a work tree (and reads of it outside the git objects) go through :mod:`quantapilot.repos.worktree`.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Final

from quantapilot.forges.gitops import scrubbed_env
from quantapilot.repos.worktree import UnsafePathError, read_worktree_head
from quantapilot.settings import Settings

__all__ = [
    "MAX_FILE_BYTES",
    "EntryKind",
    "FileRefusedError",
    "RepoEntry",
    "RepoFiles",
    "RepoReadError",
    "open_repo_files",
]

#: Default cap of one file read from a repository: the default of ``QP_REPO_MAX_FILE_BYTES``.
MAX_FILE_BYTES: Final[int] = Settings.model_fields["repo_max_file_bytes"].default
_GIT_TIMEOUT_S: Final = 120.0


class EntryKind(StrEnum):
    """What a path of the repository is."""

    FILE = "file"
    SYMLINK = "symlink"
    SUBMODULE = "submodule"


@dataclass(frozen=True, slots=True)
class RepoEntry:
    """One tracked path.

    Attributes:
        path: POSIX path relative to the repository root.
        kind: Regular file, symbolic link or submodule.
        size: Size in bytes (``None`` for a submodule).
        oid: The git object id (``None`` in a plain directory).
    """

    path: str
    kind: EntryKind
    size: int | None
    oid: str | None = None


class FileRefusedError(Exception):
    """A path of the repository that is not read, and why.

    Attributes:
        path: The path asked for.
        reason: Why it is not read (``symbolic link, not followed``, ``larger than ... bytes``...), safe to show.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class RepoReadError(Exception):
    """git could not list or read the commit (a missing object, a corrupt repository, a timeout)."""


# --- reading: one snapshot of the repository ------------------------------------------------------------


class RepoFiles:
    """The tracked paths of one commit (or of a plain directory) and a way to read them as data.

    Use :func:`open_repo_files` to build one, as a context manager (it may hold a ``git cat-file`` process).

    Attributes:
        entries: Every tracked path, sorted.
        max_file_bytes: Files larger than this are never read.
    """

    def __init__(self, entries: Sequence[RepoEntry], *, max_file_bytes: int) -> None:
        self.entries: dict[str, RepoEntry] = {e.path: e for e in sorted(entries, key=lambda e: e.path)}
        self.max_file_bytes = max_file_bytes

    def __enter__(self) -> RepoFiles:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release what reading needed (the ``git cat-file`` process)."""

    def paths(self, *kinds: EntryKind) -> list[str]:
        """Tracked paths of the given kinds (all kinds when none is given), sorted."""
        return [p for p, e in self.entries.items() if not kinds or e.kind in kinds]

    def link_on_path(self, rel: str) -> RepoEntry | None:
        """The symbolic link or submodule that ``rel`` is, or lies inside (``conf`` for ``conf/x.yml``)."""
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            entry = self.entries.get("/".join(parts[:i]))
            if entry is not None and entry.kind is not EntryKind.FILE:
                return entry
        return None

    def read_bytes(self, rel: str) -> bytes:
        """The content of a regular tracked file.

        Args:
            rel: Its path.

        Returns:
            The bytes of the file as committed.

        Raises:
            FileRefusedError: Not tracked, a symbolic link or submodule (or inside one), or over the size cap.
            RepoReadError: git failed to read it.
        """
        link = self.link_on_path(rel)
        if link is not None:
            what = "symbolic link" if link.kind is EntryKind.SYMLINK else "submodule"
            where = "" if link.path == rel else f" ({link.path} is a {what})"
            raise FileRefusedError(rel, f"{what}, not followed{where}")
        entry = self.entries.get(rel)
        if entry is None:
            raise FileRefusedError(rel, "not in the repository")
        if entry.size is not None and entry.size > self.max_file_bytes:
            raise FileRefusedError(rel, f"larger than {self.max_file_bytes} bytes, not read")
        data = self._read(entry)
        if len(data) > self.max_file_bytes:
            raise FileRefusedError(rel, f"larger than {self.max_file_bytes} bytes, not read")
        return data

    def read_text(self, rel: str) -> str:
        """Like :meth:`read_bytes`, decoded as UTF-8 (undecodable bytes replaced)."""
        return self.read_bytes(rel).decode("utf-8", errors="replace")

    def _read(self, entry: RepoEntry) -> bytes:
        raise NotImplementedError


def _git_env() -> dict[str, str]:
    # refs/replace could make an object id stand for other content; the tree we list is the one we read.
    return scrubbed_env({"GIT_NO_REPLACE_OBJECTS": "1"})


def _git(repo_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", "--literal-pathspecs", "-C", str(repo_dir), *args],
        capture_output=True,
        env=_git_env(),
        timeout=_GIT_TIMEOUT_S,
        check=False,
    )


_KINDS: Final = {"100644": EntryKind.FILE, "100755": EntryKind.FILE, "120000": EntryKind.SYMLINK}


class _GitFiles(RepoFiles):
    """A commit's tree, read from git objects."""

    def __init__(self, repo_dir: Path, entries: Sequence[RepoEntry], *, max_file_bytes: int) -> None:
        super().__init__(entries, max_file_bytes=max_file_bytes)
        self._repo_dir = repo_dir
        self._proc: subprocess.Popen[bytes] | None = None

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def _batch(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            self._proc = subprocess.Popen(
                ["git", "-C", str(self._repo_dir), "cat-file", "--batch"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=_git_env(),
            )
        return self._proc

    def _read(self, entry: RepoEntry) -> bytes:
        assert entry.oid is not None
        proc = self._batch()
        stdin, stdout = proc.stdin, proc.stdout
        assert stdin is not None
        assert stdout is not None
        try:
            stdin.write(entry.oid.encode("ascii") + b"\n")
            stdin.flush()
            header = stdout.readline().split()
            # "<oid> blob <size>"; anything else ("<oid> missing") means the object is not there.
            if len(header) != 3 or header[1] != b"blob":
                raise RepoReadError(f"git cat-file could not read {entry.path}")
            data = _read_exactly(stdout, int(header[2]))
            stdout.read(1)  # the newline after each object
        except (OSError, ValueError) as exc:
            self.close()
            raise RepoReadError(f"git cat-file failed reading {entry.path}: {type(exc).__name__}") from None
        return data


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise RepoReadError("git cat-file ended early")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _list_tree(repo_dir: Path, commit: str | None, paths: Sequence[str] | None) -> list[RepoEntry]:
    if commit is None:
        head = _git(repo_dir, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
        if head.returncode != 0:
            return []  # a repository without commits tracks nothing yet
        commit = head.stdout.decode("ascii").strip()
    args = ["ls-tree", "-z", "-l"]
    if paths is None:
        args.append("-r")
    args += ["--full-tree", commit, "--"]
    if paths is not None:
        # Each prefix too, so a link on the way (conf -> /etc for conf/x.yml) is listed and seen.
        prefixes = {"/".join(p.split("/")[: i + 1]) for p in paths for i in range(p.count("/") + 1)}
        args += sorted(prefixes)
    proc = _git(repo_dir, *args)
    if proc.returncode != 0:
        raise RepoReadError(f"git ls-tree failed for {commit[:12]}")
    entries: list[RepoEntry] = []
    for record in proc.stdout.split(b"\0"):
        if not record:
            continue
        meta, _, raw_path = record.partition(b"\t")
        fields = meta.split()
        if len(fields) != 4:
            continue
        mode, kind, oid, size = (f.decode("ascii") for f in fields)
        path = raw_path.decode("utf-8", "surrogateescape")
        if mode == "160000" or kind == "commit":
            entries.append(RepoEntry(path, EntryKind.SUBMODULE, None, oid))
        elif kind == "blob" and mode in _KINDS:
            entries.append(RepoEntry(path, _KINDS[mode], int(size), oid))
    return entries


class _DirectoryFiles(RepoFiles):
    """A plain directory: regular files only, each opened without following a link."""

    def __init__(self, root: Path, entries: Sequence[RepoEntry], *, max_file_bytes: int) -> None:
        super().__init__(entries, max_file_bytes=max_file_bytes)
        self._root = root

    def _read(self, entry: RepoEntry) -> bytes:
        try:
            data = read_worktree_head(self._root, entry.path, self.max_file_bytes + 1)
        except UnsafePathError as exc:
            raise FileRefusedError(entry.path, exc.reason) from None
        if data is None:
            raise FileRefusedError(entry.path, "not in the repository")
        return data


def _walk_directory(root: Path, skip_dirs: frozenset[str]) -> list[RepoEntry]:
    entries: list[RepoEntry] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        rel_base = base.relative_to(root).as_posix()
        keep: list[str] = []
        for name in sorted(dirnames):
            if name in skip_dirs:
                continue
            rel = name if rel_base == "." else f"{rel_base}/{name}"
            if (base / name).is_symlink():
                entries.append(RepoEntry(rel, EntryKind.SYMLINK, None))
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            rel = name if rel_base == "." else f"{rel_base}/{name}"
            try:
                info = os.lstat(base / name)
            except OSError:
                continue
            if stat.S_ISLNK(info.st_mode):
                entries.append(RepoEntry(rel, EntryKind.SYMLINK, None))
            elif stat.S_ISREG(info.st_mode):
                entries.append(RepoEntry(rel, EntryKind.FILE, info.st_size))
    return entries


def open_repo_files(
    repo_dir: Path,
    *,
    commit: str | None = None,
    paths: Sequence[str] | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
    skip_dirs: frozenset[str] = frozenset({".git"}),
) -> RepoFiles:
    """Open a repository's files for reading as data.

    Args:
        repo_dir: A git work tree (read from its objects) or a plain directory.
        commit: The commit to read (default ``HEAD``); only for git work trees.
        paths: List only these paths (and their parent folders), when only a few files are wanted.
        max_file_bytes: Files larger than this are listed but never read.
        skip_dirs: Folder names not descended into in a plain directory.

    Returns:
        The snapshot; use it as a context manager.

    Raises:
        RepoReadError: git could not list the commit.
    """
    repo_dir = Path(repo_dir)
    if os.path.lexists(repo_dir / ".git"):
        entries = _list_tree(repo_dir, commit, paths)
        if paths is not None:
            wanted = {"/".join(p.split("/")[: i + 1]) for p in paths for i in range(p.count("/") + 1)}
            entries = [e for e in entries if e.path in wanted]
        return _GitFiles(repo_dir, entries, max_file_bytes=max_file_bytes)
    return _DirectoryFiles(repo_dir, _walk_directory(repo_dir, skip_dirs | {".git"}), max_file_bytes=max_file_bytes)
