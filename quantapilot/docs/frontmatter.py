"""The front matter every documentation page opens with: its model, the source of ``schemas/frontmatter.schema.json``.

``make schemas`` (:mod:`schemas.generate`) writes the file; the doc lint (:mod:`quantapilot.docs.lint`) checks
pages against it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from quantapilot.bodies import UniqueItems, published_document

_UPDATED = (
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
    r"([Tt ]([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d+)?)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)?)?$"
)


_PUBLISHED = published_document(
    "https://quantapilot.dev/schemas/frontmatter.schema.json",
    "The YAML block that opens every documentation page: id, title, status, version, updated and owners are required.",
)


_Owner = Annotated[str, Field(min_length=1, max_length=200, pattern=r"\S", description="A team or handle, not blank.")]


class FrontMatter(BaseModel):
    """A page's front matter."""

    model_config = ConfigDict(
        title="Document front matter",
        json_schema_extra=_PUBLISHED,
        extra="forbid",
        strict=True,
        regex_engine="python-re",
    )

    id: str = Field(
        max_length=300,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Stable identifier: letters, digits, '.', '_' and '-', e.g. 'api.pkg.mod' or '90_api'.",
    )
    title: str = Field(max_length=300, pattern=r"\S", description="Human-readable title, not blank.")
    status: Literal["draft", "ready", "deprecated"]
    version: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^\S+$",
        description="Version label without spaces: a semantic version or a short commit label.",
    )
    updated: str = Field(pattern=_UPDATED, description="Date (YYYY-MM-DD) or RFC 3339 timestamp of the last change.")
    owners: UniqueItems[
        list[
            Annotated[
                str, Field(min_length=1, max_length=200, pattern=r"\S", description="A team or handle, not blank.")
            ]
        ]
    ] = Field(min_length=1, description="Teams or handles responsible for the page; at least one.")
    description: str | None = Field(default=None, max_length=2000)
    tags: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = None
    generator: str | None = Field(
        default=None,
        description=(
            "Set by tools that generate the page (quantapilot writes 'quantapilot-docgen'); files carrying it may "
            "be regenerated or removed by that tool."
        ),
    )
    generated_by: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=r"\S",
        description=(
            "The language model that wrote the page's text (models.arch of quantapilot.yml), e.g. 'gpt-4o-mini'. "
            "Absent on pages the deterministic generator wrote from the repository alone; a page carrying it is "
            "model prose grounded in those pages, to be read with that in mind."
        ),
    )
