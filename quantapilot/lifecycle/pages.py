"""Stage results as docs pages: ``accounts/<accountId>/<stage>``, version ``1.0.<seq>``, linked to each other."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from quantapilot.db import session_scope
from quantapilot.docs.model import RelatedLink
from quantapilot.docs.store import PageInput, upsert_pages
from quantapilot.lifecycle.contracts import DOCS_PROJECT, PublishedPage, PublishStageInput, page_slug, page_version
from quantapilot.lifecycle.models import STAGES
from quantapilot.lifecycle.render import TITLES
from quantapilot.lifecycle.service import ResultNotFound
from quantapilot.lifecycle.store import get_result


def related_links(account_id: str, stage: str) -> list[RelatedLink]:
    """Links from a stage's page to the account's other stage pages, typed by their order in the lifecycle."""
    index = STAGES.index(stage)
    links: list[RelatedLink] = []
    for i, other in enumerate(STAGES):
        if other == stage:
            continue
        kind = "prerequisite" if i == index - 1 else "next_step" if i == index + 1 else "related"
        links.append(RelatedLink(slug=page_slug(account_id, other), title=f"{TITLES[other]} report", type=kind))
    return links


def publish_stage_page(engine: Engine, inp: PublishStageInput) -> PublishedPage:
    """Publish a stored result as its account's stage page; publishing the same version again overwrites it.

    Raises:
        ResultNotFound: Nothing is stored under the key in the workspace.
    """
    with session_scope(engine) as session:
        row = get_result(session=session, key=inp.key)
        if row is None or row.workspace != inp.workspace:
            raise ResultNotFound(inp.key)
        result = row.stage_result()
        slug = page_slug(row.account_id, row.stage)
        version = page_version(row.seq)
        page = PageInput(
            slug=slug,
            title=f"{TITLES[row.stage]} report",
            description=f"{row.stage.capitalize()} result {row.seq} of account {row.account_id}.",
            markdown=result.report,
            tags=["lifecycle", row.stage],
            related=related_links(row.account_id, row.stage),
            status=inp.status,
            change_summary=inp.change_summary,
        )
        upsert_pages(
            session=session,
            workspace=row.workspace,
            project=DOCS_PROJECT,
            version=version,
            commit_sha=None,
            pages=[page],
        )
    return PublishedPage(slug=slug, version=version, status=inp.status)
