"""Request bodies are parsed by their models: as strict as the published schemas the models generate, or stricter.

The registry parses a body straight from its bytes with its model (``api.body.parse``); the published schema files
are generated from the same models. A body the model accepts and the published schema refuses would be accepted
against the contract: these tests look for one, with hand-picked edge cases and generated mutations of valid
bodies. (The model may be stricter: ``5.0`` is no integer for it.)
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import schemas
from api.body import parse
from api.openapi import component_name
from quantapilot.errors import ApiError
from schemas.generate import API_BODIES, WEBHOOK_BODIES

REQUESTS = [(model, "api.schema.json") for model, mode in API_BODIES if mode == "validation"] + [
    (model, "webhooks.schema.json") for model, mode in WEBHOOK_BODIES if mode == "validation"
]

VALID: dict[str, dict[str, Any]] = {
    "RunRequest": {
        "repo_url": "https://github.com/org/project",
        "branch": "release/1.2",
        "quantapilot_yaml_path": "ci/quantapilot.yml",
        "correlation_id": "crm-1:a.b",
    },
    "GateDecisionRequest": {"approved": True, "reason": "looks right"},
    "PauseRequest": {"reason": "security review"},
    "GateLinkRequest": {"approver": "carol"},
    "EmptyRequest": {},
    "BudgetRequest": {"time_budget_s": 7200.5, "extra_attempts": 3},
    "CreateEndpointRequest": {
        "url": "https://hooks.example.com/qp",
        "events": ["run.started", "run_completed"],
        "description": "ops",
        "run_kinds": ["repository"],
        "repositories": ["https://github.com/org/project"],
    },
    "UpdateEndpointRequest": {"enabled": False, "events": []},
    "RotateSecretRequest": {"overlap_hours": 24},
    "RecoverRequest": {"since": "2026-12-01T00:00:00Z", "until": "2026-12-02T00:00:00+01:00"},
}

# Values that must be refused wherever a field of that kind sits (each is wrong for some field's type or bounds).
HOSTILE: list[Any] = [
    None,
    "",
    " ",
    "5",
    "true",
    "a" * 3000,
    "../etc/passwd",
    "/abs",
    "a..b",
    "-lead",
    "x.lock",
    "has space",
    "line\nbreak",
    "ftp://host/x",
    "javascript:alert(1)",
    "\u202e",
    0,
    -1,
    5.0,
    1e400,
    10**30,
    True,
    [],
    ["a", "a"],
    [None],
    ["x" * 65],
    ["Run.Started"],
    ["repository", "repository"],
    ["other"],
    [1],
    {},
    {"nested": 1},
]


def _title(model: type[BaseModel]) -> str:
    return str(model.model_config.get("title") or model.__name__)


def _model_accepts(model: type[BaseModel], body: Any) -> bool:
    try:
        parse(model, json.dumps(body).encode())
    except ApiError as exc:
        refusal = (exc.status, exc.code)
    else:
        return True
    assert refusal == (422, "VALIDATION_ERROR")
    return False


def _schema_accepts(file: str, model: type[BaseModel], body: Any) -> bool:
    return bool(schemas.validator(file, _title(model)).is_valid(body))


def test_every_request_model_has_a_valid_example() -> None:
    assert {_title(m) for m, _ in REQUESTS} == set(VALID)
    for model, file in REQUESTS:
        assert _model_accepts(model, VALID[_title(model)]), model
        assert _schema_accepts(file, model, VALID[_title(model)]), model
        assert component_name(model)  # published in the OpenAPI document


@pytest.mark.parametrize(("model", "file"), REQUESTS, ids=lambda x: _title(x) if isinstance(x, type) else x)
def test_a_hostile_value_in_any_field_is_refused_by_the_model_when_the_schema_refuses_it(
    model: type[BaseModel], file: str
) -> None:
    valid = VALID[_title(model)]
    refused = 0
    for name in [*model.model_fields, "unknown_field"]:
        for value in HOSTILE:
            body = {**valid, name: value}
            if not _schema_accepts(file, model, body):
                refused += 1
                assert not _model_accepts(model, body), (name, value)
    # Not the body as a whole either.
    for whole in ([valid], "x", 1, None):
        assert not _model_accepts(model, whole) and not _schema_accepts(file, model, whole)
    assert refused > len(model.model_fields) * 5  # the table does reach every field


def test_specific_refusals_the_published_schema_states() -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("PauseRequest", {"reason": None}),  # absent, not null
        ("GateDecisionRequest", {"approved": "true"}),  # no coercion
        ("BudgetRequest", {}),  # minProperties
        ("UpdateEndpointRequest", {}),
        ("CreateEndpointRequest", {"url": "https://a.example/x", "events": ["run.started", "run.started"]}),
        ("RotateSecretRequest", {"overlap_hours": 169}),
        ("RunRequest", {"repo_url": "https://x/y", "branch": "feature//x"}),  # look-ahead patterns
        ("RunRequest", {"repo_url": "https://x/y", "branch": "main", "quantapilot_yaml_path": "a/../b"}),
    ]
    by_title = {_title(m): (m, f) for m, f in REQUESTS}
    for title, body in cases:
        model, file = by_title[title]
        assert not _schema_accepts(file, model, body), (title, body)
        assert not _model_accepts(model, body), (title, body)
    # Null is a value of GateDecisionRequest.reason in the contract: both take it.
    model, file = by_title["GateDecisionRequest"]
    assert _model_accepts(model, {"approved": True, "reason": None})
    assert _schema_accepts(file, model, {"approved": True, "reason": None})


def test_details_point_where_the_schema_does() -> None:
    model = next(m for m, _ in REQUESTS if _title(m) == "RunRequest")
    with pytest.raises(ApiError) as caught:
        parse(model, b'{"branch": "a..b", "extra": 1}')
    assert caught.value.status == 422
    assert caught.value.message == "request body does not match the schema"
    details = caught.value.details
    assert [d["path"] for d in details] == ["<root>", "<root>", "branch"]
    assert "'repo_url' is a required property" in [d["message"] for d in details]
    assert "Additional properties are not allowed ('extra' was unexpected)" in [d["message"] for d in details]
    with pytest.raises(ApiError) as caught:
        parse(next(m for m, _ in REQUESTS if _title(m) == "CreateEndpointRequest"), b'{"url": 5, "run_kinds": ["x"]}')
    assert [d["path"] for d in caught.value.details] == ["run_kinds.0", "url"]


def _mutations() -> st.SearchStrategy[tuple[int, dict[str, Any]]]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=80),
        st.sampled_from(HOSTILE[:18]),
    )
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=6)
    fields = st.sampled_from(["repo_url", "branch", "reason", "url", "events", "run_kinds", "enabled", "x"])
    return st.tuples(
        st.integers(min_value=0, max_value=len(REQUESTS) - 1),
        st.dictionaries(fields, values, max_size=3),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_generated_mutations_the_model_accepts_match_the_schema(case: tuple[int, dict[str, Any]]) -> None:
    index, changes = case
    model, file = REQUESTS[index]
    body = {**copy.deepcopy(VALID[_title(model)]), **changes}
    if _model_accepts(model, body):
        assert _schema_accepts(file, model, body), body
