"""Temporal contracts of model steps: the ``call_model`` activity's name, input and output."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from quantapilot.repos.config import ModelConfig
from quantapilot.runs.budget import RECORDED_TEXT_CHARS, Headroom, ModelCallRecord
from quantapilot.runs.contracts import DocsInput, RepoRef

CALL_MODEL = "call_model"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelAsk(_Model):
    """What the input of every model call says about the call: the model, how it is asked, what it may spend.

    The inputs of ``call_model`` and of the docs page, qa review and lifecycle narrative calls extend it; the
    model activities' ``ask`` reads these fields.
    """

    model: str
    temperature: float | None = None
    max_output_tokens: int | None = None
    # Headroom the workflow computed from its ledger (None: unlimited); the activity refuses a call that would not fit.
    tokens_left: int | None = None
    usd_left: float | None = None
    # limits.tokens_per_day (QP_LIFECYCLE_LIMITS' for lifecycle runs) plus the run's token grants (None: no daily
    # limit, or a run from before the limit was checked there): the activity checks the workspace's spending
    # today (model_usage) against it.
    day_limit: int | None = None


def ask_fields(model: ModelConfig, room: Headroom, day_limit: int | None) -> dict[str, Any]:
    """The :class:`ModelAsk` fields of a call of ``model`` within ``room``, by name (for the call's input).

    Args:
        model: The role's model (name, temperature, output cap).
        room: The headroom the workflow's ledger leaves for the call.
        day_limit: The daily limit plus the run's grants (None: none).
    """
    return {
        "model": model.model,
        "temperature": model.temperature,
        "max_output_tokens": model.max_output_tokens,
        "tokens_left": room.tokens,
        "usd_left": room.usd,
        "day_limit": day_limit,
    }


class _MilestoneAsk(ModelAsk):
    """A model call about one milestone of a repository run (its step, and the milestone as the plan says)."""

    repo: RepoRef
    step: str
    milestone_id: str
    title: str
    criteria: list[str]
    prompt: str


class ModelCallInput(_MilestoneAsk):
    """One call of a model step: the milestone, what came before, and what the call may spend."""

    kind: Literal["plan", "impl"]
    role: str
    plan: str | None = None
    previous_diff: str | None = None
    feedback: str | None = None
    priced: bool = False


# The fields of a call a run records unchanged (ModelCallResult.as_record); the answer is cut.
_RECORDED_AS_IS = ("model", "input_tokens", "output_tokens", "usd", "prompt", "diff")


class ModelCallResult(_Model):
    """What a call cost and answered, or why it was not made."""

    called: bool
    over_budget: Literal["tokens", "usd", "day"] | None = None
    needed_tokens: int = 0
    needed_usd: float | None = None
    # over_budget == "day": the workspace's tokens spent today, and when the next day begins.
    day_spent: int | None = None
    next_day_at: datetime | None = None
    model: str = ""
    prompt: str = ""
    answer: str = ""
    diff: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float | None = None
    response_id: str | None = None
    at: datetime | None = None

    def as_record(
        self, *, step: str, attempt: int, role: str, outcome: str, at: datetime, feedback: str | None = None
    ) -> ModelCallRecord:
        """The call as the run records it (status, review page), its answer cut to ``RECORDED_TEXT_CHARS``.

        Args:
            step: The step it served.
            attempt: Which try of the step it was.
            role: The agent role.
            outcome: What became of the answer.
            at: When the workflow recorded it (``workflow.now()``).
            feedback: The failure output that went back to the model, if any.
        """
        return ModelCallRecord(
            **{name: getattr(self, name) for name in _RECORDED_AS_IS},
            answer=self.answer[:RECORDED_TEXT_CHARS],
            step=step,
            attempt=attempt,
            role=role,
            outcome=outcome,
            feedback=feedback,
            at=at,
        )


# ----- model-written documentation pages (models.arch) ---------------------------------------------------------

CALL_DOCS_MODEL = "call_docs_model"
GENERATE_DOCUMENTATION_WITH_MODELS = "generate_documentation_with_models"
# What the workflow keeps of a documentation page's answer (the page is written from it, so more than a prompt).
DOC_ANSWER_CHARS = 64_000


class DocsModelInput(ModelAsk):
    """One model-written documentation page: what to document, which page, and what the call may spend."""

    docs: DocsInput
    page: Literal["overview", "architecture"]
    step: str
    role: str = "arch"


class ModelDocPage(_Model):
    """A model's answer for one page, as the documentation step writes it."""

    page: Literal["overview", "architecture"]
    model: str
    answer: str


class ModelDocsInput(_Model):
    """Generate the documentation and add the model-written pages, in one commit on the docs branch."""

    docs: DocsInput
    pages: list[ModelDocPage]


# ----- the QA model's review of a model milestone's diff (models.qa) ------------------------------------------

REVIEW_MODEL_DIFF = "review_model_diff"


class ReviewInput(_MilestoneAsk):
    """Ask the qa model to review the diff a model milestone applied, within what the run may still spend."""

    diff: str
    test_output: str = ""
