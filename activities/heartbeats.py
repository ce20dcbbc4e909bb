"""Heartbeating in the background while an activity's body runs, so a dead worker is noticed in time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from temporalio import activity


@contextlib.asynccontextmanager
async def heartbeating(detail: str | None = None, *, at_start: bool = True) -> AsyncIterator[None]:
    """Heartbeat every third of the activity's heartbeat timeout while the body runs (nothing without a timeout).

    Args:
        detail: The heartbeat's detail (what the activity is doing); None sends none.
        at_start: Beat at once; False beats only once the body has run for an interval (fast bodies send none).
    """
    timeout = activity.info().heartbeat_timeout if activity.in_activity() else None
    if not timeout:
        yield
        return
    interval = max(timeout.total_seconds() / 3, 0.2)
    details = () if detail is None else (detail,)

    async def _beat() -> None:
        if not at_start:
            await asyncio.sleep(interval)
        while True:
            activity.heartbeat(*details)
            await asyncio.sleep(interval)

    task = asyncio.create_task(_beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
