"""A deliberately non-deterministic edit of RepoRun (its own module: the replay sandbox re-imports it).

It reads the configuration before cloning, the kind of innocent-looking reordering that breaks every run in flight
unless it is guarded by ``workflow.patched``.
"""

from __future__ import annotations

from temporalio import workflow

from workflows.repo_run import RepoRunWorkflow

with workflow.unsafe.imports_passed_through():
    from activities.models import LOAD_RUN_CONFIG, LoadConfigInput
    from quantapilot.config import QuantapilotConfig
    from quantapilot.models import RepoRunInput, RunStatus


@workflow.defn(name="RepoRun")
class ReorderedRepoRun(RepoRunWorkflow):
    """RepoRun with one extra step up front."""

    @workflow.run
    async def run(self, inp: RepoRunInput) -> RunStatus:
        """Read the config first, then the usual pipeline."""
        await self._step(
            "read_config_early",
            LOAD_RUN_CONFIG,
            LoadConfigInput(repo=self._repo, path=inp.quantapilot_yaml_path),
            QuantapilotConfig,
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
                LOAD_RUN_CONFIG,
                LoadConfigInput(repo=self._repo, path=inp.quantapilot_yaml_path),
                QuantapilotConfig,
                timeout_s=60,
                attempts=1,
            )
        return await super().run(inp)
