"""The activity of model-written documentation pages (``models.arch``): ground the prompt, check the budget, call.

The prompt is built from what the deterministic generator extracts at the run's commit (generated again here: it
is deterministic and reads git objects, so it is what the documentation step writes) and the call goes through
:meth:`ModelActivities.complete` like every model call of a run. Failures have the milestone model activity's
shape: a transient provider failure raises a retryable ``MODEL_UNAVAILABLE`` (``Retry-After`` as the next retry
delay), a refused request a non-retryable ``MODEL_REQUEST_REJECTED``, an empty answer a non-retryable
``MODEL_ANSWER_REJECTED``. The activity changes nothing (no worktree, no database), so it is idempotent: the
workflow keeps the answer of the attempt that succeeded, and the documentation step writes the pages from it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeats import heartbeating
from activities.models import ModelActivities, fit
from activities.repo import reported
from quantapilot.docs.model_pages import MODEL_PAGES
from quantapilot.errors import ErrorCode
from quantapilot.forges import gitops
from quantapilot.llm import ModelRequest, cost_of
from quantapilot.llm.doc_prompts import build_doc_messages
from quantapilot.llm.prompts import estimate_tokens
from quantapilot.repos.files import RepoReadError
from quantapilot.runs import documentation
from quantapilot.runs.budget import RECORDED_TEXT_CHARS
from quantapilot.runs.errors import permanent
from quantapilot.runs.model_contracts import CALL_DOCS_MODEL, DOC_ANSWER_CHARS, DocsModelInput, ModelCallResult
from quantapilot.runs.worktree import Worktrees
from quantapilot.settings import Settings


class ModelDocsActivities:
    """Documentation pages written by a model, built on the model activities (their provider and secrets).

    Args:
        settings: Service settings (prompt limits, prices, file size cap).
        worktrees: The worker's worktrees (shared with the repository activities, and so their per-run locks).
        models: The model activities whose :meth:`~ModelActivities.complete` makes the call.
    """

    def __init__(self, settings: Settings, worktrees: Worktrees, models: ModelActivities) -> None:
        self._settings = settings
        self._worktrees = worktrees
        self._models = models
        self._git_protocols = gitops.protocols_for(settings.allowed_repo_patterns)

    @activity.defn(name=CALL_DOCS_MODEL)
    async def call_docs_model(self, inp: DocsModelInput) -> ModelCallResult:
        """Ask the arch model for one documentation page, grounded in the generated pages of the run's commit."""
        gitops.restrict_protocols(self._git_protocols)
        settings = self._settings
        docs = inp.docs
        assert docs.repo.commit_sha is not None
        version = f"git-{docs.repo.commit_sha[:12]}"
        with reported():
            async with (
                self._worktrees.lock(docs.repo.run_id),
                heartbeating("call_docs_model"),
                self._worktrees.network(docs.repo),
            ):
                path = await self._worktrees.ensure(docs.repo)
                try:
                    material = await documentation.material(
                        path, docs, version=version, max_file_bytes=settings.repo_max_file_bytes
                    )
                except RepoReadError as exc:
                    raise permanent(ErrorCode.PRECONDITION_FAILED, f"repository not readable: {exc}") from None
        messages = build_doc_messages(
            project=docs.project,
            task=MODEL_PAGES[inp.page].task,
            material=material,
            total_bytes=settings.model_prompt_total_bytes,
            secrets=self._models.secrets(),
        )
        prompt_text = "\n\n".join(f"[{m.role}]\n{m.content}" for m in messages)
        needed = estimate_tokens(messages)
        day_refusal, tokens_left = await self._models.day_room(
            docs.repo.workspace, needed, day_limit=inp.day_limit, tokens_left=inp.tokens_left
        )
        if day_refusal is not None:
            return day_refusal.model_copy(update={"prompt": prompt_text[:200]})
        refused, out_cap = fit(
            needed,
            max_output_tokens=inp.max_output_tokens,
            tokens_left=tokens_left,
            usd_left=inp.usd_left,
            price=settings.model_prices.get(inp.model),
        )
        if refused is not None:
            # Not made: the workflow pauses the run with these figures (budget_exceeded) and asks again on resume.
            return refused.model_copy(update={"prompt": prompt_text[:200]})
        request = ModelRequest(
            model=inp.model,
            messages=messages,
            temperature=inp.temperature,
            max_output_tokens=max(1, out_cap) if out_cap is not None else None,
        )
        reply = await self._models.complete(
            request, run_id=docs.repo.run_id, step=inp.step, role=inp.role, workspace=docs.repo.workspace
        )
        if not reply.text.strip():
            # The same request would most likely get the same nothing: fail for a person to look at.
            raise ApplicationError(
                f"the model {reply.model} answered no text for the {inp.page} page",
                type=ErrorCode.MODEL_ANSWER_REJECTED,
                non_retryable=True,
            )
        return ModelCallResult(
            called=True,
            model=reply.model,
            prompt=prompt_text[:RECORDED_TEXT_CHARS],
            answer=reply.text[:DOC_ANSWER_CHARS],
            input_tokens=reply.input_tokens,
            output_tokens=reply.output_tokens,
            usd=cost_of(inp.model, reply.input_tokens, reply.output_tokens, settings.model_prices),
            response_id=reply.response_id,
            at=datetime.now(UTC),
        )
