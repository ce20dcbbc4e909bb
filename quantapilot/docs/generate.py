"""Deterministic Markdown documentation of a repository, read from its files and never by importing its code.

:func:`generate_docs` produces these pages (slugs; files under the output folder, ``docs`` by default):

* ``index``: overview from the README and the package metadata (``pyproject.toml``, ``setup.cfg``,
  ``package.json``), language counts, links to the other pages, the Python files that failed to parse and the
  files not read (symbolic links, files over the size cap, front matter over the YAML limits), with the reason;
* ``file-tree``: the tracked files as a tree (capped for huge repositories, with a note);
* ``guides``: the repository's own Markdown documents (written by people), each linked with its summary;
* ``api/index`` and one ``api/<module>`` page per Python module: module docstring, classes with their bases,
  methods and functions with full signatures and docstrings, read with :mod:`ast`.

The repository's files are read as data through :mod:`quantapilot.repos.files` (from the git objects of the
documented commit, never through the work tree), and written back the same way: no link is ever followed.
The same input always gives byte-identical pages: traversal is sorted and the only date is the ``updated``
argument. Text taken from the repository goes through :func:`~quantapilot.docs.lint.scrub_personal_data`.
Every page carries ``generator: quantapilot-docgen`` in its front matter; :func:`write_pages` overwrites or
removes only files carrying that marker.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import json
import posixpath
import re
import tomllib
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import quote

import yaml
from pydantic import BaseModel, Field

from quantapilot.docs.lint import scrub_personal_data
from quantapilot.docs.render import (
    FrontMatterError,
    FrontMatterRefusedError,
    find_front_matter,
    split_front_matter,
)
from quantapilot.repos.files import (
    MAX_FILE_BYTES,
    EntryKind,
    FileRefusedError,
    RepoFiles,
    UnsafePathError,
    normalise_path,
    open_repo_files,
    read_worktree_head,
    remove_file,
    walk_worktree_files,
    write_file,
)

GENERATOR_MARKER = "quantapilot-docgen"
DEFAULT_OWNERS: tuple[str, ...] = ("quantapilot",)

# Beyond this many lines the file-tree page stops listing entries and says how many were left out.
MAX_TREE_LINES = 1500
# README text beyond this size is cut (with a note) so one huge README cannot bloat the overview.
MAX_README_CHARS = 100_000
MAX_DESCRIPTION_CHARS = 300
# The index names at most this many files left out (links, oversized files, refused front matter).
MAX_LEFT_OUT_LINES = 200
MAX_SLUG_PART = 200

# Folders never documented even when tracked: VCS metadata, virtualenvs, dependency and tool caches.
SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        "node_modules",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        ".nox",
    }
)
README_NAMES = ("README.md", "README.markdown", "README.rst", "README.txt", "README")
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})

LANGUAGES: dict[str, str] = {
    ".py": "Python",
    ".pyi": "Python",
    ".js": "JavaScript",
    ".mjs": "JavaScript",
    ".cjs": "JavaScript",
    ".jsx": "JavaScript",
    ".ts": "TypeScript",
    ".tsx": "TypeScript",
    ".go": "Go",
    ".rs": "Rust",
    ".java": "Java",
    ".kt": "Kotlin",
    ".rb": "Ruby",
    ".php": "PHP",
    ".c": "C",
    ".h": "C",
    ".cc": "C++",
    ".cpp": "C++",
    ".hpp": "C++",
    ".cs": "C#",
    ".swift": "Swift",
    ".scala": "Scala",
    ".sh": "Shell",
    ".bash": "Shell",
    ".md": "Markdown",
    ".markdown": "Markdown",
    ".rst": "reStructuredText",
    ".html": "HTML",
    ".css": "CSS",
    ".scss": "SCSS",
    ".sql": "SQL",
    ".yml": "YAML",
    ".yaml": "YAML",
    ".json": "JSON",
    ".toml": "TOML",
    ".ipynb": "Jupyter Notebook",
    ".r": "R",
    ".lua": "Lua",
    ".dart": "Dart",
    ".ex": "Elixir",
    ".exs": "Elixir",
    ".hs": "Haskell",
    ".vue": "Vue",
    ".tf": "HCL",
}
LANGUAGE_FILENAMES = {"Dockerfile": "Dockerfile", "Makefile": "Makefile"}


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


class OutputConflictError(Exception):
    """A generated page would overwrite a file the generator did not write, or escape the repository.

    Attributes:
        paths: The offending paths, relative to the repository root.
    """

    def __init__(self, paths: Sequence[str]) -> None:
        super().__init__(
            "refusing to overwrite files not generated by quantapilot: "
            + ", ".join(paths)
            + " (choose another documentation output folder)"
        )
        self.paths = list(paths)


# --- small Markdown helpers ------------------------------------------------------------------------------

_MD_SPECIAL_RE = re.compile(r"([\\`*_{}\[\]<>#|!])")
_BACKTICKS_RE = re.compile(r"`+")


def _esc(text: str) -> str:
    """Escape text so Markdown shows it literally (names, summaries, table cells)."""
    return _MD_SPECIAL_RE.sub(r"\\\1", " ".join(text.split()))


_PROSE_SPECIAL_RE = re.compile(r"([\\<>\[\]|])")


def _esc_prose(text: str) -> str:
    """Lighter escaping for docstring prose: keeps ``code`` spans and *emphasis*, neutralises tags and links."""
    line = _PROSE_SPECIAL_RE.sub(r"\\\1", " ".join(text.split()))
    return "\\" + line if line.startswith(("#", "-", "+", "=", ">")) else line


def _code(text: str) -> str:
    """Inline code span that survives backticks inside the text."""
    longest = max((len(m) for m in _BACKTICKS_RE.findall(text)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _fence(content: str, info: str = "") -> str:
    """Fenced code block whose fence is longer than any backtick run in the content."""
    longest = max((len(m) for m in _BACKTICKS_RE.findall(content)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{content.rstrip()}\n{fence}"


def _href(from_path: str, to_path: str) -> str:
    """Relative, percent-encoded link target from one repository file to another."""
    rel = posixpath.relpath(to_path, posixpath.dirname(from_path) or ".")
    return quote(rel, safe="/._-~")


def _link(text: str, from_path: str, to_path: str) -> str:
    return f"[{_esc(text)}]({_href(from_path, to_path)})"


def _one_line(text: str, limit: int = MAX_DESCRIPTION_CHARS) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def _first_paragraph(text: str) -> str:
    for block in re.split(r"\n\s*\n", text.strip()):
        stripped = block.strip()
        if stripped and not stripped.startswith(("#", "[![", "![", "<", "```", "---", "===", "|", "..")):
            return " ".join(stripped.split())
    return ""


# --- repository reading ----------------------------------------------------------------------------------


def _skipped(rel: str) -> bool:
    return any(part in SKIP_DIRS for part in rel.split("/")[:-1])


def _listed(repo: RepoFiles) -> list[str]:
    """Tracked regular files and symbolic links (listed, never read); submodules have no files here."""
    return [p for p in repo.paths(EntryKind.FILE, EntryKind.SYMLINK) if not _skipped(p)]


class _Reader:
    """Reads the repository's files as data and remembers the ones it left out, with the reason."""

    def __init__(self, repo: RepoFiles) -> None:
        self.repo = repo
        self.left_out: dict[str, str] = {}

    def text(self, rel: str) -> str | None:
        data = self.data(rel)
        return None if data is None else data.decode("utf-8", errors="replace")

    def data(self, rel: str) -> bytes | None:
        try:
            return self.repo.read_bytes(rel)
        except FileRefusedError as exc:
            self.left_out[rel] = exc.reason
            return None


@dataclass(slots=True)
class _Metadata:
    name: str = ""
    description: str = ""
    version: str = ""
    source: str = ""


def _str(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _read_metadata(reader: _Reader, files: set[str]) -> _Metadata:
    meta = _Metadata()
    # RecursionError: tomllib and json recurse per nesting level; a hostile file may nest thousands deep.
    if "pyproject.toml" in files and (toml_bytes := reader.data("pyproject.toml")) is not None:
        try:
            data = tomllib.loads(toml_bytes.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
            data = {}
        project = data.get("project")
        poetry = data.get("tool", {}).get("poetry") if isinstance(data.get("tool"), dict) else None
        for table in (project, poetry):
            if isinstance(table, dict) and _str(table.get("name")):
                return _Metadata(
                    _str(table.get("name")),
                    _str(table.get("description")),
                    _str(table.get("version")),
                    "pyproject.toml",
                )
    if "setup.cfg" in files and (cfg_bytes := reader.data("setup.cfg")) is not None:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(cfg_bytes.decode("utf-8"))
        except (UnicodeDecodeError, configparser.Error):
            parser = configparser.ConfigParser(interpolation=None)
        section = dict(parser.items("metadata")) if parser.has_section("metadata") else {}
        if section.get("name", "").strip():
            return _Metadata(
                section["name"].strip(),
                section.get("description", "").strip(),
                section.get("version", "").strip(),
                "setup.cfg",
            )
    if "package.json" in files and (json_bytes := reader.data("package.json")) is not None:
        try:
            pkg = json.loads(json_bytes.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            pkg = None
        if isinstance(pkg, dict) and _str(pkg.get("name")):
            return _Metadata(
                _str(pkg.get("name")), _str(pkg.get("description")), _str(pkg.get("version")), "package.json"
            )
    return meta


def _language(path: str) -> str | None:
    name = path.rsplit("/", 1)[-1]
    if name in LANGUAGE_FILENAMES:
        return LANGUAGE_FILENAMES[name]
    return LANGUAGES.get(PurePosixPath(name).suffix.lower())


# --- Python API via ast ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Func:
    name: str
    signature: str
    doc: str


@dataclass(slots=True)
class _Class:
    name: str
    signature: str
    doc: str
    methods: list[_Func] = field(default_factory=list)
    classes: list[_Class] = field(default_factory=list)


@dataclass(slots=True)
class _Module:
    name: str
    path: str
    slug: str = ""
    doc: str = ""
    classes: list[_Class] = field(default_factory=list)
    functions: list[_Func] = field(default_factory=list)


_PUBLIC_DUNDERS = frozenset({"__init__", "__call__"})


def _decorators(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> str:
    return "".join(f"@{ast.unparse(d)}\n" for d in node.decorator_list)


def _function(node: ast.FunctionDef | ast.AsyncFunctionDef) -> _Func:
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    signature = f"{_decorators(node)}{prefix} {node.name}({ast.unparse(node.args)}){returns}"
    return _Func(node.name, signature, ast.get_docstring(node) or "")


def _class(node: ast.ClassDef, depth: int = 0) -> _Class:
    bases = [ast.unparse(b) for b in node.bases] + [ast.unparse(k) for k in node.keywords]
    signature = f"{_decorators(node)}class {node.name}" + (f"({', '.join(bases)})" if bases else "")
    cls = _Class(node.name, signature, ast.get_docstring(node) or "")
    for child in node.body:
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            if not child.name.startswith("_") or child.name in _PUBLIC_DUNDERS:
                cls.methods.append(_function(child))
        elif isinstance(child, ast.ClassDef) and depth < 2 and not child.name.startswith("_"):
            cls.classes.append(_class(child, depth + 1))
    return cls


def _exported_names(tree: ast.Module) -> set[str] | None:
    """Names listed in a literal ``__all__``, or ``None`` when the module has none."""
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and isinstance(
            value, ast.List | ast.Tuple
        ):
            return {e.value for e in value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return None


def _parse_module(module: _Module, source: bytes) -> None:
    with warnings.catch_warnings():
        # Odd escapes in the documented code raise warnings at parse time; they are the code's business.
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        tree = ast.parse(source, filename=module.path)
    exported = _exported_names(tree)

    def public(name: str) -> bool:
        return name in exported if exported is not None else not name.startswith("_")

    module.doc = ast.get_docstring(tree) or ""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and public(node.name):
            module.classes.append(_class(node))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and public(node.name):
            module.functions.append(_function(node))


def _module_names(paths: Sequence[str]) -> dict[str, str]:
    """Dotted module names for Python files; ``src/`` layouts drop the ``src`` prefix unless names clash."""

    def dotted(path: str, *, strip_src: bool) -> str:
        parts = path[: -len(PurePosixPath(path).suffix)].split("/")
        if strip_src and len(parts) > 1 and parts[0] == "src":
            parts = parts[1:]
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        return ".".join(parts)

    names = {p: dotted(p, strip_src=True) for p in paths}
    counts = Counter(names.values())
    for p in paths:
        if counts[names[p]] > 1:
            # e.g. src/pkg/mod.py and pkg/mod.py, or pkg/a.py and pkg/a/__init__.py: spell the path out.
            names[p] = ".".join(p[: -len(PurePosixPath(p).suffix)].split("/"))
    return names


_SLUG_BAD_RE = re.compile(r"[^a-z0-9.-]+")


def _slug_part(name: str) -> str:
    part = _SLUG_BAD_RE.sub("-", name.lower())
    part = re.sub(r"\.{2,}", ".", part).strip("-.") or "module"
    return part[:MAX_SLUG_PART]


# --- page assembly ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Context:
    out: str
    project: str
    version: str
    updated: str
    owners: list[str]


def _page_path(ctx: _Context, slug: str) -> str:
    return f"{ctx.out}/{slug}.md"


def _front_matter(ctx: _Context, slug: str, title: str, description: str, tags: list[str]) -> str:
    data = {
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
    dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    text = yaml.dump(data, Dumper=dumper, sort_keys=False, allow_unicode=True, width=1_000_000)
    return f"---\n{text}---\n"


def _page(
    ctx: _Context,
    *,
    slug: str,
    title: str,
    description: str,
    body: list[str],
    related: list[RelatedLink],
    tags: list[str],
) -> GeneratedPage:
    path = _page_path(ctx, slug)
    title = _one_line(scrub_personal_data(title))
    description = _one_line(scrub_personal_data(description))
    if related:
        body = [*body, "## Related pages", ""]
        body += [f"- {_link(r.title, path, _page_path(ctx, r.slug))} ({r.type.replace('_', ' ')})" for r in related]
        body.append("")
    text = scrub_personal_data("\n".join(body).rstrip() + "\n")
    markdown = _front_matter(ctx, slug, title, description, tags) + "\n" + text
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
    out = [_esc_prose(summary), ""]
    if rest.strip():
        out += [_fence(rest, "text"), ""]
    return out


def _class_block(cls: _Class, level: int) -> list[str]:
    hashes = "#" * min(level, 6)
    out = [f"{hashes} class {_code(cls.name)}", "", _fence(cls.signature, "python"), "", *_doc_block(cls.doc)]
    for method in cls.methods:
        out += [f"{'#' * min(level + 1, 6)} {_code(cls.name + '.' + method.name)}", ""]
        out += [_fence(method.signature, "python"), "", *_doc_block(method.doc)]
    for inner in cls.classes:
        out += _class_block(inner, level + 1)
    return out


def _module_page(
    ctx: _Context, module: _Module, *, parent: _Module | None, next_module: _Module | None
) -> GeneratedPage:
    slug = module.slug
    path = _page_path(ctx, slug)
    summary = _first_paragraph(module.doc)
    body = [f"# Module {_code(module.name)}", "", f"Source: {_link(module.path, path, module.path)}", ""]
    body += _doc_block(module.doc) if module.doc else ["*This module has no docstring.*", ""]
    if module.classes or module.functions:
        body += ["## Contents", ""]
        body += [f"- class {_code(c.name)}" for c in module.classes]
        body += [f"- function {_code(f.name)}" for f in module.functions]
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
                f"### {_code(func.name)}",
                "",
                _fence(func.signature, "python"),
                "",
                *_doc_block(func.doc),
            ]
    related = [
        RelatedLink(slug="index", title="Overview", type="prerequisite"),
        RelatedLink(slug="api/index", title="API reference", type="related"),
    ]
    if parent is not None:
        related.append(RelatedLink(slug=parent.slug, title=f"Module {parent.name}", type="related"))
    if next_module is not None:
        related.append(RelatedLink(slug=next_module.slug, title=f"Module {next_module.name}", type="next_step"))
    return _page(
        ctx,
        slug=slug,
        title=f"Module {module.name}",
        description=summary or f"API reference of the Python module {module.name}.",
        body=body,
        related=related,
        tags=["api", "python"],
    )


def _api_index_page(ctx: _Context, modules: Sequence[_Module], failed: Sequence[tuple[str, str]]) -> GeneratedPage:
    slug = "api/index"
    path = _page_path(ctx, slug)
    body = ["# API reference", ""]
    if modules:
        body += [f"{len(modules)} Python modules, read from their source.", ""]
        body += ["| Module | Summary |", "| --- | --- |"]
        for m in modules:
            summary = _esc(_one_line(_first_paragraph(m.doc), 160)) if m.doc else ""
            body.append(f"| {_link(m.name, path, _page_path(ctx, m.slug))} | {summary} |")
        body.append("")
    else:
        body += ["No Python modules were found.", ""]
    if failed:
        body += [
            f"{len(failed)} Python file(s) could not be parsed; "
            f"they are listed on the {_link('overview', path, _page_path(ctx, 'index'))}.",
            "",
        ]
    related = [RelatedLink(slug="index", title="Overview", type="prerequisite")]
    if modules:
        first = modules[0]
        related.append(RelatedLink(slug=first.slug, title=f"Module {first.name}", type="next_step"))
    related.append(RelatedLink(slug="guides", title="Guides", type="related"))
    return _page(
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


def _tree_page(ctx: _Context, files: Sequence[str]) -> GeneratedPage:
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
        body += [_fence("\n".join(lines[:MAX_TREE_LINES]), "text"), ""]
        body += [
            f"*The tree is truncated: {hidden} more entries are not shown (limit {MAX_TREE_LINES} lines).*",
            "",
        ]
    else:
        body += [_fence("\n".join(lines), "text"), ""]
    return _page(
        ctx,
        slug="file-tree",
        title="File tree",
        description=f"The {len(files)} tracked files of {ctx.project}.",
        body=body,
        related=[
            RelatedLink(slug="index", title="Overview", type="prerequisite"),
            RelatedLink(slug="api/index", title="API reference", type="next_step"),
        ],
        tags=["file-tree"],
    )


_ATX_RE = re.compile(r"^( {0,3})(#{1,6})(?=\s|$)")
_FENCE_OPEN_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE_LINK_RE = re.compile(r"(!?\[[^\]\n]*\]\()(<[^>\n]*>|[^)\s]+)")
_HAS_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def _adapt_readme(text: str, *, readme_path: str, page_path: str) -> str:
    """Demote the README's headings one level and re-aim its relative links at the page's folder."""
    out: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        m = _FENCE_OPEN_RE.match(line)
        if fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            out.append(line)
            continue
        if m:
            fence = m.group(1)
            out.append(line)
            continue
        line = _ATX_RE.sub(lambda h: h.group(1) + ("#" * min(len(h.group(2)) + 1, 6)), line)

        def relink(link: re.Match[str]) -> str:
            target = link.group(2)
            bare = target[1:-1] if target.startswith("<") else target
            if not bare or bare.startswith(("#", "/")) or _HAS_SCHEME_RE.match(bare):
                return link.group(0)
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(readme_path), bare))
            return link.group(1) + _href(page_path, resolved)

        out.append(_INLINE_LINK_RE.sub(relink, line))
    return "\n".join(out)


def _index_page(
    ctx: _Context,
    *,
    files: Sequence[str],
    meta: _Metadata,
    readme: tuple[str, str] | None,
    modules: Sequence[_Module],
    failed: Sequence[tuple[str, str]],
    guides: Sequence[str],
    left_out: Sequence[tuple[str, str]],
) -> GeneratedPage:
    slug = "index"
    path = _page_path(ctx, slug)
    readme_text = ""
    if readme is not None:
        _raw, readme_text = find_front_matter(readme[1])
    description = meta.description or _first_paragraph(readme_text) or f"Documentation of {ctx.project}."
    body = [f"# {_esc(ctx.project)}", "", _esc(description), ""]
    body += ["| Field | Value |", "| --- | --- |", f"| Project | {_esc(ctx.project)} |"]
    if meta.name:
        body.append(f"| Package name | {_esc(meta.name)} (from {_code(meta.source)}) |")
    if meta.version:
        body.append(f"| Package version | {_esc(meta.version)} |")
    body += [
        f"| Documented version | {_esc(ctx.version)} |",
        f"| Tracked files | {len(files)} |",
        f"| Python modules | {len(modules)} documented, {len(failed)} not parsable |",
        "",
    ]
    languages = Counter(lang for f in files if (lang := _language(f)) is not None)
    if languages:
        body += ["## Languages", "", "| Language | Files |", "| --- | --- |"]
        body += [
            f"| {_esc(name)} | {count} |" for name, count in sorted(languages.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
        body.append("")
    body += [
        "## Pages",
        "",
        f"- {_link('File tree', path, _page_path(ctx, 'file-tree'))}: the {len(files)} tracked files",
        f"- {_link('API reference', path, _page_path(ctx, 'api/index'))}: {len(modules)} Python modules",
        f"- {_link('Guides', path, _page_path(ctx, 'guides'))}: {len(guides)} Markdown documents",
        "",
    ]
    if readme is not None:
        name, _text = readme
        body += [f"## Overview (from {_code(name)})", ""]
        content = readme_text
        truncated = len(content) > MAX_README_CHARS
        content = content[:MAX_README_CHARS]
        if name.lower().endswith((".md", ".markdown")):
            body += [_adapt_readme(content, readme_path=name, page_path=path).strip(), ""]
        else:
            body += [_fence(content, "text"), ""]
        if truncated:
            body += [f"*The README is longer than {MAX_README_CHARS} characters; the rest is not shown.*", ""]
    else:
        body += ["## Overview", "", "*The repository has no README.*", ""]
    if failed:
        body += ["## Files that could not be parsed", ""]
        body += [f"- {_code(p)}: {_esc(reason)}" for p, reason in failed]
        body.append("")
    if left_out:
        # Links, oversized files and refused front matter: the reader learns why a file is missing.
        body += ["## Files not read", ""]
        body += [f"- {_code(p)}: {_esc(reason)}" for p, reason in left_out[:MAX_LEFT_OUT_LINES]]
        if len(left_out) > MAX_LEFT_OUT_LINES:
            body.append(f"- *and {len(left_out) - MAX_LEFT_OUT_LINES} more*")
        body.append("")
    return _page(
        ctx,
        slug=slug,
        title=f"{ctx.project} overview",
        description=description,
        body=body,
        related=[
            RelatedLink(slug="file-tree", title="File tree", type="related"),
            RelatedLink(slug="api/index", title="API reference", type="next_step"),
            RelatedLink(slug="guides", title="Guides", type="related"),
        ],
        tags=["overview"],
    )


def _is_generated_text(head: str) -> bool:
    if not head.startswith("---") or GENERATOR_MARKER not in head:
        return False
    try:
        data, _body = split_front_matter(head)
    except FrontMatterError:
        return False
    return data.get("generator") == GENERATOR_MARKER


@dataclass(frozen=True, slots=True)
class _Guide:
    path: str
    title: str
    summary: str


def _guide(rel: str, text: str) -> _Guide:
    """Title and summary of a Markdown document (its front matter parsed once, within the YAML limits).

    Raises:
        FrontMatterRefusedError: The front matter is over a YAML limit (an alias bomb): the document is left out.
    """
    try:
        data, body = split_front_matter(text)
    except FrontMatterRefusedError:
        raise
    except FrontMatterError:
        data, body = {}, text
    title = data.get("title")
    if not (isinstance(title, str) and title.strip()):
        title = next(
            (m.group(1) for line in body.splitlines() if (m := re.match(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", line))),
            rel.rsplit("/", 1)[-1],
        )
    return _Guide(rel, title.strip(), _one_line(_first_paragraph(body), 200))


def _guides_page(ctx: _Context, guides: Sequence[_Guide]) -> GeneratedPage:
    slug = "guides"
    path = _page_path(ctx, slug)
    body = ["# Guides", ""]
    if guides:
        body += ["The Markdown documents kept in the repository, written by its people.", ""]
        for guide in guides:
            line = f"- {_link(guide.title, path, guide.path)} ({_code(guide.path)})"
            body.append(f"{line}: {_esc(guide.summary)}" if guide.summary else line)
        body.append("")
    else:
        body += ["The repository has no Markdown documents besides the generated ones.", ""]
    return _page(
        ctx,
        slug=slug,
        title="Guides",
        description=f"The {len(guides)} Markdown documents of {ctx.project}.",
        body=body,
        related=[
            RelatedLink(slug="index", title="Overview", type="prerequisite"),
            RelatedLink(slug="api/index", title="API reference", type="related"),
        ],
        tags=["guides"],
    )


def _normalise_folder(output_folder: str) -> str:
    folder = PurePosixPath(output_folder.strip().replace("\\", "/"))
    parts = [p for p in folder.parts if p not in ("", ".")]
    if folder.is_absolute() or not parts or ".." in parts or parts[0] in SKIP_DIRS:
        raise ValueError(f"output_folder must be a relative folder inside the repository, got {output_folder!r}")
    return "/".join(parts)


def generate_docs(
    repo_dir: Path,
    *,
    output_folder: str = "docs",
    project: str,
    version: str,
    updated: str,
    owners: Sequence[str] = DEFAULT_OWNERS,
    commit: str | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> list[GeneratedPage]:
    """Generate the documentation pages of a repository.

    Nothing from the repository is imported or executed: Python modules are read with :mod:`ast`, metadata
    files are parsed as data. The files are read from the git objects of ``commit`` (never through the work
    tree, see :mod:`quantapilot.repos.files`): a tracked symbolic link is listed in the file tree but never
    followed, a file over ``max_file_bytes`` is not read, and a Markdown document whose front matter is over
    the YAML limits is left out. The index page lists those files with the reason, and the files that failed to
    parse.

    Args:
        repo_dir: The repository's work tree (or a plain directory, read without following links).
        output_folder: Folder (relative to the root) the pages belong to; it is left out of the file tree.
        project: Project name shown on the pages.
        version: Version label written to every page's front matter (a release or a short commit label).
        updated: Date (``YYYY-MM-DD``) or RFC 3339 timestamp for the front matter; the only date written.
        owners: Owners for the front matter; must not be empty.
        commit: The commit to document (default ``HEAD``).
        max_file_bytes: Largest file read.

    Returns:
        The pages: ``index``, ``file-tree``, ``guides``, ``api/index``, then ``api/<module>`` by module name.

    Raises:
        ValueError: Empty ``project``/``version``/``owners`` or an output folder outside the repository.
        RepoReadError: git could not read the commit.
    """
    owner_list = [o.strip() for o in owners if o.strip()]
    if not owner_list:
        raise ValueError("owners must not be empty")
    if not project.strip() or not version.strip() or not updated.strip():
        raise ValueError("project, version and updated must not be empty")
    out = _normalise_folder(output_folder)
    ctx = _Context(out, project.strip(), version.strip(), updated.strip(), owner_list)
    with open_repo_files(
        Path(repo_dir), commit=commit, max_file_bytes=max_file_bytes, skip_dirs=frozenset(SKIP_DIRS)
    ) as repo:
        return _generate(ctx, _Reader(repo))


def _generate(ctx: _Context, reader: _Reader) -> list[GeneratedPage]:
    out = ctx.out
    all_files = _listed(reader.repo)
    in_output = [f for f in all_files if f.startswith(out + "/")]
    files = [f for f in all_files if not f.startswith(out + "/")]
    file_set = set(files)

    meta = _read_metadata(reader, file_set)
    readme: tuple[str, str] | None = None
    for name in README_NAMES:
        if name in file_set and (text := reader.text(name)) is not None:
            readme = (name, text)
            break

    guides: list[_Guide] = []
    for rel in [*files, *in_output]:
        if PurePosixPath(rel).suffix.lower() not in MARKDOWN_SUFFIXES:
            continue
        text = reader.text(rel)
        # Pages we generated earlier are not guides; anything else in the output folder was written by people.
        if text is None or _is_generated_text(text[:8192]):
            continue
        try:
            guides.append(_guide(rel, text))
        except FrontMatterRefusedError as exc:
            reader.left_out[rel] = str(exc)
    guides.sort(key=lambda g: g.path)

    py_files = [f for f in files if f.endswith((".py", ".pyi"))]
    for rel in py_files:
        if reader.repo.entries[rel].kind is not EntryKind.FILE:
            reader.data(rel)  # records why a link is not read
    py_files = [f for f in py_files if reader.repo.entries[f].kind is EntryKind.FILE]
    # A stub beside its module documents the same thing; prefer the .py.
    py_set = set(py_files)
    py_files = [f for f in py_files if not (f.endswith(".pyi") and f[:-1] in py_set)]
    names = _module_names(py_files)
    modules: list[_Module] = []
    failed: list[tuple[str, str]] = []
    for rel in py_files:
        module = _Module(name=names[rel], path=rel)
        source = reader.data(rel)
        if source is None:
            continue
        try:
            _parse_module(module, source)
        except SyntaxError as exc:
            failed.append((rel, f"syntax error at line {exc.lineno}: {exc.msg}"))
            continue
        except (ValueError, RecursionError, MemoryError) as exc:
            failed.append((rel, f"could not be read as Python ({type(exc).__name__})"))
            continue
        modules.append(module)
    modules.sort(key=lambda m: (m.name, m.path))

    used: set[str] = {"api/index"}
    for module in modules:
        base = "api/" + _slug_part(module.name)
        slug, n = base, 2
        while slug in used:
            slug, n = f"{base}-{n}", n + 1
        used.add(slug)
        module.slug = slug
    by_name = {m.name: m for m in modules}

    pages = [
        _index_page(
            ctx,
            files=files,
            meta=meta,
            readme=readme,
            modules=modules,
            failed=failed,
            guides=[g.path for g in guides],
            left_out=sorted(reader.left_out.items()),
        ),
        _tree_page(ctx, files),
        _guides_page(ctx, guides),
        _api_index_page(ctx, modules, failed),
    ]
    for i, module in enumerate(modules):
        parent = by_name.get(module.name.rpartition(".")[0]) if "." in module.name else None
        nxt = modules[i + 1] if i + 1 < len(modules) else None
        pages.append(_module_page(ctx, module, parent=parent, next_module=nxt))
    return pages


# --- writing ---------------------------------------------------------------------------------------------


def is_generated_file(path: Path) -> bool:
    """Tell whether a file on disk carries the generator's front-matter marker.

    Args:
        path: Any file.

    Returns:
        ``True`` only for regular files (not symlinks) marked ``generator: quantapilot-docgen``.
    """
    try:
        head = read_worktree_head(path.parent, path.name, 8192)
    except UnsafePathError:
        return False
    return head is not None and _is_generated_text(head.decode("utf-8", errors="replace"))


def _generated_on_disk(root: Path, rel: str) -> bool | None:
    """Whether the work tree's file at ``rel`` is one of our pages; ``None`` when there is none.

    Raises:
        UnsafePathError: The path (or a folder on it) is a link, not a regular file, or leaves the work tree.
    """
    head = read_worktree_head(root, rel, 8192)
    return None if head is None else _is_generated_text(head.decode("utf-8", errors="replace"))


def write_pages(repo_dir: Path, pages: Sequence[GeneratedPage], *, output_folder: str | None = None) -> list[Path]:
    """Write generated pages into the repository and remove generated pages that are no longer produced.

    Only files carrying the generator's front-matter marker are ever overwritten or deleted; if a page would
    replace a file written by people, a symbolic link, or go through a linked folder or out of the repository,
    nothing is written. Every path is opened one folder at a time without following links
    (:mod:`quantapilot.repos.files`), so a tracked ``docs -> /etc`` is refused, never written through. Files
    whose content is unchanged are not rewritten.

    Args:
        repo_dir: The repository's work tree.
        pages: Pages from :func:`generate_docs`.
        output_folder: Folder to clean of stale generated pages; defaults to the folder of the ``index`` page.

    Returns:
        The paths of all pages, in the order given.

    Raises:
        OutputConflictError: A page would overwrite a file not generated by us, go through a link, or leave
            the repository.
    """
    root = Path(repo_dir).resolve()
    conflicts: list[str] = []
    for page in pages:
        try:
            if _generated_on_disk(root, page.path) is False:
                conflicts.append(page.path)
        except UnsafePathError:
            conflicts.append(page.path)
    if conflicts:
        raise OutputConflictError(conflicts)

    if output_folder is None:
        index = next((p for p in pages if p.slug == "index"), None)
        output_folder = posixpath.dirname(index.path) if index is not None else None
    if output_folder:
        out = _normalise_folder(output_folder)
        keep = {normalise_path(p.path) for p in pages}
        try:
            existing = walk_worktree_files(root, out)
        except UnsafePathError:
            existing = []  # a linked output folder was refused above for every page in it
        for rel in existing:
            if PurePosixPath(rel).suffix.lower() not in MARKDOWN_SUFFIXES or rel in keep:
                continue
            with contextlib.suppress(UnsafePathError):
                if _generated_on_disk(root, rel):
                    # Folders the removal emptied go too (never the output folder itself).
                    remove_file(root, rel, prune_up_to=out)

    written: list[Path] = []
    for page in pages:
        try:
            write_file(root, page.path, page.markdown.encode("utf-8"))
        except UnsafePathError:
            raise OutputConflictError([page.path]) from None
        written.append(root / normalise_path(page.path))
    return written
