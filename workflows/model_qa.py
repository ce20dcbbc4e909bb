"""The QA model's review of a model milestone's diff (``models.qa``), before the milestone's gate.

When a milestone's diff came from the dev model and passed its steps, the qa model reviews it
(``review_model_diff``) within the run's budgets (:meth:`ModelBudget._budgeted`). The review is advice: it is
recorded with the milestone's model calls (role ``qa``, outcome ``approve``, ``request_changes`` or ``comment``)
and named in the gate's description, and the people at the gate decide. Guarded by
``workflow.patched("model-qa")``, asked only when ``models.qa`` is set, so other runs record no marker.
"""

from __future__ import annotations

from temporalio import workflow

from workflows.model_budget import ModelBudget

with workflow.unsafe.imports_passed_through():
    from activities.model_review import ModelReviewActivities
    from quantapilot.llm.review_prompts import parse_verdict
    from quantapilot.models import MilestoneRecord
    from quantapilot.repos.config import MilestoneConfig, ModelConfig
    from quantapilot.runs.budget import Headroom, RunUsage
    from quantapilot.runs.contracts import MilestoneResult, RepoRef
    from quantapilot.runs.model_contracts import ModelCallResult, ReviewInput, ask_fields

PATCH_MODEL_QA = "model-qa"
REVIEW_TIMEOUT_S = 300.0
QA_ROLE = "qa"


def qa_note(record: MilestoneRecord) -> str | None:
    """What the gate's description says of the milestone's QA review; None when it had none."""
    review = next((c for c in reversed(record.model_calls) if c.role == QA_ROLE), None)
    if review is None:
        return None
    return f"QA review by {review.model}: {review.outcome.replace('_', ' ')} (see the milestone's model calls)."


class ModelQa(ModelBudget):
    """The part of the repository run that has the qa model review a model milestone's diff."""

    _repo: RepoRef

    async def _qa_review(
        self,
        milestone: MilestoneConfig,
        qa: ModelConfig,
        usage: RunUsage,
        record: MilestoneRecord,
        *,
        prompt: str,
        diff: str,
        result: MilestoneResult,
    ) -> None:
        key = f"{milestone.id}/qa"
        output = "\n".join(f"$ {s.command} (exit {s.exit_code})\n{s.output_tail}" for s in result.steps)

        async def ask(room: Headroom) -> ModelCallResult:
            return await self._ask_model(
                key,
                ModelReviewActivities.review_model_diff,
                ReviewInput(
                    **ask_fields(qa, room, self._day_limit(usage)),
                    repo=self._repo,
                    step=key,
                    milestone_id=milestone.id,
                    title=milestone.title,
                    criteria=list(milestone.criteria),
                    prompt=prompt,
                    diff=diff,
                    test_output=output,
                ),
                timeout_s=REVIEW_TIMEOUT_S,
                summary=f"Ask {qa.model} to review the diff of {milestone.id}",
            )

        call = await self._budgeted(usage, key, None, ask)
        self._record_call(record, key, 1, call, parse_verdict(call.answer), role=QA_ROLE)

    def _record_call(
        self,
        record: MilestoneRecord,
        key: str,
        attempt: int,
        call: ModelCallResult,
        outcome: str,
        feedback: str | None = None,
        *,
        role: str = "dev",
    ) -> None:
        """Add a model call to the milestone's record (the dev model's unless ``role`` says otherwise)."""
        record.model_calls = [
            *record.model_calls,
            call.as_record(step=key, attempt=attempt, role=role, outcome=outcome, feedback=feedback, at=workflow.now()),
        ]
        self._touch()
