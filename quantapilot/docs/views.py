"""The HTTP answers of the docs pages: one page with its content, and listings (camelCase).

The models are the source of their definitions in ``schemas/api.schema.json`` (``make schemas``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from quantapilot.bodies import ResponseBody, UtcInstant


class PageContent(ResponseBody):
    """A page's text in both forms."""

    markdown: str
    html: str


class PageLink(ResponseBody):
    """A typed link to another page."""

    slug: str
    title: str
    type: str = Field(description="related, prerequisite or next_step.")


class DocsPage(ResponseBody):
    """``GET /v1/docs/pages/{slug}``: one version of a page."""

    model_config = ConfigDict(title="DocsPage")

    slug: str
    title: str
    description: str
    project: str
    version: str
    versions: list[str]
    status: Literal["draft", "published", "archived", "deprecated"]
    tags: list[str]
    updated: UtcInstant
    created: UtcInstant
    commit_sha: str | None = Field(alias="commitSha")
    change_summary: str | None = Field(alias="changeSummary")
    deprecation_notice: str | None = Field(alias="deprecationNotice")
    content_type: Literal["markdown", "html"] = Field(alias="contentType")
    content: PageContent
    related: list[PageLink]


class PageListing(ResponseBody):
    """A page in a listing: its versions and the latest."""

    slug: str
    project: str
    title: str
    description: str
    status: str
    versions: list[str]
    latest: str
    updated: UtcInstant


class DocsPageList(ResponseBody):
    """``GET /v1/docs/pages``."""

    model_config = ConfigDict(title="DocsPageList")

    project: str | None
    pages: list[PageListing]
