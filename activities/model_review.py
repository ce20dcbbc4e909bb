"""The activity of the QA model's review (``models.qa``): a model milestone's diff, reviewed before its gate.

The prompt is the milestone and the diff the workflow recorded (:mod:`quantapilot.llm.review_prompts`); the
call goes through :meth:`ModelActivities.complete` like every model call of a run, with the same failure shape
(retryable ``MODEL_UNAVAILABLE`` honouring ``Retry-After``, non-retryable ``MODEL_REQUEST_REJECTED``). It reads
and writes nothing, so it is idempotent.
"""

from __future__ import annotations

from temporalio import activity

from activities.models import ModelActivities
from quantapilot.llm.review_prompts import build_review_messages
from quantapilot.runs.model_contracts import REVIEW_MODEL_DIFF, ModelCallResult, ReviewInput


class ModelReviewActivities:
    """Reviews by the qa model, built on the model activities (their provider and secrets).

    Args:
        models: The model activities whose :meth:`~ModelActivities.ask` makes the call (and prices it).
    """

    def __init__(self, models: ModelActivities) -> None:
        self._models = models

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
        prompt, reply = await self._models.ask(
            inp,
            messages,
            run_id=inp.repo.run_id,
            step=inp.step,
            role="qa",
            workspace=inp.repo.workspace,
            heartbeat="review_model_diff",
        )
        if isinstance(reply, ModelCallResult):
            return reply
        return self._models.answered(inp, prompt, reply)
