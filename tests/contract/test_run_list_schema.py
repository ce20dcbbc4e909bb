"""The run list's published shape (api.schema.json $defs/RunList) is what its model generates."""

from __future__ import annotations

import schemas
from quantapilot.runs.contracts import RunList
from schemas.generate import model_schema


def test_run_list_definition_is_generated_from_its_model() -> None:
    generated = {k: v for k, v in model_schema(RunList).items() if k != "title"}
    assert schemas.load("api.schema.json")["$defs"]["RunList"] == generated


def test_run_list_definition_refuses_what_the_model_refuses() -> None:
    validator = schemas.validator("api.schema.json", "RunList")
    item = {
        "run_id": "rr_" + "0" * 32,
        "kind": "repository",
        "state": "waiting_for_gate",
        "gate": "anchor",
        "created_at": "2026-12-02T10:00:00Z",
        "updated_at": "2026-12-02T10:01:00Z",
    }
    assert not list(validator.iter_errors({"runs": [item], "next_page_token": "abc"}))
    RunList.model_validate({"runs": [item]})
    assert list(validator.iter_errors({"runs": [{**item, "state": "sleeping"}]}))
    assert list(validator.iter_errors({"runs": [{**item, "gate": None}]}))  # absent, never null
    assert list(validator.iter_errors({"runs": [], "extra": 1}))
