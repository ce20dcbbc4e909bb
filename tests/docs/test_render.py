"""HTML rendering: front matter stripped, raw HTML escaped, unsafe link schemes dropped."""

from __future__ import annotations

import pytest

from quantapilot.docs.render import FrontMatterError, FrontMatterRefusedError, render_html, split_front_matter


def test_render_strips_front_matter_and_renders_tables() -> None:
    html = render_html("---\nid: x\ntitle: X\n---\n# Hello\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n")
    assert html.startswith("<h1>Hello</h1>")
    assert "id: x" not in html
    assert "<table>" in html
    assert "<td>1</td>" in html


def test_render_escapes_raw_html() -> None:
    html = render_html('<script>alert(1)</script>\n\nText <img src=x onerror="alert(2)"> and <b>bold</b>\n')
    assert "<script" not in html
    assert "<img" not in html
    assert "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in html


@pytest.mark.parametrize(
    "source",
    [
        "[x](javascript:alert(1))",
        "[x](JavaScript:alert(1))",
        "[x](jav&#x61;script:alert(1))",
        "[x](<java\tscript:alert(1)>)",
        "<javascript:alert(1)>",
        "![x](javascript:alert(1))",
        "[x](vbscript:msgbox(1))",
        "[x](data:text/html;base64,PHNjcmlwdD4=)",
        "[x][r]\n\n[r]: javascript:alert(1)",
    ],
)
def test_render_drops_unsafe_links(source: str) -> None:
    html = render_html(source + "\n")
    assert "href=" not in html
    assert "src=" not in html
    assert "javascript:" not in html.replace("&#x61;", "a").lower() or "<a" not in html


def test_render_keeps_safe_links() -> None:
    html = render_html("[a](api/index.md) [b](https://example.org/x) [c](mailto:team@example.org) [d](#top)\n")
    assert '<a href="api/index.md">a</a>' in html
    assert '<a href="https://example.org/x">b</a>' in html
    assert '<a href="mailto:team@example.org">c</a>' in html
    assert '<a href="#top">d</a>' in html


def test_split_front_matter_returns_plain_values() -> None:
    meta, body = split_front_matter("---\nid: a\nupdated: 2025-08-19\nowners: [x]\n---\n# Body\n")
    assert meta == {"id": "a", "updated": "2025-08-19", "owners": ["x"]}
    assert body == "# Body\n"
    assert split_front_matter("# No block\n---\nx: 1\n---\n") == ({}, "# No block\n---\nx: 1\n---\n")
    assert split_front_matter("---\n---\nBody") == ({}, "Body")
    with pytest.raises(FrontMatterError):
        split_front_matter("---\nkey: [unclosed\n---\n")


@pytest.mark.parametrize(
    ("front", "why"),
    [
        # Nine levels of ten aliases: 10**9 leaves once expanded.
        (
            "\n".join(['l0: &l0 "lol"'] + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]),
            "more than 64 YAML aliases",
        ),
        ("loop: &s [*s]", "recursive YAML aliases"),
        ("deep: " + "[" * 100 + "]" * 100, "nesting deeper than 64 levels"),
        ("big: &b [" + ", ".join(["1"] * 10_000) + "]\ncopies: [*b, *b, *b, *b, *b, *b]", "nodes once aliases"),
    ],
)
def test_split_front_matter_refuses_yaml_over_the_limits(front: str, why: str) -> None:
    # The same limits as quantapilot.yml (quantapilot/repos/safe_yaml.py); nothing is built from the document.
    with pytest.raises(FrontMatterRefusedError, match=why):
        split_front_matter(f"---\n{front}\n---\n# Body\n")


def test_split_front_matter_keeps_dates_and_last_duplicate_key() -> None:
    meta, _ = split_front_matter("---\nupdated: 2025-08-19T10:00:00Z\nid: a\nid: b\n---\n")
    assert meta == {"updated": "2025-08-19T10:00:00+00:00", "id": "b"}
