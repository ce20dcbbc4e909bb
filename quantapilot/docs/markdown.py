"""Markdown building blocks of the generated pages: escaping, code spans and blocks, relative links, the README.

Text taken from a repository is shown literally: names and table cells are escaped, docstring prose keeps its
``code`` spans but never becomes a tag or a link, and code goes into spans or fences longer than any backtick
run inside it.
"""

from __future__ import annotations

import posixpath
import re
from urllib.parse import quote

#: Longest one-line summary (page titles and descriptions) before it is cut with an ellipsis.
MAX_DESCRIPTION_CHARS = 300

_MD_SPECIAL_RE = re.compile(r"([\\`*_{}\[\]<>#|!])")
_BACKTICKS_RE = re.compile(r"`+")


def escape(text: str) -> str:
    """Escape text so Markdown shows it literally (names, summaries, table cells)."""
    return _MD_SPECIAL_RE.sub(r"\\\1", " ".join(text.split()))


_PROSE_SPECIAL_RE = re.compile(r"([\\<>\[\]|])")


def escape_prose(text: str) -> str:
    """Lighter escaping for docstring prose: keeps ``code`` spans and *emphasis*, neutralises tags and links."""
    line = _PROSE_SPECIAL_RE.sub(r"\\\1", " ".join(text.split()))
    return "\\" + line if line.startswith(("#", "-", "+", "=", ">")) else line


def code_span(text: str) -> str:
    """Inline code span that survives backticks inside the text."""
    longest = max((len(m) for m in _BACKTICKS_RE.findall(text)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def code_block(content: str, info: str = "") -> str:
    """Fenced code block whose fence is longer than any backtick run in the content."""
    longest = max((len(m) for m in _BACKTICKS_RE.findall(content)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{content.rstrip()}\n{fence}"


def relative_href(from_path: str, to_path: str) -> str:
    """Relative, percent-encoded link target from one repository file to another."""
    rel = posixpath.relpath(to_path, posixpath.dirname(from_path) or ".")
    return quote(rel, safe="/._-~")


def md_link(text: str, from_path: str, to_path: str) -> str:
    """A Markdown link with literal text and a relative, percent-encoded target."""
    return f"[{escape(text)}]({relative_href(from_path, to_path)})"


def one_line(text: str, limit: int = MAX_DESCRIPTION_CHARS) -> str:
    """The text on one line, cut with an ellipsis past ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def first_paragraph(text: str) -> str:
    """The first prose paragraph of a document (skipping headings, badges, HTML, fences, tables), on one line."""
    for block in re.split(r"\n\s*\n", text.strip()):
        stripped = block.strip()
        if stripped and not stripped.startswith(("#", "[![", "![", "<", "```", "---", "===", "|", "..")):
            return " ".join(stripped.split())
    return ""


_ATX_RE = re.compile(r"^( {0,3})(#{1,6})(?=\s|$)")
_FENCE_OPEN_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE_LINK_RE = re.compile(r"(!?\[[^\]\n]*\]\()(<[^>\n]*>|[^)\s]+)")
_HAS_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def adapt_readme(text: str, *, readme_path: str, page_path: str) -> str:
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
            return link.group(1) + relative_href(page_path, resolved)

        out.append(_INLINE_LINK_RE.sub(relink, line))
    return "\n".join(out)
