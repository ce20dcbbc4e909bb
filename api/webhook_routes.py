"""Handlers of webhook subscriptions: endpoints, secret rotation, the delivery log and redelivery.

Every route needs the ``webhooks:manage`` scope (declared in ``api/endpoints.py``) and sees only the caller's
workspace: an endpoint or delivery of another workspace answers 404 exactly like a missing one. A signing secret is
returned once, by the request that created it (endpoint creation or rotation), and by no read afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any, cast

from aiohttp import web
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio.client import Client
from temporalio.service import RPCError

from api.keys import ENGINE, KEYRING, SETTINGS, TEMPORAL
from api.registry import Call
from quantapilot.bodies import ResponseBody
from quantapilot.db import session_scope, utcnow
from quantapilot.errors import ApiError, ErrorCode, conflict, not_found
from quantapilot.secretbox import KeyRing
from quantapilot.settings import Settings
from quantapilot.webhooks import deliveries, endpoints, recovery, rotation
from quantapilot.webhooks.contracts import is_outbox_owner, outbox_owner, redelivery_workflow_id
from quantapilot.webhooks.signing import standard_secret
from quantapilot.webhooks.starts import start_redeliveries, start_redelivery
from quantapilot.webhooks.tables import (
    DeliveryStatus,
    WebhookNotFoundError,
)
from quantapilot.webhooks.urlsafety import UnsafeUrlError, check_url, check_url_syntax
from quantapilot.webhooks.views import (
    DeliveryView,
    RecoverRequest,
    WebhookDeliveryList,
    WebhookEndpointCreated,
    WebhookEndpointList,
    WebhookEndpointView,
    WebhookRecovery,
    WebhookSecretRotated,
)

log = logging.getLogger("quantapilot.api.webhooks")

MAX_DELIVERIES_PAGE = 200


# ----- helpers -------------------------------------------------------------------------------------------------


def _invalid(message: str, *, field: str, reason: str) -> ApiError:
    return ApiError(422, ErrorCode.VALIDATION_ERROR, message, details=[{"path": field, "reason": reason}])


async def _check_url(url: str, settings: Settings) -> None:
    """Refuse a URL that is malformed or that resolves to a refused address now (422 with the reason)."""
    try:
        check_url_syntax(url, allow_private=settings.webhook_allow_private)
        await asyncio.wait_for(check_url(url, allow_private=settings.webhook_allow_private), timeout=10)
    except UnsafeUrlError as exc:
        raise _invalid(str(exc), field="url", reason=exc.reason) from None
    except ValueError:
        # Any other parser or resolver refusal of the host is still the caller's URL, never a 500.
        raise _invalid("webhook URL host is not valid", field="url", reason="invalid_host") from None
    except (OSError, TimeoutError):
        # A host that does not resolve today is almost always a typo; it is checked again on every delivery.
        raise _invalid("webhook URL host does not resolve", field="url", reason="unresolvable_host") from None


def _filters(body: dict[str, Any]) -> dict[str, Any]:
    names = {"events": "event_types", "run_kinds": "run_kinds", "repositories": "repositories"}
    return {target: body[source] for source, target in names.items() if source in body}


def _not_found(exc: WebhookNotFoundError) -> ApiError:
    return not_found(exc.what)


async def _in_db(request: web.Request, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking database function in a thread, mapping the store's errors to the API's."""
    try:
        return await asyncio.to_thread(fn, request.app[ENGINE], *args, **kwargs)
    except WebhookNotFoundError as exc:
        raise _not_found(exc) from None
    except endpoints.EndpointLimitError as exc:
        raise conflict(str(exc), code=ErrorCode.WEBHOOK_ENDPOINT_LIMIT, details={"limit": exc.limit}) from None
    except UnsafeUrlError as exc:
        raise _invalid(str(exc), field="url", reason=exc.reason) from None
    except ValueError as exc:
        # The store's filter checks (unknown event type, too many items): the message names no secret.
        raise ApiError(422, ErrorCode.VALIDATION_ERROR, str(exc)[:300]) from None


# ----- database steps (blocking; run in a thread) ---------------------------------------------------------------


def _create(
    engine: Engine, *, workspace: str, body: dict[str, Any], allow_private: bool, keyring: KeyRing, limit: int
) -> tuple[WebhookEndpointView, str]:
    with session_scope(engine) as session:
        endpoint, secret = endpoints.create_endpoint(
            session=session,
            workspace=workspace,
            url=body["url"],
            description=body.get("description", ""),
            allow_private=allow_private,
            keyring=keyring,
            max_endpoints=limit,
            **_filters(body),
        )
        return WebhookEndpointView.of(endpoint), secret


def _list(engine: Engine, *, workspace: str) -> list[WebhookEndpointView]:
    with Session(engine) as session:
        return [WebhookEndpointView.of(e) for e in endpoints.list_endpoints(session=session, workspace=workspace)]


def _get(engine: Engine, endpoint_id: str, *, workspace: str) -> WebhookEndpointView:
    with Session(engine) as session:
        return WebhookEndpointView.of(endpoints.get_endpoint(endpoint_id, session=session, workspace=workspace))


def _update(
    engine: Engine, endpoint_id: str, *, workspace: str, body: dict[str, Any], allow_private: bool
) -> WebhookEndpointView:
    with session_scope(engine) as session:
        endpoint = endpoints.update_endpoint(
            endpoint_id,
            session=session,
            workspace=workspace,
            url=body.get("url"),
            description=body.get("description"),
            enabled=body.get("enabled"),
            allow_private=allow_private,
            **_filters(body),
        )
        return WebhookEndpointView.of(endpoint)


def _delete(engine: Engine, endpoint_id: str, *, workspace: str) -> None:
    with session_scope(engine) as session:
        endpoints.delete_endpoint(endpoint_id, session=session, workspace=workspace)


def _rotate(
    engine: Engine, endpoint_id: str, *, workspace: str, overlap: timedelta, keyring: KeyRing
) -> tuple[str, datetime]:
    with session_scope(engine) as session:
        secret = rotation.rotate_secret(
            endpoint_id, session=session, workspace=workspace, overlap=overlap, keyring=keyring
        )
        endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace=workspace)
        return secret, endpoint.updated_at + overlap


def _deliveries(
    engine: Engine, endpoint_id: str, *, workspace: str, limit: int, status: DeliveryStatus | None
) -> list[DeliveryView]:
    with Session(engine) as session:
        rows = deliveries.list_deliveries(endpoint_id, session=session, workspace=workspace, limit=limit, status=status)
        attempts = deliveries.attempts_by_delivery(session, [r.id for r in rows])
        return [DeliveryView.of(r, attempts[r.id]) for r in rows]


def _delivery(engine: Engine, delivery_id: str, *, workspace: str) -> DeliveryView:
    with Session(engine) as session:
        row = deliveries.get_delivery(delivery_id, session=session, workspace=workspace)
        return DeliveryView.of(row, deliveries.attempts_by_delivery(session, [row.id])[row.id])


def _new_owner(delivery_id: str, *, outbox: bool) -> str:
    # Through the outbox (the dispatcher sends it within its poll interval), or a fresh workflow.
    return outbox_owner(delivery_id) if outbox else redelivery_workflow_id(delivery_id, uuid.uuid4().hex[:12])


def _redeliver(
    engine: Engine, delivery_id: str, *, workspace: str, outbox: bool
) -> tuple[DeliveryView, str | None, str, int]:
    with session_scope(engine) as session:
        workflow_id = _new_owner(delivery_id, outbox=outbox)
        try:
            handover = recovery.redeliver(delivery_id, session=session, workspace=workspace, workflow_id=workflow_id)
        except recovery.EndpointDisabledError as exc:
            raise conflict(str(exc)) from None
        return DeliveryView.of(handover.delivery), handover.previous_workflow_id, workflow_id, handover.first_attempt


def _recover(
    engine: Engine, endpoint_id: str, *, workspace: str, since: datetime, until: datetime, outbox: bool
) -> tuple[list[tuple[str, str, int]], bool]:
    with session_scope(engine) as session:
        try:
            done = recovery.recover(
                endpoint_id,
                session=session,
                workspace=workspace,
                since=since,
                until=until,
                workflow_id=lambda delivery_id: _new_owner(delivery_id, outbox=outbox),
            )
        except recovery.EndpointDisabledError as exc:
            raise conflict(str(exc)) from None
        starts = [(r.delivery.id, r.workflow_id, r.first_attempt) for r in done.redeliveries]
        return starts, done.more


async def _cancel_quietly(client: Client, workflow_id: str) -> None:
    """Cancel a superseded delivery workflow; it stops on its own anyway, this only ends its wait early."""
    # Already closed or never started: nothing to end.
    with contextlib.suppress(RPCError):
        await client.get_workflow_handle(workflow_id).cancel()


def _secret_forms(secret: str) -> dict[str, str]:
    # Both forms of the one secret, in every answer that shows it: as it is (X-VC-Signature, qp webhooks listen)
    # and as Standard Webhooks libraries take it (their key is the bytes it base64-decodes to).
    return {"secret": secret, "standard_webhooks_secret": standard_secret(secret)}


def _answer(body: ResponseBody, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body.dump(), status=status, headers=headers)


# ----- handlers ------------------------------------------------------------------------------------------------


async def create_endpoint(request: web.Request, call: Call) -> web.Response:
    """Subscribe a URL; the answer carries the signing secret, shown this once."""
    principal, body = call.principal, call.body
    settings = request.app[SETTINGS]
    await _check_url(body["url"], settings)
    view, secret = await _in_db(
        request,
        _create,
        workspace=principal.workspace,
        body=body,
        allow_private=settings.webhook_allow_private,
        keyring=request.app[KEYRING],
        limit=settings.webhook_max_endpoints,
    )
    log.info("webhook endpoint %s created in workspace %s", view.id, principal.workspace)
    created = WebhookEndpointCreated(**dict(view), **_secret_forms(secret))
    return _answer(created, status=201, headers={"Cache-Control": "no-store"})


async def list_endpoints(request: web.Request, call: Call) -> web.Response:
    """The workspace's endpoints, oldest first."""
    principal = call.principal
    endpoints = await _in_db(request, _list, workspace=principal.workspace)
    return _answer(WebhookEndpointList(endpoints=endpoints))


async def get_endpoint(request: web.Request, call: Call) -> web.Response:
    """One endpoint (without its secret)."""
    principal = call.principal
    view = await _in_db(request, _get, request.match_info["endpoint_id"], workspace=principal.workspace)
    return _answer(view)


async def update_endpoint(request: web.Request, call: Call) -> web.Response:
    """Change an endpoint's URL, filters, description, or enable/disable it."""
    principal, body = call.principal, call.body
    settings = request.app[SETTINGS]
    endpoint_id = request.match_info["endpoint_id"]
    # Existence first, so a probe of another workspace's id learns nothing from the URL check.
    await _in_db(request, _get, endpoint_id, workspace=principal.workspace)
    if "url" in body:
        await _check_url(body["url"], settings)
    view = await _in_db(
        request,
        _update,
        endpoint_id,
        workspace=principal.workspace,
        body=body,
        allow_private=settings.webhook_allow_private,
    )
    return _answer(view)


async def delete_endpoint(request: web.Request, call: Call) -> web.Response:
    """Delete an endpoint with its secrets and delivery log; pending deliveries stop."""
    principal = call.principal
    await _in_db(request, _delete, request.match_info["endpoint_id"], workspace=principal.workspace)
    return web.Response(status=204)


async def rotate_secret(request: web.Request, call: Call) -> web.Response:
    """Issue a new secret; the previous ones keep signing for the overlap (default from the settings)."""
    principal = call.principal
    hours = float(call.body.get("overlap_hours", request.app[SETTINGS].webhook_secret_overlap_hours))
    secret, until = await _in_db(
        request,
        _rotate,
        request.match_info["endpoint_id"],
        workspace=principal.workspace,
        overlap=timedelta(hours=hours),
        keyring=request.app[KEYRING],
    )
    rotated = WebhookSecretRotated(
        endpoint_id=request.match_info["endpoint_id"], **_secret_forms(secret), previous_secrets_expire_at=until
    )
    return _answer(rotated, headers={"Cache-Control": "no-store"})


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_DELIVERIES_PAGE:
        raise ApiError(400, ErrorCode.VALIDATION_ERROR, f"limit must be an integer from 1 to {MAX_DELIVERIES_PAGE}")
    return int(raw)


def _status_filter(request: web.Request) -> DeliveryStatus | None:
    raw = request.query.get("status")
    if raw is None:
        return None
    try:
        return DeliveryStatus(raw)
    except ValueError:
        allowed = ", ".join(s.value for s in DeliveryStatus)
        raise ApiError(400, ErrorCode.VALIDATION_ERROR, f"status must be one of {allowed}") from None


async def list_deliveries(request: web.Request, call: Call) -> web.Response:
    """The endpoint's deliveries, newest first, with attempts, status codes, latencies and next retry."""
    principal = call.principal
    deliveries = await _in_db(
        request,
        _deliveries,
        request.match_info["endpoint_id"],
        workspace=principal.workspace,
        limit=_limit(request),
        status=_status_filter(request),
    )
    return _answer(WebhookDeliveryList(deliveries=deliveries))


async def get_delivery(request: web.Request, call: Call) -> web.Response:
    """One delivery with its attempts."""
    principal = call.principal
    view = await _in_db(request, _delivery, request.match_info["delivery_id"], workspace=principal.workspace)
    return _answer(view)


async def redeliver(request: web.Request, call: Call) -> web.Response:
    """Send a delivery again (same event id) through a fresh workflow; attempts keep counting."""
    principal = call.principal
    delivery_id = request.match_info["delivery_id"]
    client, settings = request.app[TEMPORAL], request.app[SETTINGS]
    outbox = settings.webhook_dispatch == "outbox"
    view, previous, workflow_id, first = await _in_db(
        request, _redeliver, delivery_id, workspace=principal.workspace, outbox=outbox
    )
    if not outbox:
        await start_redelivery(client, settings, delivery_id, workflow_id, first)
    if previous is not None and previous != workflow_id and not is_outbox_owner(previous):
        await _cancel_quietly(client, previous)
    return _answer(view, status=202)


async def recover(request: web.Request, call: Call) -> web.Response:
    """Re-send every delivery of the endpoint's window that did not arrive; answer how many."""
    principal = call.principal
    parsed = cast(RecoverRequest, call.parsed)  # the endpoint's body model parsed it
    endpoint_id = request.match_info["endpoint_id"]
    until = parsed.until or utcnow()
    if until <= parsed.since:
        raise _invalid("since must be in the past when until is absent", field="since", reason="in_future")
    settings = request.app[SETTINGS]
    outbox = settings.webhook_dispatch == "outbox"
    starts, more = await _in_db(
        request, _recover, endpoint_id, workspace=principal.workspace, since=parsed.since, until=until, outbox=outbox
    )
    # The previous workflows of settled deliveries have ended: nothing to cancel (one that had not would see the
    # row handed on and stop without sending). Through the outbox there is nothing to start either.
    if not outbox:
        await start_redeliveries(request.app[TEMPORAL], settings, starts)
    log.info("webhook endpoint %s: %d deliveries recovered", endpoint_id, len(starts))
    answer = WebhookRecovery(endpoint_id=endpoint_id, since=parsed.since, until=until, recovered=len(starts), more=more)
    return _answer(answer, status=202)
