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

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.models import CallPlace, ModelActivities, ModelBackedActivities
from activities.repo import networked_worktree
from quantapilot.docs.model_pages import MODEL_PAGES
from quantapilot.errors import ErrorCode
from quantapilot.forges import gitops
from quantapilot.llm import ModelReply
from quantapilot.llm.doc_prompts import build_doc_messages
from quantapilot.repos.files import RepoReadError
from quantapilot.runs import documentation
from quantapilot.runs.errors import permanent
from quantapilot.runs.model_contracts import CALL_DOCS_MODEL, DOC_ANSWER_CHARS, DocsModelInput, ModelCallResult
from quantapilot.runs.worktree import Worktrees
from quantapilot.settings import Settings


class ModelDocsActivities(ModelBackedActivities):
    """Documentation pages written by a model, built on the model activities (their provider and secrets).

    Args:
        settings: Service settings (prompt limits, prices, file size cap).
        worktrees: The worker's worktrees (shared with the repository activities, and so their per-run locks).
        models: The model activities whose :meth:`~ModelActivities.complete` makes the call.
    """

    def __init__(self, settings: Settings, worktrees: Worktrees, models: ModelActivities) -> None:
        super().__init__(models)
        self._settings = settings
        self._worktrees = worktrees
        self._git_protocols = gitops.protocols_for(settings.allowed_repo_patterns)

    @activity.defn(name=CALL_DOCS_MODEL)
    async def call_docs_model(self, inp: DocsModelInput) -> ModelCallResult:
        """Ask the arch model for one documentation page, grounded in the generated pages of the run's commit."""
        settings = self._settings
        docs = inp.docs
        assert docs.repo.commit_sha is not None
        version = f"git-{docs.repo.commit_sha[:12]}"
        async with networked_worktree(
            self._worktrees, docs.repo, "call_docs_model", protocols=self._git_protocols
        ) as path:
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

        def _not_empty(reply: ModelReply) -> None:
            if not reply.text.strip():
                # The same request would most likely get the same nothing: fail for a person to look at.
                raise ApplicationError(
                    f"the model {reply.model} answered no text for the {inp.page} page",
                    type=ErrorCode.MODEL_ANSWER_REJECTED,
                    non_retryable=True,
                )

        place = CallPlace(docs.repo.run_id, inp.step, inp.role, docs.repo.workspace)
        return await self.ask_answered(inp, messages, place, answer_chars=DOC_ANSWER_CHARS, accept=_not_empty)
