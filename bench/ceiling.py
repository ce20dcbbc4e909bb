"""Raw ceilings: trivial workflows and their in-process worker, measured beside our path on the same dev server."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions


@activity.defn(name="bench_noop")
async def noop_activity(value: str) -> str:
    """An activity that does nothing but return its input."""
    return value


@workflow.defn(name="BenchWaitSignal")
class WaitSignalWorkflow:
    """Waits for one signal, then completes: the ceiling of "a decision unblocks a waiting run"."""

    def __init__(self) -> None:
        self._decided = False

    @workflow.run
    async def run(self) -> None:
        """Wait for ``decide``."""
        await workflow.wait_condition(lambda: self._decided)

    @workflow.signal
    def decide(self) -> None:
        """Unblock the run."""
        self._decided = True

    @workflow.query
    def ready(self) -> bool:
        """Answered once the first workflow task ran (the run is waiting)."""
        return not self._decided


@workflow.defn(name="BenchOneActivity")
class OneActivityWorkflow:
    """Runs one no-op activity: the ceiling of "a run does a step and completes"."""

    @workflow.run
    async def run(self, value: str) -> str:
        """Execute ``bench_noop`` once."""
        result: str = await workflow.execute_activity(
            noop_activity, value, start_to_close_timeout=timedelta(seconds=30)
        )
        return result


def ceiling_worker(client: Client, task_queue: str, *, max_cached_workflows: int = 2000) -> Worker:
    """An in-process worker for the trivial workflows, in the sandbox as ours.

    This module is passed through rather than re-imported in the sandbox: it imports the API and the database,
    which a workflow module must not, and the trivial workflows use none of it.
    """
    restrictions = SandboxRestrictions.default.with_passthrough_modules("bench", "api", "quantapilot", "aiohttp")
    return Worker(
        client,
        task_queue=task_queue,
        workflow_runner=SandboxedWorkflowRunner(restrictions=restrictions),
        workflows=[WaitSignalWorkflow, OneActivityWorkflow],
        activities=[noop_activity],
        max_cached_workflows=max_cached_workflows,
    )
