"""Handlers of the docs pages: one page by slug and version, and listings by project.

Pages of other workspaces do not exist for the caller (404, as unknown slugs). Slugs are paths checked by
:func:`quantapilot.docs.store.validate_slug`, so ``..`` and empty segments never reach the store (422).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from sqlalchemy.engine import Engine
from sqlmodel import Session

from api.keys import ENGINE
from api.registry import Call
from quantapilot.docs.render import FrontMatterError, split_front_matter
from quantapilot.docs.store import (
    MAX_VERSION_LENGTH,
    DocPageRecord,
    PageSummary,
    get_page,
    list_pages,
    list_versions,
    validate_slug,
)
from quantapilot.docs.views import DocsPage, DocsPageList, PageContent, PageLink, PageListing
from quantapilot.errors import ApiError, ErrorCode, not_found

MAX_PROJECT_LENGTH = 200
DEPRECATED_STATUSES = frozenset({"archived", "deprecated"})


def deprecation_notice(record: DocPageRecord) -> str | None:
    """The notice shown on an archived page, or on one whose front matter says ``status: deprecated``."""
    try:
        front, _body = split_front_matter(record.markdown)
    except FrontMatterError:
        front = {}
    front_status = front.get("status")
    if record.status not in DEPRECATED_STATUSES and front_status not in DEPRECATED_STATUSES:
        return None
    explicit = front.get("deprecation_notice") or front.get("deprecationNotice")
    if isinstance(explicit, str) and explicit.strip():
        return explicit.strip()
    if record.change_summary:
        return record.change_summary
    return f"Version {record.version} of this page is {record.status if record.status == 'archived' else 'deprecated'}."


def page_json(record: DocPageRecord, versions: list[str]) -> dict[str, Any]:
    """A page as the API returns it (camelCase)."""
    return DocsPage(
        slug=record.slug,
        title=record.title,
        description=record.description,
        project=record.project,
        version=record.version,
        versions=versions,
        status=record.status,
        tags=list(record.tags),
        updated=record.updated_at,
        created=record.created_at,
        commit_sha=record.commit_sha,
        change_summary=record.change_summary,
        deprecation_notice=deprecation_notice(record),
        content_type=record.content_type,
        content=PageContent(markdown=record.markdown, html=record.html),
        related=[
            PageLink(slug=str(r.get("slug", "")), title=str(r.get("title", "")), type=str(r.get("type", "related")))
            for r in record.related
        ],
    ).dump()


def _load_page(engine: Engine, workspace: str, slug: str, version: str | None) -> dict[str, Any] | None:
    with Session(engine) as session:
        record = get_page(session=session, workspace=workspace, slug=slug, version=version)
        if record is None:
            return None
        return page_json(record, list_versions(session=session, workspace=workspace, slug=slug))


async def get_docs_page(request: web.Request, call: Call) -> web.Response:
    """One page: the latest version, or ``?version=``; metadata, Markdown and HTML, typed related links."""
    principal = call.principal
    slug = request.match_info["slug"]
    try:
        validate_slug(slug)
    except ValueError as exc:
        raise ApiError(
            422, ErrorCode.VALIDATION_ERROR, "invalid page slug", details=[{"path": "slug", "message": str(exc)}]
        ) from None
    version = request.query.get("version")
    if version is not None and not 0 < len(version) <= MAX_VERSION_LENGTH:
        raise ApiError(422, ErrorCode.VALIDATION_ERROR, f"version must be 1-{MAX_VERSION_LENGTH} characters")
    page = await asyncio.to_thread(_load_page, request.app[ENGINE], principal.workspace, slug, version)
    if page is None:
        raise not_found("page" if version is None else "page version")
    return web.json_response(page)


def _summary(summary: PageSummary) -> PageListing:
    return PageListing(
        slug=summary.slug,
        project=summary.project,
        title=summary.title,
        description=summary.description,
        status=summary.status,
        versions=summary.versions,
        latest=summary.latest,
        updated=summary.updated_at,
    )


def _list(engine: Engine, workspace: str, project: str | None) -> list[PageSummary]:
    with Session(engine) as session:
        return list_pages(session=session, workspace=workspace, project=project)


async def list_docs_pages(request: web.Request, call: Call) -> web.Response:
    """Pages of the caller's workspace (``?project=`` for one project), each with its versions and latest."""
    principal = call.principal
    project = request.query.get("project")
    if project is not None and not 0 < len(project) <= MAX_PROJECT_LENGTH:
        raise ApiError(422, ErrorCode.VALIDATION_ERROR, f"project must be 1-{MAX_PROJECT_LENGTH} characters")
    pages = await asyncio.to_thread(_list, request.app[ENGINE], principal.workspace, project)
    return call.answer(DocsPageList(project=project, pages=[_summary(p) for p in pages]))
