"""A small local webhook receiver that verifies signatures (behind ``qp webhooks listen --port N``).

It doubles as the reference consumer: read the raw body, verify ``X-VC-Signature`` with the endpoint secret
before parsing anything, answer 2xx quickly, and deduplicate by event id (delivery is at-least-once).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from quantapilot.webhooks.signing import DEFAULT_TOLERANCE_S, verify_signature

MAX_BODY_BYTES = 1024 * 1024
EventCallback = Callable[[dict[str, Any]], None]

_SECRET_KEY = web.AppKey("webhook_listener_secret", str)
_CALLBACK_KEY: web.AppKey[EventCallback] = web.AppKey("webhook_listener_on_event")
_TOLERANCE_KEY = web.AppKey("webhook_listener_tolerance", float)


async def _receive(request: web.Request) -> web.Response:
    app = request.app
    body = await request.read()
    # Verify before parsing: an unauthenticated body is not even worth decoding.
    if not verify_signature(app[_SECRET_KEY], request.headers, body, tolerance=app[_TOLERANCE_KEY]):
        return web.json_response({"error": "invalid signature"}, status=401)
    try:
        event = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return web.json_response({"error": "body is not JSON"}, status=400)
    if not isinstance(event, dict):
        return web.json_response({"error": "body is not a JSON object"}, status=400)
    app[_CALLBACK_KEY](event)
    return web.json_response({"received": event.get("id")})


def create_listener_app(
    secret: str,
    *,
    on_event: EventCallback,
    tolerance: float = DEFAULT_TOLERANCE_S,
) -> web.Application:
    """Build the receiver application.

    Args:
        secret: The endpoint secret (``whsec_...``) shown when the endpoint was created or rotated.
        on_event: Called with each verified event envelope (print it, collect it); an exception makes the
            receiver answer 500, so the sender retries.
        tolerance: Accepted signature age in seconds.

    Returns:
        An application answering ``POST`` on any path: 200 with ``{"received": <id>}`` for a verified event,
        401 for a missing or bad signature, 400 for a verified body that is not a JSON object.
    """
    if not secret:
        raise ValueError("a signing secret is required")
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[_SECRET_KEY] = secret
    app[_CALLBACK_KEY] = on_event
    app[_TOLERANCE_KEY] = float(tolerance)
    app.router.add_post("/{tail:.*}", _receive)
    return app


def format_event(event: dict[str, Any]) -> str:
    """Render an event envelope as one line for a terminal.

    Args:
        event: The verified envelope.

    Returns:
        ``<created_at> <type> <id> run=<run_id> seq=<seq>`` followed by the ``data`` JSON.
    """
    data = json.dumps(event.get("data", {}), separators=(",", ":"), sort_keys=True, default=str)
    return (
        f"{event.get('created_at', '-')} {event.get('type', '?')} {event.get('id', '?')} "
        f"run={event.get('run_id') or '-'} seq={event.get('seq', '-')} {data}"
    )
