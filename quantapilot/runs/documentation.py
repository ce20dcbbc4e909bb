"""A repository run's documentation: generated from the worktree, linted, written, and its pages stored."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy.engine import Engine

from quantapilot.db import session_scope
from quantapilot.docs.generate import generate_docs
from quantapilot.docs.lint import lint_pages
from quantapilot.docs.model import GeneratedPage
from quantapilot.docs.store import PageInput, upsert_pages
from quantapilot.docs.write import OutputConflictError, write_pages
from quantapilot.errors import ErrorCode
from quantapilot.runs.contracts import DocsInput
from quantapilot.runs.errors import permanent


async def generate(path: Path, inp: DocsInput, *, version: str, max_file_bytes: int) -> list[GeneratedPage]:
    """Generate the pages from the checked-out worktree, lint them when asked, and write them into it.

    Raises:
        StepError: ``DOCS_LINT_FAILED``, or ``PRECONDITION_FAILED`` when the output folder holds files of others.
    """
    assert inp.repo.commit_sha is not None
    pages = await asyncio.to_thread(
        generate_docs,
        path,
        output_folder=inp.output_folder,
        project=inp.project,
        version=version,
        updated=inp.run_started_at.date().isoformat(),
        owners=inp.owners,
        commit=inp.repo.commit_sha,
        max_file_bytes=max_file_bytes,
    )
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
