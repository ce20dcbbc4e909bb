"""Files of a repository are data, never a path out: the one place that reads and writes them.

A hostile repository can track symbolic links (``README.md -> /proc/self/environ``, ``notes.md ->
../../quantapilot.db``, ``docs -> /etc``) and submodules. Everything the service reads from a repository (its
``quantapilot.yml``, README, package metadata, guides, Python sources) goes through :func:`open_repo_files`:

* In a git work tree the files come from the **git objects** of one commit (``git ls-tree -r -z -l`` once, then
  one ``git cat-file --batch`` process for the contents), never from the work tree, so a link is seen as what
  it is (mode ``120000``) and is never followed; a submodule (mode ``160000``) has no content here. Each file's
  size is known before it is read, and a file over the cap is not read at all.
* In a plain directory (no ``.git``) only regular files are listed and read, each opened without following a
  link at any level of its path.

Everything the service writes into a work tree (generated pages, milestone records) goes through
:func:`write_file` and :func:`remove_file`, which walk the path one folder at a time with ``O_NOFOLLOW`` and
refuse a link anywhere on it (:class:`UnsafePathError`), so a tracked ``.quantapilot/milestones -> /tmp/x`` or
``docs -> .git`` is never written through.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO, Final

from quantapilot.forges.gitops import scrubbed_env
from quantapilot.settings import Settings

__all__ = [
    "MAX_FILE_BYTES",
    "EntryKind",
    "FileRefusedError",
    "RepoEntry",
    "RepoFiles",
    "RepoReadError",
    "UnsafePathError",
    "normalise_path",
    "open_repo_files",
    "read_worktree_head",
    "remove_file",
    "walk_worktree_files",
    "write_file",
]

#: Default cap of one file read from a repository: the default of ``QP_REPO_MAX_FILE_BYTES``.
MAX_FILE_BYTES: Final[int] = Settings.model_fields["repo_max_file_bytes"].default
_GIT_TIMEOUT_S: Final = 120.0
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted in a work tree must fail or return at once, never wait for a writer.
_FILE_FLAGS: Final = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


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


class UnsafePathError(Exception):
    """A write or read in the work tree that would leave it or go through a link.

    Attributes:
        path: The offending path (or the part of it that is a link).
        reason: What is wrong with it.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def normalise_path(rel: str) -> str:
    """A repository path in its canonical form, refusing any that could leave the repository.

    Args:
        rel: A relative POSIX path such as ``docs/guide.md``.

    Returns:
        The path without empty or ``.`` segments.

    Raises:
        UnsafePathError: Absolute, empty, with a ``..`` segment, a backslash or NUL, or inside ``.git``.
    """
    pure = PurePosixPath(rel)
    parts = [p for p in pure.parts if p not in ("", ".")]
    if pure.is_absolute() or not parts or "\\" in rel or "\0" in rel:
        raise UnsafePathError(rel, "not a relative path inside the repository")
    if any(p == ".." for p in parts):
        raise UnsafePathError(rel, "path leaves the repository")
    if any(p.lower() == ".git" for p in parts):
        raise UnsafePathError(rel, "path is inside .git")
    return "/".join(parts)


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


# --- the work tree: reads and writes that never follow a link ---------------------------------------------


@contextlib.contextmanager
def _folder(root: Path, parts: Sequence[str], *, create: bool) -> Iterator[int | None]:
    """A descriptor of ``root/parts...``, opened one level at a time without following links.

    Yields ``None`` when a folder is missing and ``create`` is off.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, name in enumerate(parts):
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    yield None
                    return
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)
                child = _open_dir_or_refuse(name, fd, parts[: i + 1])
            except OSError as exc:
                raise _refusal(exc, parts[: i + 1], fd) from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _open_dir_or_refuse(name: str, fd: int, parts: Sequence[str]) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        raise _refusal(exc, parts, fd) from None


def _refusal(exc: OSError, parts: Sequence[str], parent_fd: int) -> UnsafePathError:
    where = "/".join(parts)
    # O_NOFOLLOW on a link fails with ELOOP, or with ENOTDIR when O_DIRECTORY is set too: look at the entry.
    try:
        is_link = stat.S_ISLNK(os.stat(parts[-1], dir_fd=parent_fd, follow_symlinks=False).st_mode)
    except OSError:
        is_link = False
    if is_link or exc.errno == errno.ELOOP:
        return UnsafePathError(where, "is a symbolic link; refusing to go through it")
    if exc.errno == errno.ENOTDIR:
        return UnsafePathError(where, "is not a folder")
    return UnsafePathError(where, f"cannot be opened ({errno.errorcode.get(exc.errno or 0, 'error')})")


def _split(rel: str) -> tuple[list[str], str]:
    parts = normalise_path(rel).split("/")
    return parts[:-1], parts[-1]


def read_worktree_head(root: Path, rel: str, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of a regular file in a work tree, opened without following any link.

    Args:
        root: The work tree.
        rel: Path inside it.
        limit: Bytes to read at most.

    Returns:
        The bytes, or ``None`` when there is no such file.

    Raises:
        UnsafePathError: The path, or a folder on it, is a symbolic link, it is not a regular file, or it
            leaves the work tree.
    """
    folders, name = _split(rel)
    with _folder(root, folders, create=False) as fd:
        if fd is None:
            return None
        try:
            handle = os.open(name, os.O_RDONLY | _FILE_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _refusal(exc, [*folders, name], fd) from None
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                raise UnsafePathError(rel, "is not a regular file")
            chunks: list[bytes] = []
            left = limit
            while left > 0 and (chunk := os.read(handle, min(left, 1 << 20))):
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(handle)


def write_file(root: Path, rel: str, data: bytes) -> bool:
    """Write a file in a work tree, creating its folders, never through a link.

    Args:
        root: The work tree.
        rel: Path inside it.
        data: The new content.

    Returns:
        Whether the file changed (an identical file is left untouched).

    Raises:
        UnsafePathError: The file or a folder on its path is a symbolic link, a folder on it is a file, the
            file is not a regular file, or the path leaves the work tree; nothing was written.
    """
    folders, name = _split(rel)
    with _folder(root, folders, create=True) as fd:
        assert fd is not None
        try:
            handle = os.open(name, os.O_RDWR | os.O_CREAT | _FILE_FLAGS, 0o644, dir_fd=fd)
        except OSError as exc:
            raise _refusal(exc, [*folders, name], fd) from None
        try:
            info = os.fstat(handle)
            if not stat.S_ISREG(info.st_mode):
                raise UnsafePathError(rel, "is not a regular file")
            if info.st_size == len(data) and _read_all(handle) == data:
                return False
            os.ftruncate(handle, 0)
            os.lseek(handle, 0, os.SEEK_SET)
            view = memoryview(data)
            while view:
                view = view[os.write(handle, view) :]
            return True
        finally:
            os.close(handle)


def _read_all(handle: int) -> bytes:
    os.lseek(handle, 0, os.SEEK_SET)
    chunks: list[bytes] = []
    while chunk := os.read(handle, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def remove_file(root: Path, rel: str, *, prune_up_to: str | None = None) -> None:
    """Remove a file from a work tree (a link is removed itself, never its target).

    Args:
        root: The work tree.
        rel: Path inside it.
        prune_up_to: A folder (a prefix of ``rel``) below which folders left empty are removed too.

    Raises:
        UnsafePathError: A folder on the path is a symbolic link or the path leaves the work tree.
    """
    folders, name = _split(rel)
    with _folder(root, folders, create=False) as fd:
        if fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=fd)
    if prune_up_to is None:
        return
    stop = len(normalise_path(prune_up_to).split("/"))
    while len(folders) > stop:
        with _folder(root, folders[:-1], create=False) as parent:
            if parent is None:
                return
            try:
                os.rmdir(folders[-1], dir_fd=parent)
            except OSError:
                return  # not empty (or already gone): stop pruning
        folders = folders[:-1]


def walk_worktree_files(root: Path, folder: str) -> list[str]:
    """Regular files below a folder of a work tree, without following links, sorted.

    Args:
        root: The work tree.
        folder: Path of the folder inside it.

    Returns:
        Paths relative to ``root``; empty when the folder does not exist.

    Raises:
        UnsafePathError: The folder, or one on the way to it, is a symbolic link.
    """
    base = normalise_path(folder)
    found: list[str] = []
    with _folder(root, base.split("/"), create=False) as fd:
        if fd is None:
            return []
        for dirpath, _dirnames, filenames, dir_fd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
            prefix = base if dirpath == "." else f"{base}/{dirpath.removeprefix('./')}"
            for name in filenames:
                try:
                    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append(f"{prefix}/{name}")
    return sorted(found)
