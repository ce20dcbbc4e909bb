"""Reading request bodies: content type, size, UTF-8, JSON depth and NUL, then parsing with the body's model."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from quantapilot.errors import ApiError, ErrorCode

M = TypeVar("M", bound=BaseModel)

MAX_DEPTH = 32


def _inspect(value: Any, limit: int) -> tuple[int, bool]:
    """Nesting depth of a parsed JSON value (stopping once past ``limit``) and whether a string holds NUL."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    nul = False
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            break
        if isinstance(item, str):
            nul = nul or "\x00" in item
        elif isinstance(item, dict):
            nul = nul or any("\x00" in key for key in item)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest, nul


def decode_json(raw: bytes) -> Any:
    """Decode a non-empty JSON body: UTF-8, JSON, nesting at most :data:`MAX_DEPTH` levels, no NUL in any string.

    Raises:
        ApiError: 400 for invalid UTF-8 or JSON or nesting deeper than :data:`MAX_DEPTH`, 422 for a NUL.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, ErrorCode.VALIDATION_ERROR, "request body is not valid UTF-8") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise ApiError(400, ErrorCode.VALIDATION_ERROR, "request body is not valid JSON") from None
    depth, nul = _inspect(data, MAX_DEPTH)
    if depth > MAX_DEPTH:
        raise ApiError(400, ErrorCode.VALIDATION_ERROR, f"JSON nesting deeper than {MAX_DEPTH} levels")
    if nul:
        # No text we store may hold NUL (PostgreSQL refuses it), and no legitimate input needs it.
        raise ApiError(422, ErrorCode.VALIDATION_ERROR, "strings must not contain the NUL character (\\u0000)")
    return data


async def read_bytes(request: web.Request, *, required: bool = True) -> bytes:
    """Read a JSON body's bytes: size, emptiness and content type checked, not yet decoded.

    Args:
        request: The request.
        required: When False, an empty body reads as ``b"{}"``.

    Raises:
        ApiError: 400 for an empty required body, 415 for another content type, 413 over the size limit.
    """
    raw = await request.read()  # aiohttp enforces client_max_size here (413)
    if not raw.strip():
        if required:
            raise ApiError(400, ErrorCode.VALIDATION_ERROR, "request body is required")
        return b"{}"
    if request.content_type != "application/json":
        raise ApiError(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json")
    return raw


async def read_json(request: web.Request, *, required: bool = True) -> Any:
    """Parse the request body as JSON (:func:`read_bytes`, then :func:`decode_json`).

    Args:
        request: The request.
        required: When False, an empty body reads as ``{}``.

    Raises:
        ApiError: 415 for another content type, 413 over the size limit, 400 for invalid UTF-8 or JSON or
            nesting deeper than :data:`MAX_DEPTH`, 422 for a NUL in a string.
    """
    return decode_json(await read_bytes(request, required=required))


def may_hold_nul(raw: bytes) -> bool:
    r"""Whether a decoded ``raw`` could hold a NUL character: the bytes check for :func:`decode_json`'s NUL rule.

    In JSON text a NUL is either a raw 0x00 byte (invalid JSON, refused by any parser) or the escape ``\u0000``
    (hex digits have no case here), so bytes holding neither decode to no NUL. A hit may be a false alarm (an
    escaped backslash before ``u0000``): the caller then decodes the body with :func:`decode_json` to decide.
    """
    return b"\\u0000" in raw or b"\x00" in raw


# A missing or unknown field is a fault of the object that lacks or has it: its path is the object's (as the
# published schema's required and additionalProperties say), and the message names the field.
_OF_THE_OBJECT = {
    "missing": "{!r} is a required property",
    "extra_forbidden": "Additional properties are not allowed ({!r} was unexpected)",
}


def _detail(err: ErrorDetails) -> dict[str, str]:
    loc, message = err["loc"], err["msg"]
    if err["type"] in _OF_THE_OBJECT and loc:
        loc, message = loc[:-1], _OF_THE_OBJECT[err["type"]].format(loc[-1])
    return {"path": ".".join(str(p) for p in loc) or "<root>", "message": message[:300]}


def parse(model: type[M], raw: bytes) -> M:
    """Parse a request body straight from its bytes with its model; 422 listing every error (path and message).

    Args:
        model: The body's model.
        raw: The body as received (already through :func:`read_json`'s checks), or empty for ``{}``.

    Raises:
        ApiError: 422 ``VALIDATION_ERROR`` whose ``details`` are pydantic's errors: ``path`` the dotted location
            (``<root>`` for the body itself; the object's for a missing or unknown field), ``message`` the error's
            text (never the input value).
    """
    try:
        return model.model_validate_json(raw if raw.strip() else b"{}")
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        details = sorted((_detail(err) for err in errors), key=lambda d: d["path"])
        raise ApiError(
            422, ErrorCode.VALIDATION_ERROR, "request body does not match the schema", details=details[:20]
        ) from None
