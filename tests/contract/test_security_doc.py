"""docs/SECURITY.md's table of scopes per endpoint is the registry's, row for row (it cannot drift from it)."""

from __future__ import annotations

import re
from pathlib import Path

from api.endpoints import ENDPOINTS

SECURITY_MD = Path(__file__).resolve().parents[2] / "docs" / "SECURITY.md"
ROW = re.compile(
    r"^\| (GET|POST|PATCH|PUT|DELETE) \| `([^`]+)`(?: \(deprecated alias\))? \| (`[^`]+`|public) \| ([a-z-]+) \|$"
)


def documented_rows() -> list[tuple[str, str, str | None, str]]:
    """The rows of the "Scopes per endpoint" table: method, path, scope (None for public), rate class."""
    text = SECURITY_MD.read_text(encoding="utf-8")
    section = text.split("## Scopes per endpoint", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            method, path, scope, rate = match.groups()
            rows.append((method, path, None if scope == "public" else scope.strip("`"), rate))
    return rows


def test_security_doc_scopes_table_is_the_registry_in_order() -> None:
    # The seed alias is documented at its default path, /run.
    expected = [(e.method, e.canonical, e.scope, "-" if e.public else e.rate_class) for e in ENDPOINTS.resolved("/run")]
    assert documented_rows() == expected
