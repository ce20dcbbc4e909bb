"""Reading request bodies: content type, size, UTF-8, JSON depth, and schema validation."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

import schemas
from quantapilot.errors import ApiError, ErrorCode

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


async def read_json(request: web.Request, *, required: bool = True) -> Any:
    """Parse the request body as JSON.

    Args:
        request: The request.
        required: When False, an empty body reads as ``{}``.

    Raises:
        ApiError: 415 for another content type, 413 over the size limit, 400 for invalid UTF-8 or JSON or
            nesting deeper than :data:`MAX_DEPTH`.
    """
    raw = await request.read()  # aiohttp enforces client_max_size here (413)
    if not raw.strip():
        if required:
            raise ApiError(400, ErrorCode.VALIDATION_ERROR, "request body is required")
        return {}
    if request.content_type != "application/json":
        raise ApiError(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json")
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


def validate(data: Any, schema_file: str, definition: str | None = None) -> dict[str, Any]:
    """Validate against a published schema; 422 listing every error (path and message) when invalid."""
    errors = sorted(
        schemas.validator(schema_file, definition).iter_errors(data), key=lambda e: [str(p) for p in e.path]
    )
    if errors:
        details = [
            {"path": ".".join(str(p) for p in err.absolute_path) or "<root>", "message": err.message[:300]}
            for err in errors[:20]
        ]
        raise ApiError(422, ErrorCode.VALIDATION_ERROR, "request body does not match the schema", details=details)
    if not isinstance(data, dict):
        raise ApiError(422, ErrorCode.VALIDATION_ERROR, "request body must be a JSON object")
    return data
