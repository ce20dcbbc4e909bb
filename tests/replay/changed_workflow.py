"""Deliberately non-deterministic edits of RepoRun and WebhookDelivery (their own module: the replay sandbox
re-imports it).

RepoRun reads the configuration before cloning; WebhookDelivery waits a moment before its first attempt. Both are
the kind of innocent-looking change that breaks every run in flight unless it is guarded by ``workflow.patched``.
"""

from __future__ import annotations

from temporalio import workflow

from workflows.repo_run import RepoRunWorkflow
from workflows.webhook_delivery import WebhookDeliveryWorkflow

with workflow.unsafe.imports_passed_through():
    from activities.repo import RepoActivities
    from quantapilot.models import RepoRunInput, RunStatus
    from quantapilot.runs.contracts import LoadConfigInput
    from quantapilot.webhooks.contracts import WEBHOOK_DELIVERY_WORKFLOW, DeliveryWorkflowInput


@workflow.defn(name="RepoRun")
class ReorderedRepoRun(RepoRunWorkflow):
    """RepoRun with one extra step up front."""

    @workflow.run
    async def run(self, inp: RepoRunInput) -> RunStatus:
        """Read the config first, then the usual pipeline."""
        await self._step(
            "read_config_early",
            RepoActivities.load_run_config,
            LoadConfigInput(repo=self._repo, path=inp.quantapilot_yaml_path),
            timeout_s=60,
            attempts=1,
        )
        return await super().run(inp)


@workflow.defn(name="RepoRun")
class PatchedRepoRun(RepoRunWorkflow):
    """The same extra step, guarded by a patch: old histories replay the old path."""

    @workflow.run
    async def run(self, inp: RepoRunInput) -> RunStatus:
        """Read the config first on new runs only."""
        if workflow.patched("read-config-early"):
            await self._step(
                "read_config_early",
                RepoActivities.load_run_config,
                LoadConfigInput(repo=self._repo, path=inp.quantapilot_yaml_path),
                timeout_s=60,
                attempts=1,
            )
        return await super().run(inp)


@workflow.defn(name=WEBHOOK_DELIVERY_WORKFLOW)
class DelayedWebhookDelivery(WebhookDeliveryWorkflow):
    """WebhookDelivery that waits a moment before its first attempt (a timer where the history has an activity)."""

    @workflow.run
    async def run(self, inp: DeliveryWorkflowInput) -> str:
        """Let the event's transaction settle, then the usual attempts."""
        await workflow.sleep(1)
        return await super().run(inp)


@workflow.defn(name=WEBHOOK_DELIVERY_WORKFLOW)
class PatchedWebhookDelivery(WebhookDeliveryWorkflow):
    """The same wait, guarded by a patch: deliveries already under way replay without it."""

    @workflow.run
    async def run(self, inp: DeliveryWorkflowInput) -> str:
        """Wait on new deliveries only."""
        if workflow.patched("settle-before-first-attempt"):
            await workflow.sleep(1)
        return await super().run(inp)
