"""Handlers that publish the API contract: ``GET /v1/openapi.json`` and the ``GET /v1/docs/api`` page.

Both are public (declared so in ``api/endpoints.py``): the contract holds no secret, and clients need it before
they have a token. Both are built once, at start-up (:func:`publish`, from ``api/app.py``), and served from memory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from api.registry import Call

OPENAPI_PATH = "/v1/openapi.json"
API_PAGE_PATH = "/v1/docs/api"
# The page has no script and loads nothing: forbid everything except its own inline style.
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


@dataclass(frozen=True, slots=True)
class Contract:
    """The serialized document and page of one application."""

    document: bytes
    page: bytes


CONTRACT = web.AppKey("contract", Contract)


def publish(app: web.Application, document: Mapping[str, Any], page: str) -> None:
    """Keep the application's OpenAPI document and its HTML page, serialized, for the two handlers."""
    app[CONTRACT] = Contract(document=json.dumps(document, indent=1).encode("utf-8"), page=page.encode("utf-8"))


async def openapi_document(request: web.Request, call: Call) -> web.Response:
    """The OpenAPI 3.1 document of every endpoint."""
    return web.Response(
        body=request.app[CONTRACT].document,
        content_type="application/json",
        headers={"Cache-Control": "public, max-age=300"},
    )


async def api_page(request: web.Request, call: Call) -> web.Response:
    """The same document as a self-contained HTML page (no script, no external resource)."""
    return web.Response(
        body=request.app[CONTRACT].page,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": PAGE_CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "public, max-age=300",
        },
    )
