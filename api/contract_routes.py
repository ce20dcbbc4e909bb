"""Routes that publish the API contract: ``GET /v1/openapi.json`` and the ``GET /v1/docs/api`` page.

Both are public (listed in ``api.auth.PUBLIC_PATHS``): the contract holds no secret, and clients need it before
they have a token. Both are built once, at start-up, and served from memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiohttp import web

from api.keys import SETTINGS
from api.openapi import build_openapi, render_api_page

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

routes = web.RouteTableDef()


async def _prepare(app: web.Application) -> None:
    """Build the contract at start-up, when the settings and routes are final."""
    document = build_openapi(app[SETTINGS])
    app[CONTRACT] = Contract(
        document=json.dumps(document, indent=1).encode("utf-8"),
        page=render_api_page(document).encode("utf-8"),
    )


def setup(app: web.Application) -> None:
    """Register the contract routes and the start-up hook that builds the contract."""
    app.router.add_routes(routes)
    app.on_startup.append(_prepare)


@routes.get(OPENAPI_PATH)
async def openapi_document(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of every endpoint."""
    return web.Response(
        body=request.app[CONTRACT].document,
        content_type="application/json",
        headers={"Cache-Control": "public, max-age=300"},
    )


@routes.get(API_PAGE_PATH)
async def api_page(request: web.Request) -> web.Response:
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
