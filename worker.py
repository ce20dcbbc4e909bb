"""The Temporal worker process: registers the workflows and activities and polls the task queue."""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import timedelta
from typing import Any

from prometheus_client import start_http_server
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.worker import Worker

from activities import Closeable, build_activities
from quantapilot.db import make_engine
from quantapilot.migrate import ensure_schema
from quantapilot.observability import RunContextInterceptor, setup_logging
from quantapilot.sandbox import startup_report
from quantapilot.settings import Settings
from quantapilot.temporal import connect, exit_without_teardown
from workflows.registry import WORKFLOWS

log = logging.getLogger("quantapilot.worker")


class ServiceWorker(Worker):
    """A worker that also closes its activities' shared connections when it shuts down."""

    def __init__(self, *args: Any, resources: list[Closeable], engine: Engine, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resources = resources
        self._engine = engine

    async def shutdown(self) -> None:
        """Stop polling, let running tasks finish, then close HTTP sessions, broker and database connections."""
        try:
            await super().shutdown()
        finally:
            for resource in self._resources:
                await resource.close()
            self._engine.dispose()


def build_worker(client: Client, settings: Settings, *, task_queue: str | None = None) -> ServiceWorker:
    """Build (not start) a worker with every workflow and activity.

    Args:
        client: Connected Temporal client (pydantic data converter).
        settings: Service settings.
        task_queue: Override of ``settings.task_queue`` (tests use a fresh queue each).
    """
    engine = make_engine(settings.database_url, statement_timeout_s=settings.db_statement_timeout_s)
    ensure_schema(engine, auto_migrate=settings.db_auto_migrate)
    settings.run_workdir.mkdir(parents=True, exist_ok=True)
    # Loud when milestone commands run unsandboxed (QP_COMMAND_SANDBOX=none) or cannot run (no usable bwrap).
    log.log(*startup_report(settings))
    activities, resources = build_activities(settings, engine)
    return ServiceWorker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=WORKFLOWS,
        activities=activities,
        resources=resources,
        engine=engine,
        interceptors=[RunContextInterceptor()],
        max_cached_workflows=settings.worker_max_cached_workflows,
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_graceful_shutdown_s),
    )


async def run_worker(settings: Settings) -> None:
    """Connect, start the worker and run until SIGINT/SIGTERM, then shut down gracefully."""
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr="127.0.0.1")
    client = await connect(settings, sdk_metrics=True)
    worker = build_worker(client, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        log.info("worker polling task queue %s", settings.task_queue)
        await stop.wait()
    log.info("worker stopped")


def main() -> None:
    """Entry point of ``python worker.py`` and ``qp worker``."""
    settings = Settings()
    setup_logging(fmt=settings.log_format, level=settings.log_level)
    asyncio.run(run_worker(settings))
    # Shut down gracefully above; the SDK runtime's threads must not meet interpreter teardown.
    exit_without_teardown(0)


if __name__ == "__main__":
    main()
