"""Parsing lifecycle request bodies with their pydantic models, straight from the request's bytes.

The models are the one validator: ``schemas/lifecycle_run.schema.json`` and ``telemetry.schema.json`` are
generated from them (``make schemas``), and a body is parsed once, by ``model_validate_json`` in strict mode and
by alias only, so a string is never read as a number, ``account_id`` is not taken for ``accountId``, and what
the models accept is what the published files describe (``tests/lifecycle/test_models_match_schemas.py``).

A refused body becomes a :class:`SchemaValidationError` whose ``errors`` are the API's 422 ``details``: one
``{"path", "message"}`` per problem, the path a JSON pointer into the body built from pydantic's error location
(:func:`details_from`). Input values are never echoed.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from quantapilot.lifecycle.models import REQUEST_BODY, LifecycleRunRequest

MAX_DETAILS = 50
NON_FINITE = "numbers must be finite JSON numbers"

M = TypeVar("M", bound=BaseModel)


class SchemaValidationError(ValueError):
    """A request body that does not match its model (and so the published schema generated from it).

    Attributes:
        errors: One ``{"path": "/inputs/persona", "message": "..."}`` per problem (at most 50), in the order
            pydantic reports them.
    """

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['path'] or '/'}: {e['message']}" for e in errors[:5]))
        self.errors = errors


def _escape(segment: str | int) -> str:
    # RFC 6901: "~" and "/" inside a key are escaped, so a key holding "/" stays one segment.
    return str(segment).replace("~", "~0").replace("/", "~1")


def _pointer(loc: tuple[str | int, ...], document: Any, *, missing: bool) -> str:
    """JSON pointer of an error location, following ``loc`` through the decoded ``document``.

    pydantic's locations mix the body's keys and indexes with names of the validators that failed (a union's
    member, ``[key]`` for a dict key): a segment is kept only when the document has it at that point, so only
    the body's own path remains, also for a key that happens to look like a validator's name. A missing field
    is not in the document; its name ends the path.
    """
    parts: list[str] = []
    node = document
    for index, segment in enumerate(loc):
        in_object = isinstance(node, dict) and isinstance(segment, str) and segment in node
        in_array = isinstance(node, list) and isinstance(segment, int) and 0 <= segment < len(node)
        if in_object or in_array:
            node = node[segment]
        elif missing and index == len(loc) - 1 and isinstance(segment, str):
            pass
        else:
            continue
        parts.append(_escape(segment))
    return "".join(f"/{p}" for p in parts)


def _non_finite_path(document: Any) -> str | None:
    """JSON pointer of the first NaN or infinity in ``document`` (JSON has neither; ``1e400`` reads as one)."""
    stack: list[tuple[Any, str]] = [(document, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where
        if isinstance(item, dict):
            stack.extend((v, f"{where}/{_escape(k)}") for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((v, f"{where}/{i}") for i, v in reversed(list(enumerate(item))))
    return None


def details_from(exc: ValidationError, raw: bytes | str) -> SchemaValidationError:
    """The 422 details of a body its model refused: paths into the body, pydantic's messages.

    Only a refused body gets here, so decoding it again to follow the locations costs the fast path nothing.
    A non-finite number (``NaN``, ``Infinity``, ``1e400``) is reported alone, at its path, as it always was.

    Args:
        exc: What ``model_validate_json`` raised.
        raw: The body it was given.

    Returns:
        The error to raise, with problems de-duplicated (a union reports each of its members) and capped.
    """
    try:
        document: Any = json.loads(raw)
    except (ValueError, RecursionError):
        document = None  # not JSON: pydantic's own location ("") is all there is
    where = _non_finite_path(document)
    if where is not None:
        return SchemaValidationError([{"path": where, "message": NON_FINITE}])
    seen: set[tuple[str, str]] = set()
    problems: list[dict[str, str]] = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        missing = error["type"] == "missing"
        path = _pointer(tuple(error["loc"]), document, missing=missing)
        # A missing field's message names it, as well as its path does (clients show messages alone).
        message = f"{error['msg']}: {error['loc'][-1]}" if missing and error["loc"] else error["msg"]
        key = (path, message[:300])
        if key not in seen:
            seen.add(key)
            problems.append({"path": key[0], "message": key[1]})
    return SchemaValidationError(problems[:MAX_DETAILS])


def parse_model(model: type[M], raw: bytes | str) -> M:
    """Parse ``raw`` JSON into ``model``: strict types, by alias only, no null for an absent field.

    Raises:
        SchemaValidationError: When the body does not match the model.
    """
    try:
        return model.model_validate_json(raw, strict=True, by_alias=True, by_name=False, context=REQUEST_BODY)
    except ValidationError as exc:
        raise details_from(exc, raw) from None


def parse_run_request(raw: bytes | str) -> LifecycleRunRequest:
    """Parse a ``POST /v1/lifecycle/runs`` body.

    The rules of ``lifecycle_run.schema.json``, and those a schema cannot say (e.g. "to" after "from").

    Raises:
        SchemaValidationError: When the body does not match.
    """
    return parse_model(LifecycleRunRequest, raw)
