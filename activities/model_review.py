"""The activity of the QA model's review (``models.qa``): a model milestone's diff, reviewed before its gate.

The prompt is the milestone and the diff the workflow recorded (:mod:`quantapilot.llm.review_prompts`); the
call goes through :meth:`ModelActivities.complete` like every model call of a run, with the same failure shape
(retryable ``MODEL_UNAVAILABLE`` honouring ``Retry-After``, non-retryable ``MODEL_REQUEST_REJECTED``). It reads
and writes nothing, so it is idempotent.
"""

from __future__ import annotations

from temporalio import activity

from activities.models import CallPlace, ModelBackedActivities
from quantapilot.llm.review_prompts import build_review_messages
from quantapilot.runs.model_contracts import REVIEW_MODEL_DIFF, ModelCallResult, ReviewInput


class ModelReviewActivities(ModelBackedActivities):
    """Reviews by the qa model, built on the model activities (their provider and secrets)."""

    @activity.defn(name=REVIEW_MODEL_DIFF)
    async def review_model_diff(self, inp: ReviewInput) -> ModelCallResult:
        """Ask the qa model to review the diff, unless the prompt would not fit the headroom."""
        messages = build_review_messages(
            milestone_id=inp.milestone_id,
            title=inp.title,
            criteria=inp.criteria,
            prompt=inp.prompt,
            diff=inp.diff,
            test_output=inp.test_output,
            secrets=self._models.secrets(),
        )
        place = CallPlace(inp.repo.run_id, inp.step, "qa", inp.repo.workspace, heartbeat="review_model_diff")
        return await self.ask_answered(inp, messages, place)
