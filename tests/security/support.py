"""Helpers of the security tests: raw HTTP over a socket, envelope checks, paths filled from the contract."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass
from typing import Any

import schemas

ERROR_SCHEMA = "error.schema.json"


def assert_envelope(body: Any, code: str | None = None) -> None:
    """The body is the published error envelope (with ``code`` when given)."""
    errors = list(schemas.validator(ERROR_SCHEMA).iter_errors(body))
    assert not errors, (body, errors)
    if code is not None:
        assert body["error"]["code"] == code, body


@dataclass
class RawResponse:
    """A response read off a socket."""

    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool


def _parse(data: bytes) -> tuple[int, dict[str, str], bytes] | None:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "-1"))
    if length >= 0 and len(rest) < length:
        return None
    return status, headers, rest[:length] if length >= 0 else rest


async def raw_http(
    host: str, port: int, chunks: list[bytes], *, timeout: float = 10.0, pause: float = 0.0
) -> RawResponse | None:
    """Send ``chunks`` (``pause`` seconds apart) on a fresh connection and read one response.

    Returns:
        The response, or None when the server closed the connection without answering. ``closed`` tells whether
        the server closed the connection after it.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        try:
            for i, chunk in enumerate(chunks):
                if i and pause:
                    await asyncio.sleep(pause)  # a deliberately slow client, not a wait for a condition
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass  # the server hung up mid-request: read whatever it said before
        data = b""
        parsed = None
        deadline = time.monotonic() + timeout
        while parsed is None:
            left = deadline - time.monotonic()
            assert left > 0, f"no response within {timeout}s; got {data[:200]!r}"
            try:
                piece = await asyncio.wait_for(reader.read(65536), timeout=left)
            except ConnectionError:
                piece = b""
            if not piece:
                break
            data += piece
            parsed = _parse(data)
        if parsed is None:
            assert not data, data[:200]
            return None
        status, headers, body = parsed
        try:
            tail = await asyncio.wait_for(reader.read(1), timeout=1.0)
            closed = tail == b""
        except TimeoutError:
            closed = False
        except ConnectionError:
            closed = True
        return RawResponse(status=status, headers=headers, body=body, closed=closed)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


_PARAM = re.compile(r"\{([^}]+)\}")


def fill_path(path: str, values: dict[str, str] | None = None) -> str:
    """Replace each ``{param}`` of a path template with ``values[param]`` or a harmless well-formed value."""
    defaults = {
        "run_id": "rr_" + "0" * 32,
        "gate": "anchor",
        "account_id": "00000000-0000-4000-8000-000000000000",
        "slug": "no/such/page",
    }
    merged = {**defaults, **(values or {})}
    return _PARAM.sub(lambda m: merged.get(m.group(1), "x"), path)
