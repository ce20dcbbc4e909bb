"""What the documentation generator produces: pages, their typed links, and the marker that says a file is one.

Every generated page carries ``generator: quantapilot-docgen`` in its front matter (:data:`GENERATOR_MARKER`).
Only files carrying it are ever overwritten or removed (:mod:`quantapilot.docs.write`), and they are never
mistaken for guides written by people (:mod:`quantapilot.docs.scan`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from quantapilot.docs.render import FrontMatterError, split_front_matter

GENERATOR_MARKER = "quantapilot-docgen"


class RelatedLink(BaseModel):
    """A link from one page to another, typed as in the docs pages of the seed."""

    slug: str
    title: str
    type: Literal["related", "prerequisite", "next_step"]


class GeneratedPage(BaseModel):
    """One generated Markdown page.

    Attributes:
        slug: Page slug relative to the project, e.g. ``api/pkg.mod``.
        path: File path relative to the repository root, e.g. ``docs/api/pkg.mod.md``.
        title: Page title (also in the front matter).
        description: One-line summary.
        markdown: The whole file, front matter block included.
        related: Links to other generated pages.
        tags: Labels such as ``api`` or ``overview``.
    """

    slug: str
    path: str
    title: str
    description: str
    markdown: str
    related: list[RelatedLink] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)


def is_generated_text(head: str) -> bool:
    """Tell whether a document's text (its first few KiB suffice) carries the generator's front-matter marker.

    Args:
        head: The start of a Markdown document.

    Returns:
        ``True`` when its front matter parses and says ``generator: quantapilot-docgen``.
    """
    if not head.startswith("---") or GENERATOR_MARKER not in head:
        return False
    try:
        data, _body = split_front_matter(head)
    except FrontMatterError:
        return False
    return data.get("generator") == GENERATOR_MARKER
