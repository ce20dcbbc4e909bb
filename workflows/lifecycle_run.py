"""The lifecycle run: one stage of one customer account, from agent to stored result and docs page.

Steps: ``run.started`` -> the stage agent (an activity over the account's stored context) -> store the result
-> for the target stage, a draft page and the ``business_case`` gate (approval activates the targets, rejection
archives the page and fails the run) -> publish ``accounts/<accountId>/<stage>`` -> ``stage.completed`` (and
``realization.updated`` for the realization stage) -> ``run.completed``. Pause/resume, status and events come
from :class:`~workflows.base.RunWorkflowBase`.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

from workflows.common import RunFailure
from workflows.model_budget import ModelBudget

with workflow.unsafe.imports_passed_through():
    from activities.lifecycle import LifecycleActivities
    from activities.lifecycle_models import LifecycleModelActivities
    from quantapilot.errors import ErrorCode
    from quantapilot.lifecycle.contracts import (
        BUSINESS_CASE_GATE,
        LifecycleNarrative,
        LifecycleRunInput,
        NarrateInput,
        PageStatus,
        PublishedPage,
        PublishStageInput,
        SetStatusInput,
        StageAgentInput,
        StoredStageResult,
        StoreStageResultInput,
        kpi_statuses,
        summarize,
    )
    from quantapilot.lifecycle.models import ResultStatus
    from quantapilot.lifecycle.narrative import NarrativeRejected, apply_narrative, narrative_fields
    from quantapilot.lifecycle.outputs import RealizationOutput, StageResult
    from quantapilot.lifecycle.realization import report_period
    from quantapilot.models import BudgetInput, RunKind, RunStatus
    from quantapilot.runs.budget import Headroom, run_usage
    from quantapilot.runs.ids import LIFECYCLE_RUN_WORKFLOW
    from quantapilot.runs.model_contracts import ModelCallResult, ask_fields

AGENT_TIMEOUT_S = 300.0
STORE_TIMEOUT_S = 60.0
NARRATE_TIMEOUT_S = 300.0
# A model writes the narrative fields of the agent's result (QP_LIFECYCLE_MODELS); runs without one never ask.
PATCH_LIFECYCLE_NARRATIVE = "lifecycle-model-narrative"


@workflow.defn(name=LIFECYCLE_RUN_WORKFLOW)
class LifecycleRunWorkflow(ModelBudget):
    """One durable lifecycle stage run (see the module docstring for its steps)."""

    @workflow.init
    def __init__(self, inp: LifecycleRunInput) -> None:
        self._inp = inp
        self._init_run(inp, RunKind.LIFECYCLE)

    @workflow.run
    async def run(self, inp: LifecycleRunInput) -> RunStatus:
        """Run the stage to completion, failure or cancellation."""
        return await self._guarded(self._pipeline)

    def _status(self) -> RunStatus:
        return RunStatus(
            **self._base_status(),
            account_id=self._inp.account_id,
            stage=self._inp.stage,
            usage=self._usage_copy(),
            model_calls=self._run_model_calls(),
        )

    def _details_extra(self) -> list[str]:
        return self._usage_lines()

    def _raise_model_budget(self, request: BudgetInput) -> None:
        # A run without a narrative model calls none: a token or USD raise changes nothing, as before.
        if self._inp.narrative is not None:
            super()._raise_model_budget(request)

    async def _pipeline(self) -> None:
        inp = self._inp
        await self._emit(
            "run.started",
            {
                "run_id": inp.run_id,
                "account_id": inp.account_id,
                "stage": inp.stage,
                "correlation_id": inp.correlation_id,
            },
        )
        as_of = workflow.now()
        period = report_period(requested=inp.inputs.report_period, as_of=as_of) if inp.stage == "realization" else None
        outcome = await self._step(
            f"agent:{inp.stage}",
            LifecycleActivities.run_stage_agent,
            StageAgentInput(
                workspace=inp.workspace,
                account_id=inp.account_id,
                stage=inp.stage,
                as_of=as_of,
                inputs=inp.inputs,
                period=period,
            ),
            timeout_s=AGENT_TIMEOUT_S,
            attempts=3,
        )
        if outcome.result is None:
            raise RunFailure(ErrorCode.AGENT_FAILED, outcome.skipped or "the agent returned no result")
        result = outcome.result
        narrative = inp.narrative
        if narrative is not None and narrative_fields(result) and workflow.patched(PATCH_LIFECYCLE_NARRATIVE):
            result = await self._narrated(result, narrative)
        gated = inp.stage == "target"
        stored = await self._step(
            "store_result",
            LifecycleActivities.store_stage_result,
            StoreStageResultInput(
                key=inp.run_id,
                workspace=inp.workspace,
                run_id=inp.run_id,
                status="pending_approval" if gated else "completed",
                result=result,
            ),
            timeout_s=STORE_TIMEOUT_S,
            attempts=5,
        )
        summary: dict[str, Any] = {**summarize(result), "docsVersion": stored.version}
        self._result = summary
        self._touch()
        if gated:
            await self._publish("draft", "Proposed targets, awaiting the business_case gate.")
            try:
                await self._gate(
                    BUSINESS_CASE_GATE,
                    "Approve the business case: its KPI targets become the account's active targets.",
                    timeout_s=inp.gate_timeout_s,
                    approvers=list(inp.gate_approvers),
                    allow_self_approval=inp.gate_allow_self_approval,
                    required_approvals=inp.gate_required_approvals,
                )
            except RunFailure:
                # The targets never become active; the page stays readable as an archived proposal.
                await self._set_status("rejected")
                await self._publish("archived", "Rejected at the business_case gate; these targets are not active.")
                self._result = {**summary, "approved": False}
                raise
            await self._set_status("approved")
            summary["approved"] = True
        page = await self._publish("published", None)
        self._result = {**summary, "docsSlug": page.slug}
        self._touch()
        await self._emit(
            "stage.completed",
            {
                "run_id": inp.run_id,
                "account_id": inp.account_id,
                "stage": inp.stage,
                "docs_slug": page.slug,
                "docs_version": page.version,
            },
        )
        if isinstance(result.output, RealizationOutput):
            await self._emit(
                "realization.updated",
                {
                    "run_id": inp.run_id,
                    "account_id": inp.account_id,
                    "overall_status": result.output.overall_status,
                    "kpis": kpi_statuses(result.output),
                    "docs_version": page.version,
                    "source": "run",
                },
            )

    async def _narrated(self, result: StageResult, narrative: LifecycleNarrative) -> StageResult:
        """The result with its narrative fields by the model, within the run's budgets; the agent's on a misfit."""
        if self._usage is None:
            # limits (QP_LIFECYCLE_LIMITS) is None in runs triggered before it was carried: their ledger is as before.
            self._usage = run_usage(narrative.budgets, narrative.limits)
        usage = self._usage
        model = narrative.model
        key = f"narrative/{result.stage}"

        async def ask(room: Headroom) -> ModelCallResult:
            return await self._ask_model(
                key,
                LifecycleModelActivities.narrate_stage,
                NarrateInput(
                    # _day_limit asks workflow.patched(PATCH_TOKENS_PER_DAY) only when the run has a daily limit.
                    **ask_fields(model, room, self._day_limit(usage)),
                    run_id=self._inp.run_id,
                    workspace=self._inp.workspace,
                    stage=result.stage,
                    step=key,
                    result=result,
                ),
                timeout_s=NARRATE_TIMEOUT_S,
                summary=f"Ask {model.model} for the narrative of the {result.stage} result",
            )

        call = await self._budgeted(usage, key, None, ask)
        outcome, reason, narrated = "narrated", None, result
        try:
            narrated = apply_narrative(result, call.answer)
        except NarrativeRejected as exc:
            # The figures never depended on the model: the agent's own words stand, and the status says why.
            outcome, reason = "kept", str(exc)
        self._record_run_call(
            call.as_record(step=key, attempt=1, role="arch", outcome=outcome, feedback=reason, at=workflow.now())
        )
        return narrated

    async def _set_status(self, status: ResultStatus) -> StoredStageResult:
        return await self._step(
            f"result:{status}",
            LifecycleActivities.set_stage_result_status,
            SetStatusInput(key=self._inp.run_id, status=status),
            timeout_s=STORE_TIMEOUT_S,
            attempts=5,
        )

    async def _publish(self, status: PageStatus, change_summary: str | None) -> PublishedPage:
        return await self._step(
            f"publish:{status}",
            LifecycleActivities.publish_stage_page,
            PublishStageInput(
                key=self._inp.run_id, workspace=self._inp.workspace, status=status, change_summary=change_summary
            ),
            timeout_s=STORE_TIMEOUT_S,
            attempts=5,
        )
