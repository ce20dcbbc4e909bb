"""Handlers of the health checks: liveness (the process answers) and readiness (its dependencies answer)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from sqlalchemy import text
from sqlmodel import Session, select

from api.keys import ENGINE, TEMPORAL
from api.registry import Call
from quantapilot.bodies import Health, Readiness


async def healthz(request: web.Request, call: Call) -> web.Response:
    """Liveness: the process answers."""
    return call.answer(Health(status="ok"))


def _db_ping(request: web.Request) -> None:
    with Session(request.app[ENGINE]) as session:
        session.exec(select(text("1")))


async def readyz(request: web.Request, call: Call) -> web.Response:
    """Readiness: Temporal and the database answer."""
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(request.app[TEMPORAL].service_client.check_health(), timeout=5)
        checks["temporal"] = "ok"
    except Exception as exc:  # any failure means not ready; the reason is reported, not raised
        checks["temporal"] = f"unavailable: {type(exc).__name__}"
    try:
        await asyncio.wait_for(asyncio.to_thread(_db_ping, request), timeout=5)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    answer = Readiness(status="ready" if ready else "unavailable", checks=checks)
    return web.json_response(answer.dump(), status=200 if ready else 503)
