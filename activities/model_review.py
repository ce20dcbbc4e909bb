"""The activity of the QA model's review (``models.qa``): a model milestone's diff, reviewed before its gate.

The prompt is the milestone and the diff the workflow recorded (:mod:`quantapilot.llm.review_prompts`); the
call goes through :meth:`ModelActivities.complete` like every model call of a run, with the same failure shape
(retryable ``MODEL_UNAVAILABLE`` honouring ``Retry-After``, non-retryable ``MODEL_REQUEST_REJECTED``). It reads
and writes nothing, so it is idempotent.
"""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import activity

from activities.heartbeats import heartbeating
from activities.models import ModelActivities, fit
from quantapilot.llm import ModelRequest, cost_of
from quantapilot.llm.prompts import estimate_tokens
from quantapilot.llm.review_prompts import build_review_messages
from quantapilot.runs.budget import RECORDED_TEXT_CHARS
from quantapilot.runs.model_contracts import REVIEW_MODEL_DIFF, ModelCallResult, ReviewInput
from quantapilot.settings import Settings


class ModelReviewActivities:
    """Reviews by the qa model, built on the model activities (their provider and secrets).

    Args:
        settings: Service settings (prices).
        models: The model activities whose :meth:`~ModelActivities.complete` makes the call.
    """

    def __init__(self, settings: Settings, models: ModelActivities) -> None:
        self._settings = settings
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
        prompt_text = "\n\n".join(f"[{m.role}]\n{m.content}" for m in messages)
        needed = estimate_tokens(messages)
        day_refusal, tokens_left = await self._models.day_room(
            inp.repo.workspace, needed, day_limit=inp.day_limit, tokens_left=inp.tokens_left
        )
        if day_refusal is not None:
            return day_refusal.model_copy(update={"prompt": prompt_text[:200]})
        refused, out_cap = fit(
            needed,
            max_output_tokens=inp.max_output_tokens,
            tokens_left=tokens_left,
            usd_left=inp.usd_left,
            price=self._settings.model_prices.get(inp.model),
        )
        if refused is not None:
            return refused.model_copy(update={"prompt": prompt_text[:200]})
        request = ModelRequest(
            model=inp.model,
            messages=messages,
            temperature=inp.temperature,
            max_output_tokens=max(1, out_cap) if out_cap is not None else None,
        )
        async with heartbeating("review_model_diff"):
            reply = await self._models.complete(
                request, run_id=inp.repo.run_id, step=inp.step, role="qa", workspace=inp.repo.workspace
            )
        return ModelCallResult(
            called=True,
            model=reply.model,
            prompt=prompt_text[:RECORDED_TEXT_CHARS],
            answer=reply.text[:RECORDED_TEXT_CHARS],
            input_tokens=reply.input_tokens,
            output_tokens=reply.output_tokens,
            usd=cost_of(inp.model, reply.input_tokens, reply.output_tokens, self._settings.model_prices),
            response_id=reply.response_id,
            at=datetime.now(UTC),
        )
