"""The published OpenAPI 3.1 contract of the API, built from the JSON Schemas in ``schemas/``.

Request and response bodies are the schema files' own definitions, copied under ``components/schemas`` with their
internal references rewritten (one source of truth; a test compares them). Each endpoint is one
:class:`Operation` below: a route added to the application without an entry here fails the contract test, as does
an entry without a route.

Every request and response body is defined in a schema file under ``schemas/``; the schemathesis run in
``tests/security`` checks the live responses against them.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal

import schemas
from api.ratelimit import RouteClass, rates_from, route_class
from api.routes import run_alias_notice
from quantapilot.settings import Settings
from quantapilot.tokens import ALL_SCOPES

OPENAPI_VERSION = "3.1.0"
COMPONENT_PREFIX = "#/components/schemas/"

#: Schema files published as components: file -> name of its root schema (None: only its ``$defs``, by name).
#: A root's ``$defs`` become ``<root>.<def>``.
SCHEMA_FILES: dict[str, str | None] = {
    "api.schema.json": None,
    "error.schema.json": None,
    "lifecycle_run.schema.json": "LifecycleRunRequest",
    "telemetry.schema.json": "TelemetryRequest",
    "webhooks.schema.json": "Webhooks",
}

_NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"]}


@dataclass(frozen=True, slots=True)
class Param:
    """A path, query or header parameter."""

    name: str
    where: Literal["path", "query", "header"]
    schema: Mapping[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class Operation:
    """One documented endpoint.

    Attributes:
        method: HTTP method (upper case).
        path: Path template as aiohttp's canonical route path (``/v1/runs/{run_id}``).
        operation_id: Unique operation id.
        summary: One line.
        tag: Group on the API page.
        scope: Token scope required; None for a public endpoint.
        success: Success status.
        response: Component name of the success body (None: see ``media``).
        request: Component name of the request body, or None for no body.
        request_required: Whether the body may be omitted.
        params: Path, query and header parameters.
        idempotency_key: Whether ``Idempotency-Key`` is honoured.
        errors: Error statuses the endpoint can answer besides the common ones.
        description: Longer text.
        deprecated: Whether the route is a deprecated alias.
        media: Media type of the success body ("" for none, e.g. 204).
        extra_success: Other success statuses with their component names (e.g. readiness 503).
    """

    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    scope: str | None
    success: int
    response: str | None
    request: str | None = None
    request_required: bool = True
    params: tuple[Param, ...] = ()
    idempotency_key: bool = False
    errors: tuple[int, ...] = ()
    description: str = ""
    deprecated: bool = False
    media: str = "application/json"
    extra_success: Mapping[int, str] = field(default_factory=dict)


RUN_ID = Param(
    "run_id",
    "path",
    {"type": "string", "maxLength": 64},
    "Run id (``rr_`` repository or ``lc_`` lifecycle, then 32 hex digits); anything else is 404.",
    required=True,
)
GATE = Param("gate", "path", {"type": "string", "minLength": 1, "maxLength": 100}, "Gate name.", required=True)
AFTER = Param(
    "after",
    "query",
    {"type": "integer", "minimum": 0, "maximum": 2**63 - 1, "default": 0},
    "Return events with a sequence number greater than this (default 0); pages hold at most 500.",
)
BODY_ERRORS = (400, 408, 413, 415, 422)

RUN_TRIGGER_DESCRIPTION = (
    "Starts a durable repository run: clone, read quantapilot.yml, generate and lint docs, then the gated "
    "milestones. With an Idempotency-Key, the same key and body always answer with the same run."
)


def operations(settings: Settings) -> list[Operation]:
    """Every documented endpoint of an application built with ``settings``."""
    trigger = Operation(
        "POST",
        "/v1/runs",
        "triggerRun",
        "Trigger a repository run",
        "runs",
        "runs:trigger",
        202,
        "RunAccepted",
        request="RunRequest",
        idempotency_key=True,
        errors=BODY_ERRORS,
        description=RUN_TRIGGER_DESCRIPTION,
    )
    ops = [trigger]
    if settings.run_path != "/v1/runs":
        ops.append(
            Operation(
                "POST",
                settings.run_path,
                "triggerRunSeedAlias",
                "Trigger a repository run (deprecated alias of POST /v1/runs)",
                "runs",
                "runs:trigger",
                202,
                "RunAcceptedDeprecated",
                request="RunRequest",
                idempotency_key=True,
                errors=BODY_ERRORS,
                description=(
                    f"The seed's path, kept as an alias of POST /v1/runs. {run_alias_notice()} Responses carry "
                    "Deprecation, Sunset and Link headers and a deprecationNotice field."
                ),
                deprecated=True,
            )
        )
    ops += [
        Operation(
            "GET",
            "/v1/runs/{run_id}",
            "getRun",
            "A run's state, current step, gates, milestones and timestamps",
            "runs",
            "runs:read",
            200,
            "RunStatus",
            params=(RUN_ID,),
            errors=(404,),
        ),
        Operation(
            "GET",
            "/v1/runs/{run_id}/events",
            "listRunEvents",
            "A run's ordered event log",
            "runs",
            "runs:read",
            200,
            "EventList",
            params=(RUN_ID, AFTER),
            errors=(400, 404),
        ),
        Operation(
            "POST",
            "/v1/runs/{run_id}/gates/{gate}/decision",
            "decideGate",
            "Approve or reject a pending gate",
            "runs",
            "gates:decide",
            200,
            "GateRecord",
            request="GateDecisionRequest",
            params=(RUN_ID, GATE),
            errors=(*BODY_ERRORS, 404, 409),
            description=(
                "The decision is recorded with who decided (the token's subject), when, from where and why. A gate "
                "may name its approvers; the token that triggered the run may not approve its own gates unless the "
                "gate allows self-approval (403). The same decision twice is idempotent; a gate that is not pending "
                "is 409."
            ),
        ),
        Operation(
            "POST",
            "/v1/runs/{run_id}/pause",
            "pauseRun",
            "Pause a run (no new step starts)",
            "runs",
            "runs:control",
            200,
            "RunStatus",
            request="PauseRequest",
            request_required=False,
            params=(RUN_ID,),
            errors=(*BODY_ERRORS, 404, 409),
        ),
        Operation(
            "POST",
            "/v1/runs/{run_id}/resume",
            "resumeRun",
            "Resume a paused run",
            "runs",
            "runs:control",
            200,
            "RunStatus",
            request="EmptyRequest",
            request_required=False,
            params=(RUN_ID,),
            errors=(*BODY_ERRORS, 404, 409),
        ),
        Operation(
            "POST",
            "/v1/runs/{run_id}/budget",
            "raiseRunBudget",
            "Raise a run's time budget or step attempts",
            "runs",
            "runs:control",
            200,
            "RunStatus",
            request="BudgetRequest",
            params=(RUN_ID,),
            errors=(*BODY_ERRORS, 404, 409),
        ),
        Operation(
            "POST",
            "/v1/runs/{run_id}/cancel",
            "cancelRun",
            "Request a run's cancellation",
            "runs",
            "runs:control",
            202,
            "CancelAccepted",
            request="EmptyRequest",
            request_required=False,
            params=(RUN_ID,),
            errors=(*BODY_ERRORS, 404, 409),
        ),
        Operation(
            "POST",
            "/v1/lifecycle/runs",
            "triggerLifecycleRun",
            "Run one value-lifecycle stage for one account",
            "lifecycle",
            "lifecycle:trigger",
            202,
            "LifecycleRunAccepted",
            request="LifecycleRunRequest",
            idempotency_key=True,
            errors=BODY_ERRORS,
            description="Status, events, gates and controls of the run are the /v1/runs/{run_id} endpoints.",
        ),
        Operation(
            "POST",
            "/v1/telemetry/events",
            "ingestTelemetry",
            "Store one telemetry event or a batch of up to 1000",
            "lifecycle",
            "telemetry:write",
            202,
            "TelemetryAccepted",
            request="TelemetryRequest",
            idempotency_key=True,
            errors=(*BODY_ERRORS, 503),
            description=(
                "Each touched account's realization is refreshed (bursts coalesce per account). A retry stores "
                "nothing twice: events with an id already stored, and a batch whose Idempotency-Key was stored with "
                "the same body, count as duplicates; the same key with another body is 422 IDEMPOTENCY_KEY_REUSED."
            ),
        ),
        Operation(
            "GET",
            "/v1/accounts/{account_id}/events",
            "listAccountEvents",
            "An account's realization event stream",
            "lifecycle",
            "runs:read",
            200,
            "AccountEventList",
            params=(
                Param("account_id", "path", {"type": "string", "maxLength": 64}, "Account UUID.", required=True),
                AFTER,
            ),
            errors=(400, 404),
        ),
        Operation(
            "GET",
            "/v1/docs/pages",
            "listDocsPages",
            "Docs pages of the caller's workspace with their versions",
            "docs",
            "docs:read",
            200,
            "DocsPageList",
            params=(
                Param("project", "query", {"type": "string", "minLength": 1, "maxLength": 200}, "Only this project."),
            ),
            errors=(422,),
        ),
        Operation(
            "GET",
            "/v1/docs/pages/{slug}",
            "getDocsPage",
            "One docs page: metadata, Markdown and HTML, related links",
            "docs",
            "docs:read",
            200,
            "DocsPage",
            params=(
                Param(
                    "slug",
                    "path",
                    {"type": "string", "minLength": 1, "maxLength": 300},
                    "Page slug, a path such as accounts/<accountId>/realization; '..' and empty segments are 422.",
                    required=True,
                ),
                Param(
                    "version",
                    "query",
                    {"type": "string", "minLength": 1, "maxLength": 64},
                    "A version label; default: the latest.",
                ),
            ),
            errors=(404, 422),
        ),
        *webhook_operations(),
        Operation("GET", "/healthz", "healthz", "Liveness", "service", None, 200, "Health"),
        Operation(
            "GET",
            "/readyz",
            "readyz",
            "Readiness: Temporal and the database answer",
            "service",
            None,
            200,
            "Readiness",
            extra_success={503: "Readiness"},
        ),
        Operation(
            "GET",
            "/metrics",
            "metrics",
            "Prometheus metrics of this API process",
            "service",
            None,
            200,
            None,
            errors=(401, 404),
            media="text/plain",
            description=(
                "Requests by route and status, latencies. Open in development; with QP_METRICS_TOKEN it needs "
                "`Authorization: Bearer <metrics token>` (401 otherwise); with QP_METRICS_PORT it is served on that "
                "port instead (404 here), and in production without either it is not served (404)."
            ),
        ),
        Operation("GET", "/v1/openapi.json", "openapi", "This document", "service", None, 200, "OpenApiDocument"),
        Operation(
            "GET",
            "/v1/docs/api",
            "apiPage",
            "This document as a web page",
            "service",
            None,
            200,
            None,
            media="text/html",
        ),
    ]
    return ops


ENDPOINT_ID = Param("endpoint_id", "path", {"type": "string", "maxLength": 64}, "Webhook endpoint id.", required=True)
DELIVERY_ID = Param("delivery_id", "path", {"type": "string", "maxLength": 64}, "Delivery id.", required=True)
WEBHOOKS = "webhooks:manage"


def webhook_operations() -> list[Operation]:
    """The webhook subscription endpoints (``api/webhook_routes.py``)."""
    return [
        Operation(
            "POST",
            "/v1/webhooks/endpoints",
            "createWebhookEndpoint",
            "Subscribe a receiver URL; the answer carries its signing secret, shown once",
            "webhooks",
            WEBHOOKS,
            201,
            "WebhookEndpointCreated",
            request="Webhooks.CreateEndpointRequest",
            errors=BODY_ERRORS,
            description="Loopback, private, link-local and metadata addresses are refused (422) unless allowed.",
        ),
        Operation(
            "GET",
            "/v1/webhooks/endpoints",
            "listWebhookEndpoints",
            "The workspace's webhook endpoints",
            "webhooks",
            WEBHOOKS,
            200,
            "WebhookEndpointList",
        ),
        Operation(
            "GET",
            "/v1/webhooks/endpoints/{endpoint_id}",
            "getWebhookEndpoint",
            "One webhook endpoint (never its secret)",
            "webhooks",
            WEBHOOKS,
            200,
            "WebhookEndpoint",
            params=(ENDPOINT_ID,),
            errors=(404,),
        ),
        Operation(
            "PATCH",
            "/v1/webhooks/endpoints/{endpoint_id}",
            "updateWebhookEndpoint",
            "Change an endpoint's URL, filters or description, or enable/disable it",
            "webhooks",
            WEBHOOKS,
            200,
            "WebhookEndpoint",
            request="Webhooks.UpdateEndpointRequest",
            params=(ENDPOINT_ID,),
            errors=(*BODY_ERRORS, 404),
        ),
        Operation(
            "DELETE",
            "/v1/webhooks/endpoints/{endpoint_id}",
            "deleteWebhookEndpoint",
            "Delete an endpoint with its secrets and delivery log",
            "webhooks",
            WEBHOOKS,
            204,
            None,
            params=(ENDPOINT_ID,),
            errors=(404,),
            media="",
        ),
        Operation(
            "POST",
            "/v1/webhooks/endpoints/{endpoint_id}/rotate-secret",
            "rotateWebhookSecret",
            "Issue a new signing secret; the previous ones keep signing for the overlap",
            "webhooks",
            WEBHOOKS,
            200,
            "WebhookSecretRotated",
            request="Webhooks.RotateSecretRequest",
            request_required=False,
            params=(ENDPOINT_ID,),
            errors=(*BODY_ERRORS, 404),
        ),
        Operation(
            "GET",
            "/v1/webhooks/endpoints/{endpoint_id}/deliveries",
            "listWebhookDeliveries",
            "An endpoint's deliveries, newest first, with their attempts",
            "webhooks",
            WEBHOOKS,
            200,
            "WebhookDeliveryList",
            params=(
                ENDPOINT_ID,
                Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}, "Page size."),
                Param(
                    "status",
                    "query",
                    {"enum": ["pending", "delivered", "failed", "gone", "disabled"]},
                    "Only deliveries in this status.",
                ),
            ),
            errors=(400, 404),
        ),
        Operation(
            "GET",
            "/v1/webhooks/deliveries/{delivery_id}",
            "getWebhookDelivery",
            "One delivery with its attempts",
            "webhooks",
            WEBHOOKS,
            200,
            "WebhookDelivery",
            params=(DELIVERY_ID,),
            errors=(404,),
        ),
        Operation(
            "POST",
            "/v1/webhooks/deliveries/{delivery_id}/redeliver",
            "redeliverWebhook",
            "Send a delivery again (same event id) through a fresh workflow",
            "webhooks",
            WEBHOOKS,
            202,
            "WebhookDelivery",
            request="Webhooks.EmptyRequest",
            request_required=False,
            params=(DELIVERY_ID,),
            errors=(*BODY_ERRORS, 404, 409),
        ),
    ]


# ----- components ----------------------------------------------------------------------------------------


def _rewrite_refs(node: Any, names: Mapping[str, str]) -> Any:
    """Copy ``node`` with every ``#/$defs/X`` reference pointing at the component ``names[X]``."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                out[key] = COMPONENT_PREFIX + names[value.removeprefix("#/$defs/")]
            else:
                out[key] = _rewrite_refs(value, names)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(item, names) for item in node]
    return node


def file_components(name: str, root: str | None) -> dict[str, dict[str, Any]]:
    """The components one schema file contributes.

    Args:
        name: Schema file name in ``schemas/``.
        root: Component name of the file's root schema, or None to publish only its ``$defs`` by their names.

    Returns:
        Component name -> schema, references rewritten to components.
    """
    document = schemas.load(name)
    defs: dict[str, Any] = document.get("$defs", {})
    names = {d: (f"{root}.{d}" if root else d) for d in defs}
    out = {names[d]: _rewrite_refs(schema, names) for d, schema in defs.items()}
    if root is not None:
        # $id would rebase every reference inside; $schema is implied by the document's dialect.
        body = {k: v for k, v in document.items() if k not in ("$defs", "$id", "$schema")}
        out[root] = _rewrite_refs(body, names)
    return out


def component_schemas() -> dict[str, dict[str, Any]]:
    """Every component schema: the schema files' definitions.

    Raises:
        ValueError: Two sources define the same name.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, root in SCHEMA_FILES.items():
        for key, schema in file_components(name, root).items():
            if key in out:
                raise ValueError(f"component {key} defined twice")
            out[key] = schema
    out["RunAcceptedDeprecated"] = {
        "allOf": [
            {"$ref": COMPONENT_PREFIX + "RunAccepted"},
            {"properties": {"deprecationNotice": {"type": "string"}}, "required": ["deprecationNotice"]},
        ]
    }
    return out


def _header(description: str, schema: Mapping[str, Any], *, required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": dict(schema)}


_INT_HEADER = {"type": "string", "pattern": "^[0-9]+$"}

HEADERS: dict[str, dict[str, Any]] = {
    "X-Trace-Id": _header(
        "Trace id of the request (the traceparent's trace id when valid, else fresh); in the error envelope too.",
        {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        required=True,
    ),
    "RateLimit-Limit": _header("Capacity (burst) of the token's bucket for this route class.", _INT_HEADER),
    "RateLimit-Remaining": _header("Requests the bucket admits right now.", _INT_HEADER),
    "RateLimit-Reset": _header("Whole seconds until the bucket is full again.", _INT_HEADER),
    "Retry-After": _header("Whole seconds to wait before retrying.", _INT_HEADER),
    "WWW-Authenticate": _header("Bearer challenge.", {"type": "string"}, required=True),
    "Allow": _header("Methods the path accepts.", {"type": "string"}),
    "Location": _header("URL of the run's status.", {"type": "string"}, required=True),
    "Deprecation": _header(
        "RFC 9745: when the route was deprecated (@unix-seconds).", {"type": "string"}, required=True
    ),
    "Sunset": _header("RFC 8594: when the route goes away (HTTP-date).", {"type": "string"}, required=True),
    "Link": _header("The successor route (rel=successor-version).", {"type": "string"}, required=True),
}


def _ref_header(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


_RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")

ERROR_RESPONSES: dict[int, tuple[str, str, tuple[str, ...]]] = {
    400: ("BadRequest", "Malformed request: invalid JSON or UTF-8, nesting too deep, a bad query or header.", ()),
    401: ("Unauthorized", "No bearer token, or an unknown, expired or revoked one.", ("WWW-Authenticate",)),
    403: ("Forbidden", "The token lacks the scope named in details.scope (or an approver rule refuses).", ()),
    404: ("NotFound", "Unknown here: missing, or in another workspace (the two look the same).", ()),
    405: ("MethodNotAllowed", "The path does not accept this method.", ("Allow",)),
    408: ("RequestTimeout", "The body did not arrive in time; the connection is closed.", ()),
    409: ("Conflict", "The resource's state does not allow this.", ()),
    413: ("PayloadTooLarge", "The body is over the size limit.", ()),
    415: ("UnsupportedMediaType", "The body is not application/json.", ()),
    422: ("UnprocessableContent", "The body does not match its schema (details lists each problem).", ()),
    429: (
        "TooManyRequests",
        "Rate limit exceeded: of the token's route class, or (without a valid token) of the client address.",
        ("Retry-After", *_RATE_HEADERS),
    ),
    500: ("InternalError", "Unexpected failure; the traceId finds the log line.", ()),
    503: (
        "ServiceUnavailable",
        "A dependency (database, Temporal, a worker to answer a query or update) does not answer; retry later.",
        ("Retry-After",),
    ),
}
#: Error statuses every operation can answer, by what answers them (the middlewares every request passes).
EVERY_REQUEST_ERRORS: dict[str, tuple[int, ...]] = {
    "router: the path does not take this method": (405,),
    "body deadline and size: any request may carry a body": (408, 413),
    "error middleware: an unexpected failure": (500,),
    # Public endpoints and requests without a valid token are limited per client address.
    "rate limit of the client address": (429,),
}
#: Error statuses every authenticated operation can answer besides those.
AUTHENTICATED_ERRORS: dict[str, tuple[int, ...]] = {
    "authentication and scopes": (401, 403),
    "rate limit of the route class": (429,),
    # The token lookup reads the database, and every authenticated route but the contract's reads the database
    # or Temporal: unavailable (or no worker answering a query or update in time) is 503 with Retry-After.
    "a dependency that does not answer": (503,),
}
COMMON_ERRORS = tuple(sorted({status for group in EVERY_REQUEST_ERRORS.values() for status in group}))
AUTH_ERRORS = tuple(sorted({status for group in AUTHENTICATED_ERRORS.values() for status in group}))


def _error_response(status: int) -> dict[str, Any]:
    _, description, headers = ERROR_RESPONSES[status]
    return {
        "description": description,
        "headers": {"X-Trace-Id": _ref_header("X-Trace-Id"), **{h: _ref_header(h) for h in headers}},
        "content": {"application/json": {"schema": {"$ref": COMPONENT_PREFIX + "ErrorResponse"}}},
    }


# ----- the document --------------------------------------------------------------------------------------


def _parameter(param: Param) -> dict[str, Any]:
    return {
        "name": param.name,
        "in": param.where,
        "required": param.required or param.where == "path",
        "description": param.description,
        "schema": dict(param.schema),
    }


def _operation(op: Operation, settings: Settings) -> dict[str, Any]:
    cls = route_class(op.method, op.path, run_path=settings.run_path)
    params = [_parameter(p) for p in op.params]
    if op.idempotency_key:
        params.append({"$ref": "#/components/parameters/IdempotencyKey"})
    params.append({"$ref": "#/components/parameters/Traceparent"})
    success_headers: dict[str, Any] = {"X-Trace-Id": _ref_header("X-Trace-Id")}
    if op.scope is not None:
        success_headers |= {h: {**_ref_header(h)} for h in _RATE_HEADERS}
    if op.success == 202 and op.response in ("RunAccepted", "RunAcceptedDeprecated", "LifecycleRunAccepted"):
        success_headers["Location"] = _ref_header("Location")
    if op.deprecated:
        success_headers |= {h: _ref_header(h) for h in ("Deprecation", "Sunset", "Link")}
    success: dict[str, Any] = {"description": op.summary, "headers": success_headers}
    if op.response:
        success["content"] = {op.media: {"schema": {"$ref": COMPONENT_PREFIX + op.response}}}
    elif op.media:
        success["content"] = {op.media: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {str(op.success): success}
    for status, component in op.extra_success.items():
        responses[str(status)] = {
            "description": f"{op.summary} (not ready)",
            "headers": {"X-Trace-Id": _ref_header("X-Trace-Id")},
            "content": {"application/json": {"schema": {"$ref": COMPONENT_PREFIX + component}}},
        }
    statuses = set(op.errors) | set(COMMON_ERRORS) | (set(AUTH_ERRORS) if op.scope else set())
    for status in sorted(statuses - set(op.extra_success)):
        responses[str(status)] = {"$ref": f"#/components/responses/{ERROR_RESPONSES[status][0]}"}
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": params,
        "responses": responses,
        "security": [{"bearerAuth": [op.scope]}] if op.scope else [],
        "x-rate-limit-class": cls.value if op.scope else None,
        "x-required-scope": op.scope,
    }
    if op.description:
        out["description"] = op.description
    if op.deprecated:
        out["deprecated"] = True
    if op.request:
        out["requestBody"] = {
            "required": op.request_required,
            "content": {"application/json": {"schema": {"$ref": COMPONENT_PREFIX + op.request}}},
        }
    return out


def _version() -> str:
    try:
        return metadata.version("quantapilot")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def build_openapi(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of an application built with ``settings``."""
    paths: dict[str, dict[str, Any]] = {}
    for op in operations(settings):
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, settings)
    rates = rates_from(settings)
    rate_text = "; ".join(
        f"{cls.value}: {rates[cls].per_second * settings.api_processes:g}/s, burst "
        f"{rates[cls].burst * settings.api_processes}"
        for cls in RouteClass
    )
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "QuantaPilot API",
            "version": _version(),
            "description": (
                "Durable repository and value-lifecycle runs on Temporal. Every endpoint except the public ones "
                "needs `Authorization: Bearer <token>`; a token belongs to one workspace and carries scopes. "
                "Errors are the envelope of error.schema.json. Rate limits per token and route class, and per "
                "client address for requests without a valid token and for the public endpoints "
                f"({rate_text}) answer 429 with Retry-After; every authenticated response carries "
                "RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset."
            ),
        },
        "servers": [{"url": settings.public_base_url.rstrip("/") or "/"}],
        "tags": [
            {"name": "runs", "description": "Repository runs and the run controls shared by every run kind."},
            {"name": "lifecycle", "description": "Value-lifecycle runs, telemetry and account event streams."},
            {"name": "docs", "description": "Generated documentation and account reports."},
            {"name": "webhooks", "description": "Signed webhook subscriptions of the workspace and their deliveries."},
            {"name": "service", "description": "Health and this contract (public)."},
        ],
        "paths": paths,
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Scopes: " + ", ".join(ALL_SCOPES) + ".",
                }
            },
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": (
                        "1-255 printable ASCII characters, per workspace: the same key and body answer the same way "
                        "(the same run; a telemetry batch stored once), the same key with another body is 422."
                    ),
                    "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
                },
                "Traceparent": {
                    "name": "traceparent",
                    "in": "header",
                    "required": False,
                    "description": "W3C trace context: its trace id becomes the traceId; an invalid one is ignored.",
                    "schema": {"type": "string"},
                },
            },
            "headers": HEADERS,
            "responses": {name: _error_response(status) for status, (name, _, _) in ERROR_RESPONSES.items()},
        },
    }


def documented_routes(document: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation in an OpenAPI document."""
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


# ----- the API page --------------------------------------------------------------------------------------

_CSS = """
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:70rem;padding:1rem 2rem;color:#1b1f24}
h1,h2,h3{line-height:1.2}h2{border-bottom:1px solid #d0d7de;padding-bottom:.3rem;margin-top:2.5rem}
code,pre{font:13px/1.4 ui-monospace,monospace}pre{background:#f6f8fa;padding:.8rem;overflow:auto;border-radius:6px}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left;
vertical-align:top}.op{border:1px solid #d0d7de;border-radius:6px;padding:.2rem 1rem;margin:1rem 0}
.m{display:inline-block;min-width:4rem;font-weight:700;color:#fff;border-radius:4px;padding:0 .4rem;text-align:center}
.get{background:#0969da}.post{background:#1a7f37}.put,.patch{background:#9a6700}.delete{background:#cf222e}
.dep{color:#cf222e;font-weight:700}nav a{margin-right:1rem}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _schema_link(ref: str | None) -> str:
    if not ref:
        return ""
    name = ref.removeprefix(COMPONENT_PREFIX)
    return f'<a href="#schema-{_e(name)}"><code>{_e(name)}</code></a>'


def _response_rows(document: Mapping[str, Any], responses: Mapping[str, Any]) -> Iterable[str]:
    shared = document["components"]["responses"]
    for status, response in responses.items():
        if "$ref" in response:
            response = shared[response["$ref"].rsplit("/", 1)[-1]]
        media: dict[str, Any] = next(iter(response.get("content", {}).values()), {})
        schema_ref = media.get("schema", {}).get("$ref")
        headers = ", ".join(f"<code>{_e(h)}</code>" for h in response.get("headers", {}))
        yield (
            f"<tr><td>{_e(status)}</td><td>{_e(response['description'])}</td>"
            f"<td>{_schema_link(schema_ref)}</td><td>{headers}</td></tr>"
        )


def render_api_page(document: Mapping[str, Any]) -> str:
    """The OpenAPI document as one self-contained HTML page: no script, no external resource.

    Every value from the document is HTML-escaped.
    """
    parts: list[str] = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(document['info']['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(document['info']['title'])} <small>{_e(document['info']['version'])}</small></h1>",
        f"<p>{_e(document['info']['description'])}</p>",
        '<p>Machine-readable: <a href="/v1/openapi.json"><code>/v1/openapi.json</code></a> (OpenAPI '
        f"{_e(document['openapi'])}).</p>",
        "<nav>"
        + "".join(f'<a href="#tag-{_e(t["name"])}">{_e(t["name"])}</a>' for t in document["tags"])
        + '<a href="#errors">error codes</a><a href="#schemas">schemas</a></nav>',
    ]
    by_tag: dict[str, list[tuple[str, str, Mapping[str, Any]]]] = {}
    for path, item in document["paths"].items():
        for method, op in item.items():
            by_tag.setdefault(op["tags"][0], []).append((path, method, op))
    for tag in document["tags"]:
        parts.append(f'<h2 id="tag-{_e(tag["name"])}">{_e(tag["name"])}</h2><p>{_e(tag["description"])}</p>')
        for path, method, op in by_tag.get(tag["name"], []):
            parts.append(f'<div class="op" id="op-{_e(op["operationId"])}">')
            deprecated = ' <span class="dep">deprecated</span>' if op.get("deprecated") else ""
            parts.append(
                f'<h3><span class="m {_e(method)}">{_e(method.upper())}</span> <code>{_e(path)}</code>{deprecated}</h3>'
            )
            parts.append(f"<p><strong>{_e(op['summary'])}</strong></p>")
            if op.get("description"):
                parts.append(f"<p>{_e(op['description'])}</p>")
            scope = op.get("x-required-scope")
            access = f"scope <code>{_e(scope)}</code>" if scope else "public (no token)"
            rate = op.get("x-rate-limit-class")
            parts.append(
                f"<p>Access: {access}" + (f"; rate-limit class <code>{_e(rate)}</code>" if rate else "") + "</p>"
            )
            rows = []
            for param in op["parameters"]:
                if "$ref" in param:
                    param = document["components"]["parameters"][param["$ref"].rsplit("/", 1)[-1]]
                rows.append(
                    f"<tr><td><code>{_e(param['name'])}</code></td><td>{_e(param['in'])}</td>"
                    f"<td>{'yes' if param.get('required') else 'no'}</td><td>{_e(param.get('description', ''))}</td>"
                    f"<td><code>{_e(json.dumps(param['schema']))}</code></td></tr>"
                )
            if rows:
                parts.append(
                    "<table><tr><th>parameter</th><th>in</th><th>required</th><th>description</th><th>schema</th></tr>"
                    + "".join(rows)
                    + "</table>"
                )
            if "requestBody" in op:
                body = op["requestBody"]
                ref = body["content"]["application/json"]["schema"]["$ref"]
                optional = "" if body.get("required") else " (optional)"
                parts.append(f"<p>Request body{optional}: <code>application/json</code> {_schema_link(ref)}</p>")
            parts.append(
                "<table><tr><th>status</th><th>meaning</th><th>body</th><th>headers</th></tr>"
                + "".join(_response_rows(document, op["responses"]))
                + "</table></div>"
            )
    codes = document["components"]["schemas"]["ErrorCode"]["oneOf"]
    parts.append('<h2 id="errors">Error codes</h2><table><tr><th>code</th><th>meaning</th></tr>')
    parts += [f"<tr><td><code>{_e(c['const'])}</code></td><td>{_e(c['description'])}</td></tr>" for c in codes]
    parts.append('</table><h2 id="schemas">Schemas</h2>')
    for name, schema in document["components"]["schemas"].items():
        parts.append(
            f'<h3 id="schema-{_e(name)}"><code>{_e(name)}</code></h3><pre>{_e(json.dumps(schema, indent=2))}</pre>'
        )
    parts.append("</body></html>")
    return "\n".join(parts)
