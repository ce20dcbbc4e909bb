"""``POST /v1/runs/{run_id}/gates/{gate}/links``: mint a signed review link, and the event log's ``review_url``.

A link is a capability, so only a caller that could decide the gate itself (``gates:decide``) mints one or sees
the ``review_url`` of ``gate.requested`` events in the event log: a link is never a way up for a weaker token.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from api.keys import REVIEW_KEY, SETTINGS
from api.registry import Call
from api.ui_routes import run_status
from quantapilot.errors import ApiError, ErrorCode, conflict, not_found
from quantapilot.models import GateStatus
from quantapilot.review.links import ReviewLink, gate_requested_link, link_expiry, review_url
from quantapilot.review.page import find_gate
from quantapilot.runs.http import GateLinkRequest, ReviewLinkAnswer
from quantapilot.tokens import Principal

DECIDE_SCOPE = "gates:decide"


def _key(request: web.Request) -> bytes:
    key = request.app[REVIEW_KEY]
    if not key:
        raise ApiError(503, ErrorCode.SERVICE_UNAVAILABLE, "review links are off: QP_REVIEW_LINK_KEY is not set")
    return key


async def mint_link(request: web.Request, call: Call) -> web.Response:
    """Mint a review link for a pending gate, bound to one approver when the body names one."""
    principal = call.principal
    run_id, gate_name = request.match_info["run_id"], request.match_info["gate"]
    key = _key(request)
    status = await run_status(request, principal.workspace, run_id)
    if status is None:
        raise not_found("run")
    gate = find_gate(status, gate_name)
    if gate is None:
        raise not_found("gate")
    if gate.status != GateStatus.PENDING:
        raise conflict(f"gate {gate_name} is not pending")
    approver = call.parsed.approver if isinstance(call.parsed, GateLinkRequest) else None
    if approver is not None and gate.approvers and approver not in gate.approvers:
        raise ApiError(
            422,
            ErrorCode.VALIDATION_ERROR,
            f"{approver} is not an approver of gate {gate_name}",
            details=[{"path": "approver", "message": "not on the gate's approver list"}],
        )
    settings = request.app[SETTINGS]
    now = datetime.now(UTC)
    expires_at = link_expiry(now, settings, deadline=gate.deadline)
    if expires_at <= now:
        # The gate's timer is due (the run has yet to mark it timed out): a link would be dead on arrival.
        raise conflict(f"gate {gate_name} passed its deadline")
    link = ReviewLink(
        workspace=principal.workspace, run_id=run_id, gate=gate_name, approver=approver, expires_at=expires_at
    )
    answer = ReviewLinkAnswer(url=review_url(settings, key, link), expires_at=link.expires_at, approver=approver)
    return web.json_response(answer.dump(), status=201, headers={"Cache-Control": "no-store"})


class _Event:
    """The fields of a served event that :func:`gate_requested_link` reads."""

    def __init__(self, event: dict[str, Any]) -> None:
        self.type = event.get("type")
        self.run_id = event.get("run_id")
        self.workspace = event.get("workspace")
        self.data = event.get("data") or {}
        self.created_at = datetime.fromisoformat(str(event["created_at"]).replace("Z", "+00:00"))


def with_review_urls(request: web.Request, principal: Principal, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The served events, ``gate.requested`` ones with their ``data.review_url`` for callers with gates:decide."""
    key = request.app[REVIEW_KEY]
    if not key or not principal.has(DECIDE_SCOPE):
        return events
    settings = request.app[SETTINGS]
    out: list[dict[str, Any]] = []
    for event in events:
        url = gate_requested_link(settings, key, _Event(event)) if event.get("type") == "gate.requested" else None
        out.append({**event, "data": {**event["data"], "review_url": url}} if url else event)
    return out
