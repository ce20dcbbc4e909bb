"""The generated pages: overview (``index``), ``file-tree``, ``guides``, ``api/index`` and one per Python module.

Each builder returns a :class:`~quantapilot.docs.model.GeneratedPage` with the same front matter (the only date
is the ``updated`` of the :class:`PageContext`) and a "Related pages" list; title, description and body go
through :func:`~quantapilot.docs.lint.scrub_personal_data`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import yaml

from quantapilot.docs.lint import scrub_personal_data
from quantapilot.docs.markdown import (
    adapt_readme,
    code_block,
    code_span,
    escape,
    escape_prose,
    first_paragraph,
    md_link,
    one_line,
)
from quantapilot.docs.model import GENERATOR_MARKER, GeneratedPage, RelatedLink
from quantapilot.docs.pyapi import PyClass, PyModule
from quantapilot.docs.render import find_front_matter
from quantapilot.docs.scan import Guide, Metadata, language_of

# Beyond this many lines the file-tree page stops listing entries and says how many were left out.
MAX_TREE_LINES = 1500
# README text beyond this size is cut (with a note) so one huge README cannot bloat the overview.
MAX_README_CHARS = 100_000
# The index names at most this many files left out (links, oversized files, refused front matter).
MAX_LEFT_OUT_LINES = 200
MAX_SLUG_PART = 200


_SLUG_BAD_RE = re.compile(r"[^a-z0-9.-]+")


def _slug_part(name: str) -> str:
    """A module name as a slug segment: lowercase ``[a-z0-9.-]``, at most ``MAX_SLUG_PART`` characters."""
    part = _SLUG_BAD_RE.sub("-", name.lower())
    part = re.sub(r"\.{2,}", ".", part).strip("-.") or "module"
    return part[:MAX_SLUG_PART]


def assign_module_slugs(modules: Sequence[PyModule]) -> None:
    """Give each module its page slug, ``api/<name>``, numbered (``-2``, ``-3``...) when two names collide.

    Args:
        modules: The modules, in page order; their ``slug`` is set in place.
    """
    used: set[str] = {"api/index"}
    for module in modules:
        base = "api/" + _slug_part(module.name)
        slug, n = base, 2
        while slug in used:
            slug, n = f"{base}-{n}", n + 1
        used.add(slug)
        module.slug = slug


@dataclass(slots=True)
class PageContext:
    """What every page of one generation shares: output folder, project, version, date and owners."""

    out: str
    project: str
    version: str
    updated: str
    owners: list[str]


#: The pages every generation writes besides the module pages, by slug, with the title a link to them shows.
FIXED_PAGE_TITLES: Final[dict[str, str]] = {
    "index": "Overview",
    "file-tree": "File tree",
    "api/index": "API reference",
    "guides": "Guides",
}


def fixed_link(slug: str, kind: Literal["related", "prerequisite", "next_step"]) -> RelatedLink:
    """A related link to one of the :data:`FIXED_PAGE_TITLES` pages.

    Args:
        slug: The page's slug (a key of :data:`FIXED_PAGE_TITLES`).
        kind: How the linked page relates to the linking one.
    """
    return RelatedLink(slug=slug, title=FIXED_PAGE_TITLES[slug], type=kind)


def _page_path(ctx: PageContext, slug: str) -> str:
    """The repository path of a page: ``<output folder>/<slug>.md``."""
    return f"{ctx.out}/{slug}.md"


def _front_matter(
    ctx: PageContext, slug: str, title: str, description: str, tags: list[str], generated_by: str | None = None
) -> str:
    data: dict[str, Any] = {
        "id": slug.replace("/", "."),
        "title": title,
        "status": "ready",
        "version": ctx.version,
        "updated": ctx.updated,
        "owners": ctx.owners,
        "description": description,
        "tags": tags,
        "generator": GENERATOR_MARKER,
    }
    if generated_by is not None:
        # Only model-written pages carry the key: the deterministic pages stay byte for byte as they were.
        data["generated_by"] = generated_by
    dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    text = yaml.dump(data, Dumper=dumper, sort_keys=False, allow_unicode=True, width=1_000_000)
    return f"---\n{text}---\n"


def build_page(
    ctx: PageContext,
    *,
    slug: str,
    title: str,
    description: str,
    body: list[str],
    related: list[RelatedLink],
    tags: list[str],
    generated_by: str | None = None,
) -> GeneratedPage:
    """A page: front matter, body and "Related pages", with title, description and body scrubbed of personal data.

    Args:
        ctx: What the pages of this generation share.
        slug: The page's slug.
        title: Its title.
        description: Its one-line summary.
        body: Markdown lines.
        related: Links to other pages.
        tags: Labels.
        generated_by: The model that wrote the body (front matter ``generated_by``); None for deterministic pages.
    """
    path = _page_path(ctx, slug)
    title = one_line(scrub_personal_data(title))
    description = one_line(scrub_personal_data(description))
    if related:
        body = [*body, "## Related pages", ""]
        body += [f"- {md_link(r.title, path, _page_path(ctx, r.slug))} ({r.type.replace('_', ' ')})" for r in related]
        body.append("")
    text = scrub_personal_data("\n".join(body).rstrip() + "\n")
    markdown = _front_matter(ctx, slug, title, description, tags, generated_by) + "\n" + text
    return GeneratedPage(
        slug=slug,
        path=path,
        title=title,
        description=description,
        markdown=markdown,
        related=related,
        tags=tags,
    )


def _doc_block(doc: str) -> list[str]:
    """A docstring: its summary as a paragraph, the rest verbatim in a text block."""
    if not doc:
        return []
    summary, _, rest = doc.strip().partition("\n\n")
    out = [escape_prose(summary), ""]
    if rest.strip():
        out += [code_block(rest, "text"), ""]
    return out


def _class_block(cls: PyClass, level: int) -> list[str]:
    hashes = "#" * min(level, 6)
    out = [f"{hashes} class {code_span(cls.name)}", "", code_block(cls.signature, "python"), "", *_doc_block(cls.doc)]
    for method in cls.methods:
        out += [f"{'#' * min(level + 1, 6)} {code_span(cls.name + '.' + method.name)}", ""]
        out += [code_block(method.signature, "python"), "", *_doc_block(method.doc)]
    for inner in cls.classes:
        out += _class_block(inner, level + 1)
    return out


def module_page(
    ctx: PageContext, module: PyModule, *, parent: PyModule | None, next_module: PyModule | None
) -> GeneratedPage:
    """The ``api/<module>`` page: docstring, contents, classes and functions with signatures."""
    slug = module.slug
    path = _page_path(ctx, slug)
    summary = first_paragraph(module.doc)
    body = [f"# Module {code_span(module.name)}", "", f"Source: {md_link(module.path, path, module.path)}", ""]
    body += _doc_block(module.doc) if module.doc else ["*This module has no docstring.*", ""]
    if module.classes or module.functions:
        body += ["## Contents", ""]
        body += [f"- class {code_span(c.name)}" for c in module.classes]
        body += [f"- function {code_span(f.name)}" for f in module.functions]
        body.append("")
    else:
        body += ["*No public classes or functions.*", ""]
    if module.classes:
        body += ["## Classes", ""]
        for cls in module.classes:
            body += _class_block(cls, 3)
    if module.functions:
        body += ["## Functions", ""]
        for func in module.functions:
            body += [
                f"### {code_span(func.name)}",
                "",
                code_block(func.signature, "python"),
                "",
                *_doc_block(func.doc),
            ]
    related = [fixed_link("index", "prerequisite"), fixed_link("api/index", "related")]
    if parent is not None:
        related.append(RelatedLink(slug=parent.slug, title=f"Module {parent.name}", type="related"))
    if next_module is not None:
        related.append(RelatedLink(slug=next_module.slug, title=f"Module {next_module.name}", type="next_step"))
    return build_page(
        ctx,
        slug=slug,
        title=f"Module {module.name}",
        description=summary or f"API reference of the Python module {module.name}.",
        body=body,
        related=related,
        tags=["api", "python"],
    )


def api_index_page(ctx: PageContext, modules: Sequence[PyModule], failed: Sequence[tuple[str, str]]) -> GeneratedPage:
    """The ``api/index`` page: every module with its summary, and a pointer to the files not parsed."""
    slug = "api/index"
    path = _page_path(ctx, slug)
    body = ["# API reference", ""]
    if modules:
        body += [f"{len(modules)} Python modules, read from their source.", ""]
        body += ["| Module | Summary |", "| --- | --- |"]
        for m in modules:
            summary = escape(one_line(first_paragraph(m.doc), 160)) if m.doc else ""
            body.append(f"| {md_link(m.name, path, _page_path(ctx, m.slug))} | {summary} |")
        body.append("")
    else:
        body += ["No Python modules were found.", ""]
    if failed:
        body += [
            f"{len(failed)} Python file(s) could not be parsed; "
            f"they are listed on the {md_link('overview', path, _page_path(ctx, 'index'))}.",
            "",
        ]
    related = [fixed_link("index", "prerequisite")]
    if modules:
        first = modules[0]
        related.append(RelatedLink(slug=first.slug, title=f"Module {first.name}", type="next_step"))
    related.append(fixed_link("guides", "related"))
    return build_page(
        ctx,
        slug=slug,
        title="API reference",
        description=f"API reference of the {len(modules)} Python modules of {ctx.project}.",
        body=body,
        related=related,
        tags=["api", "index"],
    )


def _tree_lines(files: Sequence[str]) -> list[str]:
    root: dict[str, Any] = {}
    for f in files:
        node = root
        for part in f.split("/")[:-1]:
            node = node.setdefault(part + "/", {})
        node[f.rsplit("/", 1)[-1]] = None

    lines: list[str] = ["."]

    def walk(node: dict[str, Any], prefix: str) -> None:
        # Folders first, then files, each alphabetically: the order a reader expects from `tree`.
        entries = sorted(node.items(), key=lambda kv: (kv[1] is None, kv[0]))
        for i, (name, child) in enumerate(entries):
            last = i == len(entries) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{name}")
            if child is not None:
                walk(child, prefix + ("    " if last else "│   "))

    walk(root, "")
    return lines


def tree_page(ctx: PageContext, files: Sequence[str]) -> GeneratedPage:
    """The ``file-tree`` page: the tracked files as a tree, truncated after ``MAX_TREE_LINES`` lines."""
    lines = _tree_lines(files)
    folders = sum(1 for line in lines if line.endswith("/"))
    body = [
        "# File tree",
        "",
        f"{len(files)} tracked files in {folders} folders (the documentation output is omitted).",
        "",
    ]
    if len(lines) > MAX_TREE_LINES:
        hidden = len(lines) - MAX_TREE_LINES
        body += [code_block("\n".join(lines[:MAX_TREE_LINES]), "text"), ""]
        body += [
            f"*The tree is truncated: {hidden} more entries are not shown (limit {MAX_TREE_LINES} lines).*",
            "",
        ]
    else:
        body += [code_block("\n".join(lines), "text"), ""]
    return build_page(
        ctx,
        slug="file-tree",
        title="File tree",
        description=f"The {len(files)} tracked files of {ctx.project}.",
        body=body,
        related=[fixed_link("index", "prerequisite"), fixed_link("api/index", "next_step")],
        tags=["file-tree"],
    )


def index_page(
    ctx: PageContext,
    *,
    files: Sequence[str],
    meta: Metadata,
    readme: tuple[str, str] | None,
    modules: Sequence[PyModule],
    failed: Sequence[tuple[str, str]],
    guides: Sequence[str],
    left_out: Sequence[tuple[str, str]],
) -> GeneratedPage:
    """The ``index`` page: metadata, languages, links to the other pages, the README, the files not parsed or read."""
    slug = "index"
    path = _page_path(ctx, slug)
    readme_text = ""
    if readme is not None:
        _raw, readme_text = find_front_matter(readme[1])
    description = meta.description or first_paragraph(readme_text) or f"Documentation of {ctx.project}."
    body = [f"# {escape(ctx.project)}", "", escape(description), ""]
    body += ["| Field | Value |", "| --- | --- |", f"| Project | {escape(ctx.project)} |"]
    if meta.name:
        body.append(f"| Package name | {escape(meta.name)} (from {code_span(meta.source)}) |")
    if meta.version:
        body.append(f"| Package version | {escape(meta.version)} |")
    body += [
        f"| Documented version | {escape(ctx.version)} |",
        f"| Tracked files | {len(files)} |",
        f"| Python modules | {len(modules)} documented, {len(failed)} not parsable |",
        "",
    ]
    languages = Counter(lang for f in files if (lang := language_of(f)) is not None)
    if languages:
        body += ["## Languages", "", "| Language | Files |", "| --- | --- |"]
        body += [
            f"| {escape(name)} | {count} |" for name, count in sorted(languages.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
        body.append("")
    body += [
        "## Pages",
        "",
        f"- {md_link('File tree', path, _page_path(ctx, 'file-tree'))}: the {len(files)} tracked files",
        f"- {md_link('API reference', path, _page_path(ctx, 'api/index'))}: {len(modules)} Python modules",
        f"- {md_link('Guides', path, _page_path(ctx, 'guides'))}: {len(guides)} Markdown documents",
        "",
    ]
    if readme is not None:
        name, _text = readme
        body += [f"## Overview (from {code_span(name)})", ""]
        content = readme_text
        truncated = len(content) > MAX_README_CHARS
        content = content[:MAX_README_CHARS]
        if name.lower().endswith((".md", ".markdown")):
            body += [adapt_readme(content, readme_path=name, page_path=path).strip(), ""]
        else:
            body += [code_block(content, "text"), ""]
        if truncated:
            body += [f"*The README is longer than {MAX_README_CHARS} characters; the rest is not shown.*", ""]
    else:
        body += ["## Overview", "", "*The repository has no README.*", ""]
    if failed:
        body += ["## Files that could not be parsed", ""]
        body += [f"- {code_span(p)}: {escape(reason)}" for p, reason in failed]
        body.append("")
    if left_out:
        # Links, oversized files and refused front matter: the reader learns why a file is missing.
        body += ["## Files not read", ""]
        body += [f"- {code_span(p)}: {escape(reason)}" for p, reason in left_out[:MAX_LEFT_OUT_LINES]]
        if len(left_out) > MAX_LEFT_OUT_LINES:
            body.append(f"- *and {len(left_out) - MAX_LEFT_OUT_LINES} more*")
        body.append("")
    return build_page(
        ctx,
        slug=slug,
        title=f"{ctx.project} overview",
        description=description,
        body=body,
        related=[
            fixed_link("file-tree", "related"),
            fixed_link("api/index", "next_step"),
            fixed_link("guides", "related"),
        ],
        tags=["overview"],
    )


def guides_page(ctx: PageContext, guides: Sequence[Guide]) -> GeneratedPage:
    """The ``guides`` page: every Markdown document written by people, linked with its summary."""
    slug = "guides"
    path = _page_path(ctx, slug)
    body = ["# Guides", ""]
    if guides:
        body += ["The Markdown documents kept in the repository, written by its people.", ""]
        for guide in guides:
            line = f"- {md_link(guide.title, path, guide.path)} ({code_span(guide.path)})"
            body.append(f"{line}: {escape(guide.summary)}" if guide.summary else line)
        body.append("")
    else:
        body += ["The repository has no Markdown documents besides the generated ones.", ""]
    return build_page(
        ctx,
        slug=slug,
        title="Guides",
        description=f"The {len(guides)} Markdown documents of {ctx.project}.",
        body=body,
        related=[fixed_link("index", "prerequisite"), fixed_link("api/index", "related")],
        tags=["guides"],
    )
