"""A workflow that upserts every QuantaPilot search attribute (its own module: the sandbox re-imports it)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from quantapilot.temporal import (
        SA_ACCOUNT_ID,
        SA_BRANCH,
        SA_CORRELATION_ID,
        SA_PENDING_GATE,
        SA_REPO_URL,
        SA_RUN_KIND,
        SA_STAGE,
        SA_STATE,
        SA_WORKSPACE,
    )


@workflow.defn(sandboxed=True)
class UpsertAllWorkflow:
    """Upserts every QuantaPilot search attribute, as the run workflows do."""

    @workflow.run
    async def run(self, marker: str) -> str:
        workflow.upsert_search_attributes(
            [
                SA_WORKSPACE.value_set("setup-ws"),
                SA_RUN_KIND.value_set("repository"),
                SA_REPO_URL.value_set("https://example.test/repo.git"),
                SA_BRANCH.value_set("main"),
                SA_CORRELATION_ID.value_set(marker),
                SA_ACCOUNT_ID.value_set("acct-1"),
                SA_STAGE.value_set("target"),
                SA_STATE.value_set("waiting_for_gate"),
                SA_PENDING_GATE.value_set("anchor"),
            ]
        )
        return marker
