"""A repository run's documentation: generated from the worktree, linted, written, and its pages stored."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.engine import Engine

from quantapilot.db import session_scope
from quantapilot.docs.generate import generate_docs
from quantapilot.docs.lint import lint_pages
from quantapilot.docs.model import GeneratedPage
from quantapilot.docs.model_pages import grounding, model_pages
from quantapilot.docs.pages import PageContext
from quantapilot.docs.scan import normalise_output_folder
from quantapilot.docs.store import PageInput, upsert_pages
from quantapilot.docs.write import OutputConflictError, write_pages
from quantapilot.errors import ErrorCode
from quantapilot.runs.contracts import DocsInput
from quantapilot.runs.errors import permanent
from quantapilot.runs.model_contracts import ModelDocPage


def _generated(path: Path, inp: DocsInput, *, version: str, max_file_bytes: int) -> list[GeneratedPage]:
    assert inp.repo.commit_sha is not None
    return generate_docs(
        path,
        output_folder=inp.output_folder,
        project=inp.project,
        version=version,
        updated=inp.run_started_at.date().isoformat(),
        owners=inp.owners,
        commit=inp.repo.commit_sha,
        max_file_bytes=max_file_bytes,
    )


def _context(inp: DocsInput, version: str) -> PageContext:
    """The context :func:`generate_docs` gives its pages, for the model-written pages that join them."""
    owners = [o.strip() for o in inp.owners if o.strip()]
    updated = inp.run_started_at.date().isoformat()
    return PageContext(normalise_output_folder(inp.output_folder), inp.project.strip(), version, updated, owners)


async def material(path: Path, inp: DocsInput, *, version: str, max_file_bytes: int) -> dict[str, str]:
    """What a documentation model is shown: the generated pages' text (generated again from the run's commit).

    Generation is deterministic and reads the commit's git objects, so this is exactly what the documentation
    step writes, whichever worker runs it and whatever the work tree holds.
    """
    pages = await asyncio.to_thread(_generated, path, inp, version=version, max_file_bytes=max_file_bytes)
    return grounding(pages)


async def generate(
    path: Path,
    inp: DocsInput,
    *,
    version: str,
    max_file_bytes: int,
    answers: Sequence[ModelDocPage] = (),
) -> list[GeneratedPage]:
    """Generate the pages from the checked-out worktree, lint them when asked, and write them into it.

    Args:
        path: The worktree, checked out on the docs branch.
        inp: The documentation step's input.
        version: The version label of the pages.
        max_file_bytes: Largest repository file read.
        answers: Models' answers for model-written pages (``models.arch``), added after the generated pages and
            linted and written with them.

    Raises:
        StepError: ``DOCS_LINT_FAILED``, or ``PRECONDITION_FAILED`` when the output folder holds files of others.
    """
    pages = await asyncio.to_thread(_generated, path, inp, version=version, max_file_bytes=max_file_bytes)
    if answers:
        pages += model_pages(_context(inp, version), {a.page: (a.model, a.answer) for a in answers})
    if inp.lint:
        # In a thread: thousands of pages must not hold up the worker's other runs.
        issues = await asyncio.to_thread(lint_pages, pages)
        if issues:
            first = issues[0]
            raise permanent(
                ErrorCode.DOCS_LINT_FAILED,
                f"{len(issues)} lint issue(s); first: page {first.page} field {first.field}: {first.message}",
            )
    try:
        await asyncio.to_thread(write_pages, path, pages, output_folder=inp.output_folder)
    except OutputConflictError as exc:
        raise permanent(ErrorCode.PRECONDITION_FAILED, str(exc)) from None
    return pages


async def store(engine: Engine, inp: DocsInput, *, version: str, pages: list[GeneratedPage]) -> None:
    """Store the pages for the docs API (the same version again replaces them)."""
    assert inp.repo.commit_sha is not None
    commit_sha = inp.repo.commit_sha

    def _store() -> None:
        with session_scope(engine) as session:
            upsert_pages(
                session=session,
                workspace=inp.repo.workspace,
                project=inp.project,
                version=version,
                commit_sha=commit_sha,
                pages=[PageInput.from_generated(p, slug_prefix=inp.project) for p in pages],
            )

    await asyncio.to_thread(_store)
