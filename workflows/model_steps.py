"""Model steps of a milestone (quantapilot.yml ``prompt:``): plan, then diff, apply, test and back to the model.

The repository run calls :meth:`ModelSteps._model_milestone` for a milestone with a prompt step (guarded by
``workflow.patched("model-steps")``, so runs without one replay as before). Each call's spending is counted in the
run's ledger (:mod:`quantapilot.runs.budget`), which lives in the workflow's state and in the carry of a
continue-as-new; a call that would not fit a limit pauses the run (``run.paused``, reason ``budget_exceeded``,
with the figures) before it is made, and resuming after ``POST /v1/runs/{id}/budget {tokens, usd}`` makes it.
``limits.tokens_per_day`` (guarded by ``workflow.patched("tokens-per-day")``) is checked by the activity against the
workspace's spending today (``model_usage``); over it the run pauses the same way and resumes by itself when the
next UTC day begins (a durable timer), or earlier when resumed (after a raise).
"""

from __future__ import annotations

from temporalio import workflow

from workflows.model_qa import PATCH_MODEL_QA, ModelQa

with workflow.unsafe.imports_passed_through():
    from activities.models import ModelActivities
    from activities.repo import RepoActivities
    from quantapilot.models import MilestoneRecord, StepOutcome
    from quantapilot.repos.config import MilestoneConfig, MilestoneStep, QuantapilotConfig, StepConfig
    from quantapilot.repos.policy import step_policy
    from quantapilot.runs.budget import Headroom, RunUsage, run_usage
    from quantapilot.runs.contracts import MilestoneInput, MilestoneResult, RepoRef
    from quantapilot.runs.model_contracts import ModelCallInput, ModelCallResult, ask_fields

PATCH_MODEL_STEPS = "model-steps"
FEEDBACK_CHARS = 4000


def _feedback(steps: list[StepOutcome]) -> str:
    failed = next((s for s in reversed(steps) if s.exit_code != 0), None)
    if failed is None:
        return ""
    head = f"step {failed.name} (`{failed.command}`) exited with {failed.exit_code}"
    head += " after timing out" if failed.timed_out else ""
    return f"{head}:\n{failed.output_tail[-FEEDBACK_CHARS:]}"


class ModelSteps(ModelQa):
    """The part of the repository run that has models answer milestone steps."""

    _repo: RepoRef

    def _usage_for(self, config: QuantapilotConfig) -> RunUsage:
        if self._usage is None:
            self._usage = run_usage(config.budgets, config.limits)
        return self._usage

    @staticmethod
    def _step_budget(step: StepConfig, config: QuantapilotConfig) -> int | None:
        named = next((s for s in config.steps if s.name == step.name), None)
        return step.tokens_budget or (named.tokens_budget if named else None)

    async def _model_call(
        self,
        milestone: MilestoneConfig,
        config: QuantapilotConfig,
        step: MilestoneStep,
        *,
        attempt: int,
        plan: str | None = None,
        previous_diff: str | None = None,
        feedback: str | None = None,
    ) -> ModelCallResult:
        # config.py refuses a prompt step without models.dev.
        assert config.models is not None
        assert config.models.dev is not None
        dev = config.models.dev
        usage = self._usage_for(config)
        key = f"{milestone.id}/{step.name}"
        budget = self._step_budget(step, config)
        timeout_s, _ = step_policy(step, config)

        async def ask(room: Headroom) -> ModelCallResult:
            return await self._ask_model(
                key,
                ModelActivities.call_model,
                ModelCallInput(
                    **ask_fields(dev, room, self._day_limit(usage)),
                    repo=self._repo,
                    step=key,
                    kind="plan" if step.name == "plan" else "impl",
                    role="dev",
                    milestone_id=milestone.id,
                    title=milestone.title,
                    criteria=list(milestone.criteria),
                    prompt=step.prompt or "",
                    plan=plan,
                    previous_diff=previous_diff,
                    feedback=feedback,
                ),
                timeout_s=timeout_s,
                summary=f"Ask {dev.model} for {key} (try {attempt})",
            )

        return await self._budgeted(usage, key, budget, ask)

    async def _model_milestone(
        self,
        milestone: MilestoneConfig,
        config: QuantapilotConfig,
        record: MilestoneRecord,
        base: MilestoneInput,
        *,
        timeout_s: float,
        attempts: int,
    ) -> MilestoneResult:
        """Plan (when asked), then ask for a diff until the milestone's steps pass or the step's tries are used."""
        plan_step = next((s for s in milestone.steps if s.prompt and s.name == "plan"), None)
        impl_step = next((s for s in milestone.steps if s.prompt and s.name == "impl"), None)
        plan: str | None = None
        if plan_step is not None:
            planned = await self._model_call(milestone, config, plan_step, attempt=1)
            plan = planned.answer
            self._record_call(record, f"{milestone.id}/plan", 1, planned, "plan")
        run_name = f"milestone:{milestone.id}"
        summary = f"Milestone {milestone.id}: {milestone.title} ({len(base.steps)} steps)"
        if impl_step is None:
            planned_only: MilestoneResult = await self._step(
                run_name, RepoActivities.run_milestone, base, timeout_s=timeout_s, attempts=attempts, summary=summary
            )
            return planned_only
        _, tries = step_policy(impl_step, config)
        key = f"{milestone.id}/impl"
        previous: str | None = None
        feedback: str | None = None
        result: MilestoneResult | None = None
        for attempt in range(1, tries + 1):
            call = await self._model_call(
                milestone, config, impl_step, attempt=attempt, plan=plan, previous_diff=previous, feedback=feedback
            )
            result = await self._step(
                run_name,
                RepoActivities.run_milestone,
                base.model_copy(update={"patch": call.diff or ""}),
                timeout_s=timeout_s,
                attempts=attempts,
                summary=f"{summary}, the model's diff {attempt} of {tries}",
            )
            if result.failed_step is None:
                self._record_call(record, key, attempt, call, "applied")
                qa = config.models.qa if config.models else None
                if qa is not None and call.diff and workflow.patched(PATCH_MODEL_QA):
                    usage = self._usage_for(config)
                    await self._qa_review(
                        milestone, qa, usage, record, prompt=impl_step.prompt or "", diff=call.diff, result=result
                    )
                return result
            feedback = _feedback(result.steps)
            not_applied = result.failed_step == "impl" and result.steps[-1].command == "git apply"
            self._record_call(record, key, attempt, call, "not_applied" if not_applied else "tests_failed", feedback)
            record.steps = list(result.steps)
            previous = call.diff
        assert result is not None
        return result
