"""Front matter splitting and safe Markdown-to-HTML rendering (markdown-it-py, CommonMark plus tables)."""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import yaml
from markdown_it import MarkdownIt

from quantapilot.repos.safe_yaml import YamlLimitError, load_yaml

# A front matter block opens with "---" on the very first line and closes with "---" or "..." on its own line.
_FRONT_MATTER_RE = re.compile(r"\A---[ \t]*\r?\n(?P<yaml>.*?)(?:^|\r?\n)(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.S | re.M)

# Link schemes a rendered page may point to; anything else with a scheme (javascript:, data:, vbscript:,
# file:, ...) is refused so the link is shown as text instead of becoming a live href.
_SAFE_SCHEMES = frozenset({"http", "https", "mailto"})
_SCHEME_RE = re.compile(r"^([a-z][a-z0-9+.\-]*):")
# Browsers ignore ASCII control characters and whitespace inside a scheme ("java\tscript:"): strip them first.
_IGNORED_IN_SCHEME_RE = re.compile(r"[\x00-\x20\x7f]+")


class FrontMatterError(ValueError):
    """The front matter block exists but is not a YAML mapping."""


class FrontMatterRefusedError(FrontMatterError):
    """The front matter block is over a limit of :mod:`quantapilot.repos.safe_yaml` (an alias bomb, say)."""


def find_front_matter(text: str) -> tuple[str | None, str]:
    """Locate the front matter block without parsing it.

    Args:
        text: A Markdown document.

    Returns:
        The raw YAML of the block (``None`` when the document has none) and the body after it.
    """
    match = _FRONT_MATTER_RE.match(text)
    if match is None:
        return None, text
    return match.group("yaml"), text[match.end() :]


def _plain(value: Any) -> Any:
    # YAML turns unquoted dates into date objects; callers (JSON Schema, JSON APIs) want plain strings.
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """Split a Markdown document into its front matter and its body.

    Dates and timestamps in the YAML are returned as ISO 8601 strings so the result is JSON-ready. The block is
    parsed within the limits every YAML of a repository gets (size, aliases, expanded nodes, depth;
    :mod:`quantapilot.repos.safe_yaml`), so a bomb costs time linear in its text.

    Args:
        text: A Markdown document, optionally starting with a ``---`` delimited YAML block.

    Returns:
        The front matter as a dict (empty when the document has none) and the body.

    Raises:
        FrontMatterRefusedError: The block is over one of those limits; nothing was built from it.
        FrontMatterError: The block is not valid YAML or not a mapping.
    """
    raw, body = find_front_matter(text)
    if raw is None:
        return {}, body
    try:
        data = load_yaml(raw, timestamps=True)
    except YamlLimitError as exc:
        raise FrontMatterRefusedError(f"front matter refused: {exc}") from None
    except yaml.YAMLError as exc:
        raise FrontMatterError(f"front matter is not valid YAML: {exc}") from exc
    if data is None:
        return {}, body
    if not isinstance(data, dict):
        raise FrontMatterError("front matter must be a YAML mapping")
    plain: dict[str, Any] = _plain(data)
    return plain, body


def is_safe_link(url: str) -> bool:
    """Tell whether a link target may become an ``href``: relative, ``#anchor``, http(s) or mailto.

    Args:
        url: The link destination after markdown-it's entity decoding and normalisation.

    Returns:
        ``True`` when the link is safe to render.
    """
    # markdown-it hands over the percent-encoded form; decode it so "java%09script:" is judged as a browser might.
    probe = _IGNORED_IN_SCHEME_RE.sub("", unquote(url)).lower()
    match = _SCHEME_RE.match(probe)
    if match is None:
        # No scheme: a relative path, an anchor or a protocol-relative URL; none can run script.
        return True
    return match.group(1) in _SAFE_SCHEMES


@lru_cache(maxsize=1)
def _renderer() -> MarkdownIt:
    # html=False makes markdown-it escape raw HTML blocks and inline tags instead of passing them through.
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    # Instance attribute on purpose: markdown-it consults md.validateLink for every link and autolink.
    md.validateLink = is_safe_link  # type: ignore[method-assign]
    return md


def render_html(markdown: str) -> str:
    """Render Markdown to HTML that is safe to embed in a page.

    The front matter block is stripped, raw HTML in the source is escaped rather than passed through, and
    links or images whose target uses a scheme other than http, https or mailto (``javascript:`` and friends)
    are left as plain text.

    Args:
        markdown: The Markdown document, with or without front matter.

    Returns:
        The HTML fragment.
    """
    _raw, body = find_front_matter(markdown)
    html: str = _renderer().render(body)
    return html
