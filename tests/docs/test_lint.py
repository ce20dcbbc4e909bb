"""Doc lint: front matter against the published schema, and the personal-data rules."""

from __future__ import annotations

import pytest

from quantapilot.docs.lint import (
    LintIssue,
    find_personal_data,
    frontmatter_validator,
    lint_markdown,
    lint_pages,
    scrub_personal_data,
)
from quantapilot.docs.model import GeneratedPage

GOOD_FRONT = """---
id: '90_api'
title: 'Integration API'
status: 'ready'
version: '0.1.0'
updated: '2025-08-19'
owners: ['platform-team']
---
"""


def _page(path: str, markdown: str) -> GeneratedPage:
    return GeneratedPage(slug=path, path=path, title="t", description="", markdown=markdown)


def test_lint_accepts_the_seed_style_front_matter() -> None:
    assert lint_markdown("docs/90_api.md", GOOD_FRONT + "\n# API\n\nText.\n") == []
    # Unquoted YAML dates are fine too: they are compared as ISO strings.
    assert lint_markdown("p.md", GOOD_FRONT.replace("'2025-08-19'", "2025-08-19") + "Body\n") == []


def test_lint_names_page_and_field_for_bad_front_matter() -> None:
    bad = """---
id: 'Bad Id'
title: ''
status: final
version: 1.0
updated: yesterday
owners: []
colour: blue
---
Body
"""
    issues = lint_pages([_page("docs/bad.md", bad)])
    assert {i.page for i in issues} == {"docs/bad.md"}
    assert [(i.field, i.message) for i in issues] == [
        ("colour", "unknown field"),
        (
            "id",
            "has an invalid format (expected: Stable identifier: letters, digits, '.', '_' and '-', "
            "e.g. 'api.pkg.mod' or '90_api'.)",
        ),
        ("owners", "must not be empty"),
        ("status", "must be one of draft, ready, deprecated"),
        ("title", "has an invalid format (expected: Human-readable title, not blank.)"),
        ("updated", "has an invalid format (expected: Date (YYYY-MM-DD) or RFC 3339 timestamp of the last change.)"),
        ("version", "must be of type string"),
    ]
    # Messages never echo the offending value.
    assert not any("yesterday" in i.message or "Bad Id" in i.message for i in issues)


def test_lint_reports_missing_required_fields() -> None:
    issues = lint_markdown("docs/x.md", "---\nid: x\ntitle: X\n---\nBody\n")
    assert issues == [
        LintIssue("docs/x.md", "status", "required field is missing"),
        LintIssue("docs/x.md", "version", "required field is missing"),
        LintIssue("docs/x.md", "updated", "required field is missing"),
        LintIssue("docs/x.md", "owners", "required field is missing"),
    ]


def test_lint_reports_missing_or_broken_front_matter() -> None:
    assert lint_markdown("a.md", "# No front matter\n") == [
        LintIssue("a.md", "front_matter", "missing front matter block")
    ]
    broken = lint_markdown("b.md", "---\nid: [unclosed\n---\nBody\n")
    assert [(i.page, i.field) for i in broken] == [("b.md", "front_matter")]
    listed = lint_markdown("c.md", "---\n- a\n- b\n---\nBody\n")
    assert [(i.field, i.message) for i in listed] == [("front_matter", "front matter must be a YAML mapping")]
    assert [i.field for i in lint_markdown("d.md", "---\nowners: [1]\n---\n")][-1] == "owners[0]"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("mail jane.doe@corp-mail.net today", "e-mail address"),
        ("call +1 (415) 555-0134", "phone number"),
        ("call (415) 555-0134", "phone number"),
        ("call 415-555-0134", "phone number"),
        ("token ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8", "GitHub token"),
        ("token gho_" + "A" * 36, "GitHub token"),
        ("token ghs_" + "9" * 36, "GitHub token"),
        ("token github_pat_" + "11ABCDEFG0" + "x" * 40, "GitHub token"),
        ("key AKIA" + "IOSFODNN7EXAMPLE", "AWS access key id"),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "secret value"),
        ('password: "hunter2hunter2hunter2"', "secret value"),
        ("-----BEGIN RSA PRIVATE KEY-----", "private key"),
        ("server at 10.20.30.40 answers", "IPv4 address"),
        ("client 203.0.114.7 connected", "IPv4 address"),
        ("host 2a00:1450:4007:80f::200e is up", "IPv6 address"),
    ],
)
def test_lint_finds_personal_data(text: str, kind: str) -> None:
    assert find_personal_data(f"intro\n{text}\n") == [(kind, 2)]
    issues = lint_markdown("docs/p.md", GOOD_FRONT + f"\n{text}\n")
    assert [(i.page, i.field) for i in issues] == [("docs/p.md", "content")]
    assert kind in issues[0].message
    # Messages never repeat what they found: it may be a secret.
    assert text.split()[-1] not in issues[0].message
    assert scrub_personal_data(text) != text
    assert "[redacted]" in scrub_personal_data(text)


@pytest.mark.parametrize(
    "text",
    [
        "release 1.2.3.4 is out",
        "pin pkg==2.10.1.0 or v1.20.3.4 or pkg-10.2.3.4 or 1.2.3.4rc1",
        "bump from 1.2.3.4 to 1.2.3.5",  # single-digit quads read as versions
        "version 10.0.0.1",
        "a.b.c.d 1.2.3.4.5 and 300.1.1.1 and 01.02.03.04",
        "listen on 127.0.0.1, 0.0.0.0, ::1 and fe80::1; docs use 192.0.2.10 and 2001:db8::42",
        "clone git@github.com:org/repo.git; mail user@example.com or ci@build.test",
        "dated 2024-01-15 at 12:30:45, id 20240115123045, size 1048576 bytes",
        "std::vector<int> and x[::2] and a:b:c",
        "sha 3f786850e387550fdab836ed7e6dc881de23001b",
        "def f(token: str | None = None, password: str = settings.db_password) -> None",
        "uuid 123e4567-e89b-12d3-a456-426614174000",
    ],
)
def test_lint_ignores_look_alikes(text: str) -> None:
    assert find_personal_data(text) == []
    assert scrub_personal_data(text) == text


def test_lint_scans_front_matter_values() -> None:
    text = GOOD_FRONT.replace("['platform-team']", "['platform-team', 'bob@corp-mail.net']") + "Body\n"
    assert lint_markdown("docs/o.md", text) == [
        LintIssue("docs/o.md", "owners[1]", "contains personal data (e-mail address)")
    ]


def test_lint_scrub_replaces_every_hit() -> None:
    text = "a jane@corp-mail.net b 10.20.30.40 c ghp_" + "x" * 36 + " d"
    assert scrub_personal_data(text) == "a [redacted] b [redacted] c [redacted] d"


def test_lint_compiles_the_schema_once() -> None:
    assert frontmatter_validator() is frontmatter_validator()
    schema = frontmatter_validator().schema
    assert isinstance(schema, dict)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
