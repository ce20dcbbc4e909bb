"""Reads and writes in a work tree that never follow a link: the one place the service touches a checkout's files.

A hostile repository can track symbolic links (``docs -> /etc``, ``.quantapilot/milestones -> /tmp/x``,
``docs -> .git``). Everything the service writes into a work tree (generated pages, milestone records) goes
through :func:`write_file` and :func:`remove_file`, and everything it reads from one outside the git objects
(:mod:`quantapilot.repos.files`) through :func:`read_worktree_head` and :func:`walk_worktree_files`: each walks
the path one folder at a time with ``O_NOFOLLOW`` and refuses a link anywhere on it (:class:`UnsafePathError`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Final

__all__ = [
    "UnsafePathError",
    "normalise_path",
    "read_worktree_head",
    "remove_file",
    "walk_worktree_files",
    "write_file",
]

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted in a work tree must fail or return at once, never wait for a writer.
_FILE_FLAGS: Final = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


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
