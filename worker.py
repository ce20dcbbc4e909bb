"""The Temporal worker process: registers the workflows and activities and polls the task queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from datetime import timedelta
from typing import Any

from prometheus_client import start_http_server
from sqlalchemy.engine import Engine
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Interceptor, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities import Closeable, build_activities
from activities.event_carry import EventCarryInterceptor
from activities.events import EventActivities
from activities.repo import RepoActivities
from quantapilot.db import make_engine
from quantapilot.migrate import ensure_schema
from quantapilot.models import RunKind
from quantapilot.observability import RunContextInterceptor, setup_logging
from quantapilot.runs.ids import workflow_id
from quantapilot.sandbox import startup_report
from quantapilot.secretbox import SecretKeyError, load_keyring
from quantapilot.settings import Settings
from quantapilot.temporal import connect, exit_without_teardown
from quantapilot.tracing import has_temporal_tracing, setup_tracing, temporal_interceptor
from quantapilot.webhooks.at_rest import encrypt_plaintext_secrets
from quantapilot.webhooks.dispatcher import Dispatcher
from quantapilot.webhooks.urlsafety import Resolver
from workflows.registry import WORKFLOWS, shared_workflow_modules

log = logging.getLogger("quantapilot.worker")


class ServiceWorker(Worker):
    """A worker that also closes its activities' shared connections when it shuts down.

    While it runs it also sweeps the worktrees of closed runs off this host now and then (``sweep_every_s``):
    a run's cleanup step removes the worktree of the worker that runs it, this removes the rest.
    """

    def __init__(
        self,
        *args: Any,
        resources: list[Closeable],
        engine: Engine,
        repo: RepoActivities | None = None,
        sweep_every_s: float = 0.0,
        dispatcher: Dispatcher | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._resources = resources
        self._engine = engine
        self._repo = repo
        self._sweep_every_s = sweep_every_s
        self._dispatcher = dispatcher

    @property
    def dispatcher(self) -> Dispatcher | None:
        """The webhook outbox dispatcher this worker runs (None with ``QP_WEBHOOK_DISPATCH=workflow``)."""
        return self._dispatcher

    async def run(self) -> None:
        """Poll until shut down, sweeping worktrees of closed runs and draining the webhook outbox alongside."""
        sweep = asyncio.create_task(self._sweep()) if self._repo is not None and self._sweep_every_s > 0 else None
        try:
            if self._dispatcher is not None:
                await self._dispatcher.start()
            await super().run()
        finally:
            if self._dispatcher is not None:
                await self._dispatcher.stop()
            if sweep is not None:
                sweep.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweep

    async def _sweep(self) -> None:
        assert self._repo is not None
        while True:
            try:
                removed = await self._repo.sweep_worktrees(self._run_closed)
                if removed:
                    log.info("removed %d worktrees of closed runs", removed)
            except Exception:
                log.exception("worktree sweep failed; trying again later")
            await asyncio.sleep(self._sweep_every_s)

    async def _run_closed(self, workspace: str, run_id: str) -> bool | None:
        """Whether the repository run has closed (completed, failed, cancelled, terminated, timed out, gone)."""
        try:
            desc = await self.client.get_workflow_handle(workflow_id(RunKind.REPOSITORY, workspace, run_id)).describe(
                rpc_timeout=timedelta(seconds=10)
            )
        except RPCError as err:
            # Not found: retention removed it, or it never started (a stray folder): nothing will use it.
            return True if err.status == RPCStatusCode.NOT_FOUND else None
        return desc.status is not None and desc.status != WorkflowExecutionStatus.RUNNING

    async def shutdown(self) -> None:
        """Stop polling, let running tasks finish, then close HTTP sessions, broker and database connections."""
        try:
            await super().shutdown()
        finally:
            # Before the engine goes: the dispatcher records its last answers and frees its unsent claims.
            if self._dispatcher is not None:
                await self._dispatcher.stop()
            for resource in self._resources:
                await resource.close()
            self._engine.dispose()


def worker_interceptors(
    client: Client | None = None, *, events: EventActivities | None = None, event_carry: bool = True
) -> list[Interceptor]:
    """The worker's interceptors: run context for log lines, run events carried by activities, tracing.

    Tracing comes from here unless the client brings it.

    A worker runs its client's interceptors first (``quantapilot.temporal.connect`` gives every client Temporal's
    tracing interceptor); a client made elsewhere (tests, the replayer) gets it here, so workflows and activities
    are traced the same either way.

    Args:
        client: The worker's client; None for a replayer, which has none.
        events: The event activities that record what an activity carries; None for a replayer, which runs no
            activity (its workflows still carry, as they did when the history was made).
        event_carry: Whether new runs carry their events (``QP_WORKER_EVENT_CARRY``).
    """
    own = (
        [] if client is not None and has_temporal_tracing(client.config()["interceptors"]) else [temporal_interceptor()]
    )
    # Innermost: carried events are recorded inside the activity's trace span and run context.
    return [*own, RunContextInterceptor(), EventCarryInterceptor(events, new_runs=event_carry)]


def workflow_runner() -> SandboxedWorkflowRunner:
    """Temporal's sandbox, with the workflow modules that define no registered workflow passed through.

    The sandbox imports a workflow's module afresh for every workflow instance it creates, with every module of
    ours that it imports. A repository run pulls in nine (its base classes, gates, budgets), about 270 KiB each
    time, so a worker caching 1,000 waiting runs held over 250 MiB of copies of the same code. Temporal's guidance
    is to pass through modules in separate files whose calls are deterministic: the shared modules are, and they
    keep no state of their own (a run's state lives on its instance). The modules that define a workflow stay
    sandboxed. The replay tests (tests/replay) use Temporal's default, fully restricted sandbox on every recorded
    history, so a non-deterministic call in a passed-through module is still caught there.
    """
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*sorted(shared_workflow_modules()))
    )


def build_worker(
    client: Client, settings: Settings, *, task_queue: str | None = None, resolver: Resolver | None = None
) -> ServiceWorker:
    """Build (not start) a worker with every workflow and activity.

    Args:
        client: Connected Temporal client (pydantic data converter).
        settings: Service settings.
        task_queue: Override of ``settings.task_queue`` (tests use a fresh queue each).
        resolver: Resolver of repository hosts (tests point names at loopback); ``getaddrinfo`` when None.
    """
    keyring = load_keyring(settings)
    engine = make_engine(settings.database_url, statement_timeout_s=settings.db_statement_timeout_s)
    ensure_schema(engine, auto_migrate=settings.db_auto_migrate)
    encrypt_plaintext_secrets(engine, keyring)
    settings.run_workdir.mkdir(parents=True, exist_ok=True)
    # Loud when milestone commands run unsandboxed (QP_COMMAND_SANDBOX=none) or cannot run (no usable bwrap).
    log.log(*startup_report(settings))
    queue = task_queue or settings.task_queue
    dispatcher = (
        Dispatcher(settings, engine, keyring=keyring, client=client, task_queue=queue)
        if settings.webhook_dispatch == "outbox"
        else None
    )
    activities, resources = build_activities(settings, engine, resolver=resolver, dispatcher=dispatcher)
    # The object behind the registered record_event: what an activity carries is recorded the same way.
    events = next(e for e in (getattr(a, "__self__", None) for a in activities) if isinstance(e, EventActivities))
    return ServiceWorker(
        client,
        task_queue=queue,
        dispatcher=dispatcher,
        workflows=WORKFLOWS,
        activities=activities,
        resources=resources,
        engine=engine,
        repo=next((r for r in resources if isinstance(r, RepoActivities)), None),
        sweep_every_s=settings.worktree_sweep_interval_s,
        interceptors=worker_interceptors(client, events=events, event_carry=settings.worker_event_carry),
        workflow_runner=workflow_runner(),
        max_cached_workflows=settings.worker_max_cached_workflows,
        max_concurrent_activities=settings.worker_max_concurrent_activities,
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_graceful_shutdown_s),
    )


def wait_for_children_with_pidfds() -> bool:
    """On Python 3.11, have the running loop wait for child processes through pidfds instead of threads.

    Every git command (and every sandboxed milestone command) is an asyncio subprocess. Python 3.11's default
    child watcher starts one thread per child that blocks in ``waitpid`` until it exits: a thread start and stop
    for each of a run's twenty git commands. ``PidfdChildWatcher`` has the event loop itself watch a pidfd per
    child (Linux 5.3+). Python 3.12 and later choose pidfds on their own, so this is for 3.11 only.

    Returns:
        Whether the pidfd watcher is now in use (False: not 3.11, or no working ``pidfd_open``).
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False  # a kernel or seccomp profile without pidfd_open: keep the threads
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)
    return True


async def run_worker(settings: Settings) -> None:
    """Connect, start the worker and run until SIGINT/SIGTERM, then shut down gracefully."""
    load_keyring(settings)  # refuse to start without the secret key before connecting to anything
    if wait_for_children_with_pidfds():
        log.debug("child processes are waited for with pidfds")
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
    setup_tracing("quantapilot-worker", settings)
    try:
        asyncio.run(run_worker(settings))
    except SecretKeyError as exc:
        log.error("not starting: %s", exc)
        raise SystemExit(2) from None
    # Shut down gracefully above; the SDK runtime's threads must not meet interpreter teardown.
    exit_without_teardown(0)


if __name__ == "__main__":
    main()
