"""The activity of lifecycle narratives: ask the arch model to word a stage result's narrative fields.

The prompt is the result as the stage agent computed it (:mod:`quantapilot.lifecycle.narrative`); the call goes
through :meth:`ModelActivities.complete` like every model call of a run, with the milestone model activity's
failure shape (retryable ``MODEL_UNAVAILABLE`` honouring ``Retry-After``, non-retryable
``MODEL_REQUEST_REJECTED``). It reads and writes nothing, so it is idempotent; the workflow records the answer
and applies it (an answer that does not fit keeps the agent's words).
"""

from __future__ import annotations

from temporalio import activity

from activities.models import CallPlace, ModelBackedActivities
from quantapilot.lifecycle.contracts import NARRATE_STAGE, NarrateInput
from quantapilot.lifecycle.narrative import build_narrative_messages
from quantapilot.llm.prompts import mask
from quantapilot.runs.budget import RECORDED_TEXT_CHARS
from quantapilot.runs.model_contracts import ModelCallResult


class LifecycleModelActivities(ModelBackedActivities):
    """Lifecycle narratives by a model, built on the model activities (their provider and secrets)."""

    @activity.defn(name=NARRATE_STAGE)
    async def narrate_stage(self, inp: NarrateInput) -> ModelCallResult:
        """Ask the model for the narrative of the stage result, unless the prompt would not fit the headroom."""
        secrets = self._models.secrets()
        messages = [
            m.model_copy(update={"content": mask(m.content, secrets)}) for m in build_narrative_messages(inp.result)
        ]
        # Whole: the workflow parses it (narratives are short; an overlong one is refused there).
        return await self.ask_answered(
            inp,
            messages,
            CallPlace(inp.run_id, inp.step, "arch", inp.workspace, heartbeat="narrate_stage"),
            answer_chars=4 * RECORDED_TEXT_CHARS,
        )
