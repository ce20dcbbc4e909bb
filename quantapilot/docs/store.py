"""Docs page store: the ``doc_pages`` table, one row per workspace, project, slug and version.

Pages come from two producers: generated repository documentation (``<project>/api/pkg.mod``) and lifecycle
reports (``accounts/<id>/realization``). Each write renders the Markdown to HTML once, so readers never render.

Which version is "latest": among the published versions of a slug (all versions when none is published), the
highest semantic version when every candidate's label parses as one (``1.2.0``, ``v2``, ``1.0.0-rc.1``);
otherwise, with labels such as short commit shas, the most recently updated one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import JSON, Column, Index, String, Text, UniqueConstraint
from sqlalchemy import select as sa_select
from sqlmodel import Field as SQLField
from sqlmodel import Session, SQLModel, col, select

from quantapilot.db import UtcDateTime, utcnow
from quantapilot.docs.model import GeneratedPage, RelatedLink
from quantapilot.docs.render import render_html

PageStatus = Literal["draft", "published", "archived"]

MAX_SLUG_LENGTH = 300
MAX_VERSION_LENGTH = 100
MAX_TITLE_LENGTH = 300
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9._/-]*$")
# Batch size for ``IN (...)`` lookups; well under every backend's bound-parameter limit.
_IN_CHUNK = 500


def validate_slug(slug: str) -> str:
    """Check a page slug: lowercase ``[a-z0-9._/-]``, starting with a letter or digit, at most 300 characters.

    Slugs are paths (``accounts/<id>/realization``, ``<project>/api/pkg.mod``); empty, ``.`` and ``..``
    segments are refused so a slug can never climb out of its prefix.

    Args:
        slug: The candidate slug.

    Returns:
        The slug, unchanged.

    Raises:
        ValueError: The slug is not valid.
    """
    if not isinstance(slug, str) or not slug:
        raise ValueError("slug must be a non-empty string")
    if len(slug) > MAX_SLUG_LENGTH:
        raise ValueError(f"slug longer than {MAX_SLUG_LENGTH} characters")
    if not _SLUG_RE.match(slug):
        raise ValueError("slug must be lowercase letters, digits, '.', '_', '-' and '/', starting with [a-z0-9]")
    if ".." in slug or any(part in ("", ".") for part in slug.split("/")):
        raise ValueError("slug must not contain '..', empty or '.' segments, or end with '/'")
    return slug


class DocPageRecord(SQLModel, table=True):
    """One version of one docs page."""

    __tablename__ = "doc_pages"
    __table_args__ = (
        UniqueConstraint("workspace", "project", "slug", "version", name="uq_doc_pages_ws_project_slug_version"),
        Index("ix_doc_pages_workspace_slug", "workspace", "slug"),
    )

    id: str = SQLField(default_factory=lambda: uuid.uuid4().hex, primary_key=True, max_length=32)
    workspace: str = SQLField(sa_column=Column(String(128), nullable=False))
    project: str = SQLField(sa_column=Column(String(200), nullable=False))
    slug: str = SQLField(sa_column=Column(String(MAX_SLUG_LENGTH), nullable=False))
    version: str = SQLField(sa_column=Column(String(MAX_VERSION_LENGTH), nullable=False))
    commit_sha: str | None = SQLField(default=None, sa_column=Column(String(64), nullable=True))
    title: str = SQLField(sa_column=Column(String(MAX_TITLE_LENGTH), nullable=False))
    description: str = SQLField(default="", sa_column=Column(Text, nullable=False))
    markdown: str = SQLField(sa_column=Column(Text, nullable=False))
    html: str = SQLField(sa_column=Column(Text, nullable=False))
    content_type: str = SQLField(default="markdown", sa_column=Column(String(32), nullable=False))
    status: str = SQLField(default="published", sa_column=Column(String(16), nullable=False))
    tags: list[str] = SQLField(default_factory=list, sa_column=Column(JSON, nullable=False))
    related: list[dict[str, Any]] = SQLField(default_factory=list, sa_column=Column(JSON, nullable=False))
    change_summary: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = SQLField(default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False))
    updated_at: datetime = SQLField(default_factory=utcnow, sa_column=Column(UtcDateTime(), nullable=False))


class PageInput(BaseModel):
    """What a producer hands the store for one page; the HTML is rendered on write."""

    slug: str
    title: str = Field(min_length=1, max_length=MAX_TITLE_LENGTH)
    description: str = ""
    markdown: str
    tags: list[str] = Field(default_factory=list)
    related: list[RelatedLink] = Field(default_factory=list)
    status: PageStatus = "published"
    change_summary: str | None = None

    @field_validator("slug")
    @classmethod
    def _check_slug(cls, value: str) -> str:
        return validate_slug(value)

    @field_validator("related")
    @classmethod
    def _check_related(cls, value: list[RelatedLink]) -> list[RelatedLink]:
        for link in value:
            validate_slug(link.slug)
        return value

    @classmethod
    def from_generated(
        cls,
        page: GeneratedPage,
        *,
        slug_prefix: str = "",
        status: PageStatus = "published",
        change_summary: str | None = None,
    ) -> PageInput:
        """Build the store input for a generated page.

        Args:
            page: A page from :func:`quantapilot.docs.generate.generate_docs`.
            slug_prefix: Prefix for the page's slug and its related links, usually the project
                (``"myproj"`` turns ``api/pkg.mod`` into ``myproj/api/pkg.mod``).
            status: Publication status.
            change_summary: What changed since the previous version, if known.

        Returns:
            The page input.
        """
        prefix = slug_prefix.strip("/")

        def full(slug: str) -> str:
            return f"{prefix}/{slug}" if prefix else slug

        return cls(
            slug=full(page.slug),
            title=page.title,
            description=page.description,
            markdown=page.markdown,
            tags=list(page.tags),
            related=[RelatedLink(slug=full(r.slug), title=r.title, type=r.type) for r in page.related],
            status=status,
            change_summary=change_summary,
        )


class PageSummary(BaseModel):
    """A page in a listing: its versions, oldest first, and which one is the latest."""

    slug: str
    project: str
    title: str
    description: str
    status: PageStatus
    versions: list[str]
    latest: str
    updated_at: datetime


# --- version ordering ------------------------------------------------------------------------------------

_SEMVER_RE = re.compile(
    r"^v?(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$"
)

_SemverKey = tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]


def semver_key(label: str) -> _SemverKey | None:
    """Sort key for a semantic version label, or ``None`` when the label is not one.

    Missing minor/patch parts count as 0 and a pre-release sorts before its release, as SemVer 2.0 orders them.

    Args:
        label: A version label such as ``1.2.3``, ``v2.0`` or ``1.0.0-rc.1``.

    Returns:
        A comparable key, or ``None``.
    """
    m = _SEMVER_RE.match(label)
    if m is None:
        return None
    major, minor, patch, pre = m.group(1), m.group(2), m.group(3), m.group(4)
    pre_key: tuple[tuple[int, int, str], ...] = ()
    if pre:
        # Numeric identifiers sort numerically and before alphanumeric ones.
        pre_key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (int(major), int(minor or 0), int(patch or 0), 0 if pre else 1, pre_key)


@dataclass(frozen=True, slots=True)
class _VersionRow:
    id: str
    project: str
    slug: str
    version: str
    title: str
    description: str
    status: str
    updated_at: datetime


def _ordered(rows: Sequence[_VersionRow]) -> list[_VersionRow]:
    """Rows oldest to newest: by semantic version when all labels parse, else by update time."""
    keys = [semver_key(r.version) for r in rows]
    if rows and all(k is not None for k in keys):
        paired = sorted(zip(keys, rows, strict=True), key=lambda kr: (kr[0], kr[1].updated_at, kr[1].id))
        return [r for _k, r in paired]
    return sorted(rows, key=lambda r: (r.updated_at, r.version, r.id))


def _latest(rows: Sequence[_VersionRow]) -> _VersionRow | None:
    published = [r for r in rows if r.status == "published"]
    ordered = _ordered(published or rows)
    return ordered[-1] if ordered else None


def _version_rows(session: Session, *conditions: Any) -> list[_VersionRow]:
    # Only the small columns: listings and "latest" lookups must not load every page's Markdown and HTML.
    # sqlmodel's select is typed for at most four columns; SQLAlchemy's takes any number.
    stmt = sa_select(
        col(DocPageRecord.id),
        col(DocPageRecord.project),
        col(DocPageRecord.slug),
        col(DocPageRecord.version),
        col(DocPageRecord.title),
        col(DocPageRecord.description),
        col(DocPageRecord.status),
        col(DocPageRecord.updated_at),
    ).where(*conditions)
    # The session's connection keeps us in its transaction; flush first so pending writes are visible.
    session.flush()
    return [_VersionRow(*row) for row in session.connection().execute(stmt).all()]


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- data functions --------------------------------------------------------------------------------------


def _check_label(name: str, value: str, limit: int) -> None:
    if not value.strip() or len(value) > limit:
        raise ValueError(f"{name} must be a non-empty string of at most {limit} characters")


def upsert_pages(
    *,
    session: Session,
    workspace: str,
    project: str,
    version: str,
    commit_sha: str | None,
    pages: Sequence[PageInput],
) -> int:
    """Insert or overwrite pages of one project version; the same key always lands on the same row.

    Rows whose content did not change keep their ``updated_at``, so re-running a publication does not move
    "latest". The caller's session commits (``session_scope``); this function only flushes.

    Args:
        session: The database session.
        workspace: Owning workspace.
        project: Project the pages belong to.
        version: Version label (``1.0.0`` or a short commit label).
        commit_sha: Commit the pages were generated from, if any.
        pages: The pages; slugs must be unique within the call.

    Returns:
        The number of pages written.

    Raises:
        ValueError: Empty labels, an invalid slug or a slug given twice.
    """
    _check_label("workspace", workspace, 128)
    _check_label("project", project, 200)
    _check_label("version", version, MAX_VERSION_LENGTH)
    slugs = [validate_slug(p.slug) for p in pages]
    if len(set(slugs)) != len(slugs):
        raise ValueError("the same slug appears twice in one upsert")
    existing: dict[str, DocPageRecord] = {}
    for chunk in _chunks(slugs, _IN_CHUNK):
        stmt = select(DocPageRecord).where(
            DocPageRecord.workspace == workspace,
            DocPageRecord.project == project,
            DocPageRecord.version == version,
            col(DocPageRecord.slug).in_(chunk),
        )
        existing.update({rec.slug: rec for rec in session.exec(stmt).all()})
    now = utcnow()
    for page in pages:
        values: dict[str, Any] = {
            "commit_sha": commit_sha,
            "title": page.title,
            "description": page.description,
            "markdown": page.markdown,
            "html": render_html(page.markdown),
            "content_type": "markdown",
            "status": page.status,
            "tags": list(page.tags),
            "related": [r.model_dump() for r in page.related],
            "change_summary": page.change_summary,
        }
        record = existing.get(page.slug)
        if record is None:
            session.add(
                DocPageRecord(
                    workspace=workspace,
                    project=project,
                    slug=page.slug,
                    version=version,
                    created_at=now,
                    updated_at=now,
                    **values,
                )
            )
            continue
        if any(getattr(record, name) != value for name, value in values.items()):
            for name, value in values.items():
                setattr(record, name, value)
            record.updated_at = now
            session.add(record)
    session.flush()
    return len(pages)


def get_page(*, session: Session, workspace: str, slug: str, version: str | None = None) -> DocPageRecord | None:
    """Fetch one version of a page, or its latest version (see the module docstring for "latest").

    Args:
        session: The database session.
        workspace: The caller's workspace; pages of other workspaces are never returned.
        slug: Page slug.
        version: Exact version label; ``None`` for the latest.

    Returns:
        The page, or ``None`` when the slug (or that version) does not exist in the workspace.
    """
    conditions: list[Any] = [DocPageRecord.workspace == workspace, DocPageRecord.slug == slug]
    if version is not None:
        conditions.append(DocPageRecord.version == version)
    rows = _version_rows(session, *conditions)
    chosen = _latest(rows)
    if chosen is None:
        return None
    return session.get(DocPageRecord, chosen.id)


def list_versions(*, session: Session, workspace: str, slug: str) -> list[str]:
    """List the versions of a page, oldest first.

    Args:
        session: The database session.
        workspace: The caller's workspace.
        slug: Page slug.

    Returns:
        Version labels (empty when the page does not exist).
    """
    rows = _version_rows(session, DocPageRecord.workspace == workspace, DocPageRecord.slug == slug)
    seen: dict[str, None] = {}
    for row in _ordered(rows):
        seen.pop(row.version, None)
        seen[row.version] = None
    return list(seen)


def list_pages(*, session: Session, workspace: str, project: str | None = None) -> list[PageSummary]:
    """List the pages of a workspace (optionally one project) with their versions.

    Args:
        session: The database session.
        workspace: The caller's workspace.
        project: Only this project's pages when given.

    Returns:
        One summary per (project, slug), sorted by project then slug; title, description and status are those
        of the latest version.
    """
    conditions: list[Any] = [DocPageRecord.workspace == workspace]
    if project is not None:
        conditions.append(DocPageRecord.project == project)
    groups: dict[tuple[str, str], list[_VersionRow]] = {}
    for row in _version_rows(session, *conditions):
        groups.setdefault((row.project, row.slug), []).append(row)
    summaries: list[PageSummary] = []
    for (proj, slug), rows in sorted(groups.items()):
        latest = _latest(rows)
        assert latest is not None  # every group has at least one row
        summaries.append(
            PageSummary(
                slug=slug,
                project=proj,
                title=latest.title,
                description=latest.description,
                status=latest.status,  # pydantic checks it is a PageStatus
                versions=[r.version for r in _ordered(rows)],
                latest=latest.version,
                updated_at=latest.updated_at,
            )
        )
    return summaries
