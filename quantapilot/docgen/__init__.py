"""Documentation generation for a repository: Markdown pages, doc lint and HTML rendering."""

from quantapilot.docgen.generator import (
    GENERATOR_MARKER,
    GeneratedPage,
    OutputConflictError,
    RelatedLink,
    generate_docs,
    write_pages,
)
from quantapilot.docgen.lint import LintIssue, lint_markdown, lint_pages, scrub_personal_data
from quantapilot.docgen.render import render_html, split_front_matter

__all__ = [
    "GENERATOR_MARKER",
    "GeneratedPage",
    "LintIssue",
    "OutputConflictError",
    "RelatedLink",
    "generate_docs",
    "lint_markdown",
    "lint_pages",
    "render_html",
    "scrub_personal_data",
    "split_front_matter",
    "write_pages",
]
