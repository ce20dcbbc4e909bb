"""Model-written documentation pages of the repository run (``models.arch`` in quantapilot.yml).

With ``models.arch`` set, the documentation step asks the arch model for an overview and an architecture page,
each grounded in what the deterministic generator extracted (``call_docs_model``), then generates the
documentation with those pages added, in one commit (``generate_documentation_with_models``). The calls go through
the run's ledger like milestone model calls (:meth:`ModelSteps._budgeted`): ``steps[doc].tokens_budget``,
``budgets`` and ``limits`` apply, an overrun pauses the run (``budget_exceeded``), and the calls are recorded in
the run status (``model_calls``). Guarded by ``workflow.patched("model-docs")``, asked only when
``models.arch`` is set, so runs without it take today's path and record no marker.
"""

from __future__ import annotations

from temporalio import workflow

from workflows.model_steps import ModelSteps

with workflow.unsafe.imports_passed_through():
    from activities.model_docs import ModelDocsActivities
    from activities.repo import RepoActivities
    from quantapilot.docs.model_pages import MODEL_PAGES, ModelPageKind
    from quantapilot.repos.config import ModelConfig, QuantapilotConfig
    from quantapilot.runs.budget import Headroom
    from quantapilot.runs.contracts import DocsInput, DocsResult
    from quantapilot.runs.model_contracts import (
        DocsModelInput,
        ModelCallResult,
        ModelDocPage,
        ModelDocsInput,
        ask_fields,
    )

PATCH_MODEL_DOCS = "model-docs"
# The ledger's key of the documentation step: steps[doc].tokens_budget covers both pages.
DOC_STEP = "doc"


class ModelDocs(ModelSteps):
    """The part of the repository run that has a model write documentation pages."""

    def _doc_budget(self, config: QuantapilotConfig) -> int | None:
        named = next((s for s in config.steps if s.name == DOC_STEP), None)
        return named.tokens_budget if named else None

    async def _ask_docs_model(
        self,
        room: Headroom,
        *,
        docs: DocsInput,
        page: ModelPageKind,
        arch: ModelConfig,
        timeout_s: float,
        day_limit: int | None,
    ) -> ModelCallResult:
        key = f"{DOC_STEP}/{page}"
        return await self._ask_model(
            key,
            ModelDocsActivities.call_docs_model,
            DocsModelInput(**ask_fields(arch, room, day_limit), docs=docs, page=page, step=key),
            timeout_s=timeout_s,
            summary=f"Ask {arch.model} for the {page} page",
        )

    async def _documented_by_models(
        self, config: QuantapilotConfig, docs: DocsInput, *, timeout_s: float, attempts: int
    ) -> DocsResult:
        """Ask the arch model for each page within the budgets, then generate the docs with its pages added."""
        assert config.models is not None
        assert config.models.arch is not None
        arch = config.models.arch
        usage = self._usage_for(config)
        budget = self._doc_budget(config)
        answers: list[ModelDocPage] = []
        for page in MODEL_PAGES:

            async def ask(room: Headroom, page: ModelPageKind = page) -> ModelCallResult:
                return await self._ask_docs_model(
                    room, docs=docs, page=page, arch=arch, timeout_s=timeout_s, day_limit=self._day_limit(usage)
                )

            call = await self._budgeted(usage, DOC_STEP, budget, ask)
            self._record_doc_call(page, call)
            answers.append(ModelDocPage(page=page, model=call.model or arch.model, answer=call.answer))
        result: DocsResult = await self._step(
            "generate_docs",
            RepoActivities.generate_documentation_with_models,
            ModelDocsInput(docs=docs, pages=answers),
            timeout_s=timeout_s,
            attempts=attempts,
            summary=f"Generate the documentation into {docs.output_folder}, with {len(answers)} model-written pages",
        )
        return result

    def _record_doc_call(self, page: ModelPageKind, call: ModelCallResult) -> None:
        record = call.as_record(step=f"{DOC_STEP}/{page}", attempt=1, role="arch", outcome="written", at=workflow.now())
        self._record_run_call(record)
