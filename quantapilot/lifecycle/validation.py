"""JSON Schema validation of lifecycle request bodies (``schemas/lifecycle_run.schema.json``, ``telemetry``).

A body is checked in up to three passes, each for a reason of its own:

1. jsonschema-rs (:func:`_fast_validator`) answers valid or invalid. It is the hot path: ~4 ms instead of
   ~140 ms for a telemetry batch of 1000 events (bench/README.md).
2. Only for an invalid body, jsonschema (:func:`_validator`) lists the problems. Its messages are the ones the
   API has always published in ``error.details[].message``; jsonschema-rs words them differently (double
   quotes, "is shorter than 36 characters", "or 2 other candidates"), so it cannot explain errors without
   changing what clients read.
3. The pydantic models parse the valid body into typed objects and check what a schema cannot say ("to" after
   "from", ``gate`` only for the target stage); :func:`pydantic_errors` gives their errors the same shape.

Both schema validators read the same file (:func:`schemas.load`) and share the ``date-time``
(:func:`~quantapilot.lifecycle.rfc3339.parse_rfc3339`) and ``uuid`` checks, and
``tests/lifecycle/test_schema_validators_agree.py`` shows they agree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from typing import Any

import jsonschema
import jsonschema_rs
from pydantic import ValidationError

import schemas
from quantapilot.lifecycle.models import LifecycleRunRequest
from quantapilot.lifecycle.rfc3339 import parse_rfc3339


def _is_rfc3339(instance: object) -> bool:
    if not isinstance(instance, str):
        return True  # formats only constrain strings; the type keyword handles the rest
    parse_rfc3339(instance)  # raises ValueError, which the checker reports as a format error
    return True


def _is_uuid(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    # The hyphenated 8-4-4-4-12 form only: UUID() alone would also take braces, URNs and bare hex.
    return bool(re.fullmatch(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", instance))


def format_checker() -> jsonschema.FormatChecker:
    """Return a format checker whose ``date-time`` and ``uuid`` checks always run.

    jsonschema only checks ``date-time`` when ``rfc3339-validator`` is installed and silently passes
    otherwise; this checker replaces both formats with our own functions so validation never depends on
    optional packages.
    """
    checker = jsonschema.FormatChecker()
    checker.checks("date-time", raises=ValueError)(_is_rfc3339)
    checker.checks("uuid")(_is_uuid)
    return checker


class SchemaValidationError(ValueError):
    """A request body that does not match its JSON Schema (or the model behind it).

    Attributes:
        errors: One ``{"path": "/inputs/persona", "message": "..."}`` per problem, sorted by path.
    """

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['path'] or '/'}: {e['message']}" for e in errors[:5]))
        self.errors = errors


@cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = schemas.load(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator: jsonschema.protocols.Validator = cls(schema, format_checker=format_checker())
    return validator


def _is_rfc3339_format(instance: object) -> bool:
    try:
        return _is_rfc3339(instance)
    except ValueError:
        return False


@cache
def _fast_validator(name: str) -> Any:
    """The same schema compiled by jsonschema-rs, with our own ``date-time`` and ``uuid`` checks.

    Profiling the telemetry path showed the pure-Python validator spending ~140 ms on a batch of 1000 events;
    this one answers valid/invalid in a few. It only says yes or no: the error list still comes from
    :func:`_validator`, so what callers read does not change.
    """
    return jsonschema_rs.validator_for(
        load_schema(name),
        validate_formats=True,
        formats={"date-time": _is_rfc3339_format, "uuid": _is_uuid},
    )


def load_schema(name: str) -> dict[str, Any]:
    """Return the parsed JSON Schema ``schemas/<name>`` (e.g. ``lifecycle_run.schema.json``)."""
    schema = _validator(name).schema
    if not isinstance(schema, Mapping):
        raise TypeError(f"schema {name} is not an object")
    return dict(schema)


def _pointer(path: Any) -> str:
    return "".join(f"/{p}" for p in path)


def validate_json(name: str, payload: Any) -> None:
    """Validate ``payload`` against ``schemas/<name>``.

    Raises:
        SchemaValidationError: With every problem found, not only the first.
    """
    if _fast_validator(name).is_valid(payload):
        return
    # Invalid (or a case where the two validators disagree): the reference validator decides and explains.
    errors = sorted(_validator(name).iter_errors(payload), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise SchemaValidationError(
            [{"path": _pointer(e.absolute_path), "message": e.message[:300]} for e in errors[:50]]
        )


def pydantic_errors(exc: ValidationError) -> SchemaValidationError:
    """Turn a pydantic ``ValidationError`` into a :class:`SchemaValidationError` (no input values echoed)."""
    return SchemaValidationError(
        [{"path": _pointer(e["loc"]), "message": e["msg"]} for e in exc.errors(include_input=False)[:50]]
    )


def loads_strict(text: str | bytes) -> Any:
    """Parse JSON refusing ``NaN``/``Infinity``, which Python's ``json`` accepts but JSON does not.

    Numbers too large for a double (``1e400``) still parse to infinity; the schemas' ``maximum`` refuses them.

    Raises:
        SchemaValidationError: For the non-standard constants.
        ValueError: For text that is not JSON (``json.JSONDecodeError``).
    """

    def _reject(constant: str) -> Any:
        raise SchemaValidationError([{"path": "", "message": f"{constant} is not valid JSON"}])

    return json.loads(text, parse_constant=_reject)


def parse_run_request(payload: Any) -> LifecycleRunRequest:
    """Validate a decoded request body against ``lifecycle_run.schema.json`` and parse it.

    Raises:
        SchemaValidationError: When the body does not match the schema, or (e.g.) a report period ends before
            it starts.
    """
    validate_json("lifecycle_run.schema.json", payload)
    try:
        return LifecycleRunRequest.model_validate(payload)
    except ValidationError as exc:
        raise pydantic_errors(exc) from None
