"""A size cap on what git writes: the clone (or fetch) is killed as soon as its directory grows past the cap.

``git clone --filter`` and shallow clones narrow what is fetched but do not bound it, and git has no client-side
limit on a pack's size; a checkout can also be far larger than its pack (a file of zeros compresses 1000:1). So
the directory is measured while git runs, and once more when it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: Seconds between two measurements (longer when measuring takes long: at most a fifth of the time is spent on it).
POLL_INTERVAL_S = 0.2


class TooLargeError(Exception):
    """The directory grew past its cap; the work was stopped.

    Attributes:
        size: Bytes measured.
        limit: The cap.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes is over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


def tree_size(path: Path) -> int:
    """Apparent size in bytes of the files under ``path`` (symbolic links not followed; vanished files skipped)."""
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        else:
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue  # git renames and deletes its temporary files while we look
        except OSError:
            continue
    return total


async def within(path: Path, limit: int, work: Awaitable[T]) -> T:
    """Await ``work`` while ``path`` stays at most ``limit`` bytes; cancel it as soon as it does not.

    Cancelling a :mod:`quantapilot.forges.gitops` command kills its process group, so no git keeps writing.

    Args:
        path: Directory the work writes into (it may not exist yet).
        limit: Bytes allowed.
        work: The clone or fetch.

    Returns:
        What ``work`` returned.

    Raises:
        TooLargeError: ``path`` grew past ``limit`` (during the work or by its end); the caller removes what
            was written.
    """
    task = asyncio.ensure_future(work)
    pause = POLL_INTERVAL_S
    try:
        while True:
            await asyncio.wait({task}, timeout=pause)
            started = time.monotonic()
            size = await asyncio.to_thread(tree_size, path)
            pause = max(POLL_INTERVAL_S, 4 * (time.monotonic() - started))
            if size > limit:
                raise TooLargeError(size, limit)
            if task.done():
                return task.result()
    finally:
        if not task.done():
            task.cancel()
        # Also retrieves the outcome of work that failed just as the cap was hit.
        with contextlib.suppress(BaseException):
            await task
