"""The activity of lifecycle narratives: ask the arch model to word a stage result's narrative fields.

The prompt is the result as the stage agent computed it (:mod:`quantapilot.lifecycle.narrative`); the call goes
through :meth:`ModelActivities.complete` like every model call of a run, with the milestone model activity's
failure shape (retryable ``MODEL_UNAVAILABLE`` honouring ``Retry-After``, non-retryable
``MODEL_REQUEST_REJECTED``). It reads and writes nothing, so it is idempotent; the workflow records the answer
and applies it (an answer that does not fit keeps the agent's words).
"""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import activity

from activities.heartbeats import heartbeating
from activities.models import ModelActivities, fit
from quantapilot.lifecycle.contracts import NARRATE_STAGE, NarrateInput
from quantapilot.lifecycle.narrative import build_narrative_messages
from quantapilot.llm import ModelRequest, cost_of
from quantapilot.llm.prompts import estimate_tokens, mask
from quantapilot.runs.budget import RECORDED_TEXT_CHARS
from quantapilot.runs.model_contracts import ModelCallResult
from quantapilot.settings import Settings


class LifecycleModelActivities:
    """Lifecycle narratives by a model, built on the model activities (their provider and secrets).

    Args:
        settings: Service settings (prices).
        models: The model activities whose :meth:`~ModelActivities.complete` makes the call.
    """

    def __init__(self, settings: Settings, models: ModelActivities) -> None:
        self._settings = settings
        self._models = models

    @activity.defn(name=NARRATE_STAGE)
    async def narrate_stage(self, inp: NarrateInput) -> ModelCallResult:
        """Ask the model for the narrative of the stage result, unless the prompt would not fit the headroom."""
        secrets = self._models.secrets()
        messages = [
            m.model_copy(update={"content": mask(m.content, secrets)}) for m in build_narrative_messages(inp.result)
        ]
        prompt_text = "\n\n".join(f"[{m.role}]\n{m.content}" for m in messages)
        refused, out_cap = fit(
            estimate_tokens(messages),
            max_output_tokens=inp.max_output_tokens,
            tokens_left=inp.tokens_left,
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
        async with heartbeating("narrate_stage"):
            reply = await self._models.complete(
                request, run_id=inp.run_id, step=inp.step, role="arch", workspace=inp.workspace
            )
        return ModelCallResult(
            called=True,
            model=reply.model,
            prompt=prompt_text[:RECORDED_TEXT_CHARS],
            # Whole: the workflow parses it (narratives are short; an overlong one is refused there).
            answer=reply.text[: 4 * RECORDED_TEXT_CHARS],
            input_tokens=reply.input_tokens,
            output_tokens=reply.output_tokens,
            usd=cost_of(inp.model, reply.input_tokens, reply.output_tokens, self._settings.model_prices),
            response_id=reply.response_id,
            at=datetime.now(UTC),
        )
