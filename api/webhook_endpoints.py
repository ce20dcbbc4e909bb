"""The webhook endpoints of the API (``/v1/webhooks/...``), each declared once; :mod:`api.endpoints` lists them."""

from __future__ import annotations

from typing import TypedDict

from pydantic import BaseModel
from typing_extensions import Unpack

from api import webhook_routes
from api.registry import BODY_ERRORS, Body, Endpoint, Handler, Method, Param
from api.webhook_routes import MAX_DELIVERIES_PAGE
from quantapilot.bodies import EmptyRequest
from quantapilot.webhooks import views

WEBHOOKS = "webhooks:manage"
ENDPOINT_ID = Param("endpoint_id", "path", {"type": "string", "maxLength": 64}, "Webhook endpoint id.", required=True)
DELIVERY_ID = Param("delivery_id", "path", {"type": "string", "maxLength": 64}, "Delivery id.", required=True)


class _Declared(TypedDict, total=False):
    """The :class:`~api.registry.Endpoint` fields a webhook endpoint declares besides the common ones."""

    body: Body
    params: tuple[Param, ...]
    errors: tuple[int, ...]
    description: str
    media: str


def _webhook(
    method: Method,
    path: str,
    handler: Handler,
    operation_id: str,
    summary: str,
    success: int,
    response: type[BaseModel] | None,
    **declared: Unpack[_Declared],
) -> Endpoint:
    """A webhook endpoint: scope ``webhooks:manage``, tag ``webhooks``; ``declared`` are its other fields."""
    return Endpoint(method, path, handler, WEBHOOKS, operation_id, summary, "webhooks", success, response, **declared)


WEBHOOK_ENDPOINTS: tuple[Endpoint, ...] = (
    _webhook(
        "POST",
        "/v1/webhooks/endpoints",
        webhook_routes.create_endpoint,
        "createWebhookEndpoint",
        "Subscribe a receiver URL; the answer carries its signing secret, shown once",
        201,
        views.WebhookEndpointCreated,
        body=Body(views.CreateEndpointRequest),
        errors=(*BODY_ERRORS, 409),
        description=(
            "Loopback, private, link-local and metadata addresses are refused (422) unless allowed. A workspace "
            "holds at most QP_WEBHOOK_MAX_ENDPOINTS endpoints (default 50); one more answers 409 "
            "WEBHOOK_ENDPOINT_LIMIT."
        ),
    ),
    _webhook(
        "GET",
        "/v1/webhooks/endpoints",
        webhook_routes.list_endpoints,
        "listWebhookEndpoints",
        "The workspace's webhook endpoints",
        200,
        views.WebhookEndpointList,
    ),
    _webhook(
        "GET",
        "/v1/webhooks/endpoints/{endpoint_id}",
        webhook_routes.get_endpoint,
        "getWebhookEndpoint",
        "One webhook endpoint (never its secret)",
        200,
        views.WebhookEndpointView,
        params=(ENDPOINT_ID,),
        errors=(404,),
    ),
    _webhook(
        "PATCH",
        "/v1/webhooks/endpoints/{endpoint_id}",
        webhook_routes.update_endpoint,
        "updateWebhookEndpoint",
        "Change an endpoint's URL, filters or description, or enable/disable it",
        200,
        views.WebhookEndpointView,
        body=Body(views.UpdateEndpointRequest),
        params=(ENDPOINT_ID,),
        errors=(*BODY_ERRORS, 404),
    ),
    _webhook(
        "DELETE",
        "/v1/webhooks/endpoints/{endpoint_id}",
        webhook_routes.delete_endpoint,
        "deleteWebhookEndpoint",
        "Delete an endpoint with its secrets and delivery log",
        204,
        None,
        params=(ENDPOINT_ID,),
        errors=(404,),
        media="",
    ),
    _webhook(
        "POST",
        "/v1/webhooks/endpoints/{endpoint_id}/rotate-secret",
        webhook_routes.rotate_secret,
        "rotateWebhookSecret",
        "Issue a new signing secret; the previous ones keep signing for the overlap",
        200,
        views.WebhookSecretRotated,
        body=Body(views.RotateSecretRequest, required=False),
        params=(ENDPOINT_ID,),
        errors=(*BODY_ERRORS, 404),
    ),
    _webhook(
        "GET",
        "/v1/webhooks/endpoints/{endpoint_id}/deliveries",
        webhook_routes.list_deliveries,
        "listWebhookDeliveries",
        "An endpoint's deliveries, newest first, with their attempts",
        200,
        views.WebhookDeliveryList,
        params=(
            ENDPOINT_ID,
            Param(
                "limit",
                "query",
                {"type": "integer", "minimum": 1, "maximum": MAX_DELIVERIES_PAGE, "default": 50},
                "Page size.",
            ),
            Param(
                "status",
                "query",
                {"enum": ["pending", "delivered", "failed", "gone", "disabled"]},
                "Only deliveries in this status.",
            ),
        ),
        errors=(400, 404),
    ),
    _webhook(
        "POST",
        "/v1/webhooks/endpoints/{endpoint_id}/recover",
        webhook_routes.recover,
        "recoverWebhookEndpoint",
        "Re-send every delivery of a time window that did not arrive (failed, gone or disabled)",
        202,
        views.WebhookRecovery,
        body=Body(views.RecoverRequest),
        params=(ENDPOINT_ID,),
        errors=(*BODY_ERRORS, 404, 409),
        description=(
            "Each delivery whose event was created in [since, until) and that is failed, gone or disabled is sent "
            "again through a fresh workflow (same event id, attempts keep counting), at most 1000 per call (more: "
            "true when the window holds others). 409 while the endpoint is disabled; 422 when until is not after "
            "since."
        ),
    ),
    _webhook(
        "GET",
        "/v1/webhooks/deliveries/{delivery_id}",
        webhook_routes.get_delivery,
        "getWebhookDelivery",
        "One delivery with its attempts",
        200,
        views.DeliveryView,
        params=(DELIVERY_ID,),
        errors=(404,),
    ),
    _webhook(
        "POST",
        "/v1/webhooks/deliveries/{delivery_id}/redeliver",
        webhook_routes.redeliver,
        "redeliverWebhook",
        "Send a delivery again (same event id) through a fresh workflow",
        202,
        views.DeliveryView,
        body=Body(EmptyRequest, required=False),
        params=(DELIVERY_ID,),
        errors=(*BODY_ERRORS, 404, 409),
    ),
)
