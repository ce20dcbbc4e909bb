"""Stopping a dispatcher waits for its database steps, so its owner can dispose of the engine right after.

On PostgreSQL the dispatcher has two database threads, so its own last claim does not queue behind the slow step
and only the wait in ``stop`` keeps it (the PostgreSQL pass fails without it); on SQLite's one thread it holds
either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from quantapilot.secretbox import load_keyring
from quantapilot.settings import Settings
from quantapilot.webhooks.dispatcher import Dispatcher


async def test_webhooks_dispatcher_stop_waits_for_a_database_step_in_its_threads(
    settings: Settings, engine: Engine
) -> None:
    dispatcher = Dispatcher(settings, engine, keyring=load_keyring(settings), client=None, task_queue="unused")
    await dispatcher.start()
    entered, finished = threading.Event(), threading.Event()

    def slow_step() -> None:
        # Like a lease renewal: a pooled connection checked out for the whole step.
        with engine.connect() as connection:
            entered.set()
            connection.execute(text("SELECT 1"))
            threading.Event().wait(0.5)
        finished.set()

    waiting = asyncio.create_task(dispatcher._in_db_thread(slow_step))
    assert await asyncio.to_thread(entered.wait, 10)
    waiting.cancel()  # what stop() does to the renewal task: the thread goes on
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await dispatcher.stop()
    assert finished.is_set()
    pool = engine.pool
    # Nothing left holding a connection when the engine is disposed (SQLite's test engine may pool otherwise).
    assert not isinstance(pool, QueuePool) or pool.checkedout() == 0
