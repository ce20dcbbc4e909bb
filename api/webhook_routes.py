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
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.service import RPCError

from activities.webhook_models import WEBHOOK_DELIVERY_WORKFLOW, redelivery_workflow_id
from activities.webhooks import delivery_input
from api.keys import ENGINE, KEYRING, SETTINGS, TEMPORAL
from api.registry import Call
from quantapilot.db import session_scope
from quantapilot.errors import ApiError, ErrorCode, conflict, not_found
from quantapilot.secretbox import KeyRing
from quantapilot.settings import Settings
from quantapilot.webhooks import store
from quantapilot.webhooks.store import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookNotFoundError,
)
from quantapilot.webhooks.urlsafety import UnsafeUrlError, check_url, check_url_syntax

log = logging.getLogger("quantapilot.api.webhooks")

MAX_DELIVERIES_PAGE = 200


# ----- views ---------------------------------------------------------------------------------------------------


def _ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.isoformat().replace("+00:00", "Z")


def endpoint_view(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """The public form of an endpoint (never its secrets)."""
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "description": endpoint.description,
        "events": list(endpoint.event_types),
        "run_kinds": list(endpoint.run_kinds),
        "repositories": list(endpoint.repositories),
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "failing_since": _ts(endpoint.failing_since),
        "created_at": _ts(endpoint.created_at),
        "updated_at": _ts(endpoint.updated_at),
    }


def _attempt_view(row: WebhookAttempt) -> dict[str, Any]:
    return {
        "attempt": row.attempt,
        "outcome": row.outcome,
        "status_code": row.status_code,
        "latency_ms": row.latency_ms,
        "error": row.error,
        "at": _ts(row.at),
    }


def delivery_view(delivery: WebhookDelivery, attempts: Sequence[WebhookAttempt] = ()) -> dict[str, Any]:
    """The public form of a delivery with its attempts (status codes, latencies, errors) and next retry.

    ``data`` is the payload of an event kept with its deliveries because no run's log has it
    (``webhook.endpoint_disabled``); run events show null there and are read from their run's log by id.
    """
    data = delivery.payload.get("data") if delivery.payload is not None else None
    return {
        "id": delivery.id,
        "endpoint_id": delivery.endpoint_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "run_id": delivery.run_id,
        "status": delivery.status,
        "attempt_count": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_latency_ms": delivery.last_latency_ms,
        "last_error": delivery.last_error,
        "next_retry_at": _ts(delivery.next_retry_at),
        "created_at": _ts(delivery.created_at),
        "delivered_at": _ts(delivery.delivered_at),
        "data": data if isinstance(data, dict) else None,
        "attempts": [_attempt_view(a) for a in attempts],
    }


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
    except UnsafeUrlError as exc:
        raise _invalid(str(exc), field="url", reason=exc.reason) from None
    except ValueError as exc:
        # The store's filter checks (unknown event type, too many items): the message names no secret.
        raise ApiError(422, ErrorCode.VALIDATION_ERROR, str(exc)[:300]) from None


# ----- database steps (blocking; run in a thread) ---------------------------------------------------------------


def _create(
    engine: Engine, *, workspace: str, body: dict[str, Any], allow_private: bool, keyring: KeyRing
) -> tuple[dict[str, Any], str]:
    with session_scope(engine) as session:
        endpoint, secret = store.create_endpoint(
            session=session,
            workspace=workspace,
            url=body["url"],
            description=body.get("description", ""),
            allow_private=allow_private,
            keyring=keyring,
            **_filters(body),
        )
        return endpoint_view(endpoint), secret


def _list(engine: Engine, *, workspace: str) -> list[dict[str, Any]]:
    with Session(engine) as session:
        return [endpoint_view(e) for e in store.list_endpoints(session=session, workspace=workspace)]


def _get(engine: Engine, endpoint_id: str, *, workspace: str) -> dict[str, Any]:
    with Session(engine) as session:
        return endpoint_view(store.get_endpoint(endpoint_id, session=session, workspace=workspace))


def _update(
    engine: Engine, endpoint_id: str, *, workspace: str, body: dict[str, Any], allow_private: bool
) -> dict[str, Any]:
    with session_scope(engine) as session:
        endpoint = store.update_endpoint(
            endpoint_id,
            session=session,
            workspace=workspace,
            url=body.get("url"),
            description=body.get("description"),
            enabled=body.get("enabled"),
            allow_private=allow_private,
            **_filters(body),
        )
        return endpoint_view(endpoint)


def _delete(engine: Engine, endpoint_id: str, *, workspace: str) -> None:
    with session_scope(engine) as session:
        store.delete_endpoint(endpoint_id, session=session, workspace=workspace)


def _rotate(
    engine: Engine, endpoint_id: str, *, workspace: str, overlap: timedelta, keyring: KeyRing
) -> tuple[str, datetime]:
    with session_scope(engine) as session:
        secret = store.rotate_secret(
            endpoint_id, session=session, workspace=workspace, overlap=overlap, keyring=keyring
        )
        endpoint = store.get_endpoint(endpoint_id, session=session, workspace=workspace)
        return secret, endpoint.updated_at + overlap


def _attempts_of(session: Session, ids: Sequence[str]) -> dict[str, list[WebhookAttempt]]:
    grouped: dict[str, list[WebhookAttempt]] = {i: [] for i in ids}
    if not ids:
        return grouped
    rows = session.exec(
        select(WebhookAttempt)
        .where(col(WebhookAttempt.delivery_id).in_(list(ids)))
        .order_by(col(WebhookAttempt.delivery_id), col(WebhookAttempt.attempt))
    )
    for row in rows:
        grouped[row.delivery_id].append(row)
    return grouped


def _deliveries(
    engine: Engine, endpoint_id: str, *, workspace: str, limit: int, status: DeliveryStatus | None
) -> list[dict[str, Any]]:
    with Session(engine) as session:
        rows = store.list_deliveries(endpoint_id, session=session, workspace=workspace, limit=limit, status=status)
        attempts = _attempts_of(session, [r.id for r in rows])
        return [delivery_view(r, attempts[r.id]) for r in rows]


def _delivery(engine: Engine, delivery_id: str, *, workspace: str) -> dict[str, Any]:
    with Session(engine) as session:
        row = store.get_delivery(delivery_id, session=session, workspace=workspace)
        return delivery_view(row, _attempts_of(session, [row.id])[row.id])


def _redeliver(engine: Engine, delivery_id: str, *, workspace: str) -> tuple[dict[str, Any], str | None, str, int]:
    with session_scope(engine) as session:
        delivery = store.get_delivery(delivery_id, session=session, workspace=workspace)
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
        if endpoint is None or not endpoint.enabled:
            raise conflict("the endpoint is disabled; enable it before redelivering")
        previous = delivery.workflow_id
        store.redeliver(delivery_id, session=session, workspace=workspace)
        # The row changes hands in this transaction: a previous workflow that wakes up later stops quietly.
        delivery.workflow_id = redelivery_workflow_id(delivery.id, uuid.uuid4().hex[:12])
        session.add(delivery)
        session.flush()
        return delivery_view(delivery), previous, delivery.workflow_id, delivery.attempts + 1


async def _start_redelivery(client: Client, settings: Settings, delivery_id: str, workflow_id: str, first: int) -> None:
    await client.start_workflow(
        WEBHOOK_DELIVERY_WORKFLOW,
        delivery_input(settings, delivery_id, first_attempt=first),
        id=workflow_id,
        task_queue=settings.task_queue,
        # The id is fresh; rejecting duplicates keeps a closed redelivery from ever running twice.
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
    )


async def _cancel_quietly(client: Client, workflow_id: str) -> None:
    """Cancel a superseded delivery workflow; it stops on its own anyway, this only ends its wait early."""
    # Already closed or never started: nothing to end.
    with contextlib.suppress(RPCError):
        await client.get_workflow_handle(workflow_id).cancel()


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
    )
    log.info("webhook endpoint %s created in workspace %s", view["id"], principal.workspace)
    return web.json_response({**view, "secret": secret}, status=201, headers={"Cache-Control": "no-store"})


async def list_endpoints(request: web.Request, call: Call) -> web.Response:
    """The workspace's endpoints, oldest first."""
    principal = call.principal
    endpoints = await _in_db(request, _list, workspace=principal.workspace)
    return web.json_response({"endpoints": endpoints})


async def get_endpoint(request: web.Request, call: Call) -> web.Response:
    """One endpoint (without its secret)."""
    principal = call.principal
    view = await _in_db(request, _get, request.match_info["endpoint_id"], workspace=principal.workspace)
    return web.json_response(view)


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
    return web.json_response(view)


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
    return web.json_response(
        {"endpoint_id": request.match_info["endpoint_id"], "secret": secret, "previous_secrets_expire_at": _ts(until)},
        headers={"Cache-Control": "no-store"},
    )


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
    return web.json_response({"deliveries": deliveries})


async def get_delivery(request: web.Request, call: Call) -> web.Response:
    """One delivery with its attempts."""
    principal = call.principal
    view = await _in_db(request, _delivery, request.match_info["delivery_id"], workspace=principal.workspace)
    return web.json_response(view)


async def redeliver(request: web.Request, call: Call) -> web.Response:
    """Send a delivery again (same event id) through a fresh workflow; attempts keep counting."""
    principal = call.principal
    delivery_id = request.match_info["delivery_id"]
    view, previous, workflow_id, first = await _in_db(request, _redeliver, delivery_id, workspace=principal.workspace)
    client, settings = request.app[TEMPORAL], request.app[SETTINGS]
    await _start_redelivery(client, settings, delivery_id, workflow_id, first)
    if previous is not None and previous != workflow_id:
        await _cancel_quietly(client, previous)
    return web.json_response(view, status=202)
