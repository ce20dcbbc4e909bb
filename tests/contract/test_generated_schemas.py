"""The generated schema files are what ``make schemas`` writes from the models today."""

from __future__ import annotations

from typing import Any

import pytest

import schemas
from schemas.generate import GENERATED, main, render


@pytest.mark.parametrize("item", GENERATED, ids=lambda item: item.name)
def test_checked_in_schema_is_what_make_schemas_writes(item: Any) -> None:
    on_disk = (schemas.SCHEMA_DIR / item.name).read_bytes()
    assert on_disk == render(item.build()).encode("utf-8"), f"{item.name} is stale: run `make schemas`"


def test_check_mode_reports_a_stale_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for item in GENERATED:
        (tmp_path / item.name).write_text("{}\n", encoding="utf-8")
    monkeypatch.setattr("schemas.generate.SCHEMA_DIR", tmp_path)
    assert main(["--check"]) == 1
    assert (tmp_path / GENERATED[0].name).read_text(encoding="utf-8") == "{}\n"  # --check writes nothing
    assert main([]) == 0
    assert main(["--check"]) == 0
