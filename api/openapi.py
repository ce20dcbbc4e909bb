"""The published OpenAPI 3.1 document, generated from the endpoint registry and the models of its bodies.

Each operation is an :class:`~api.registry.Endpoint` of ``api/endpoints.py``: its path, scope, parameters, request
body, responses and rate class are the ones the application mounts and enforces. Its request and response bodies
are models; their schemas are the files ``make schemas`` writes from those models (:mod:`schemas.generate`, a test
fails on a stale one), copied under ``components/schemas`` with their internal references rewritten, each model
under the component name of its definition.

The schemathesis run in ``tests/security`` checks the live responses against them.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib import metadata
from typing import Any

from pydantic import BaseModel

import schemas
from api.endpoints import ENDPOINTS
from api.ratelimit import RouteClass, limit_split, rates_from
from api.registry import Endpoint, Param, Registry
from quantapilot.settings import Settings
from quantapilot.tokens import ALL_SCOPES
from schemas.generate import GENERATED

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
            # A model used by two files (the envelope's parts) is one component.
            if key in out and out[key] != schema:
                raise ValueError(f"component {key} defined twice")
            out.setdefault(key, schema)
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


@cache
def _model_components() -> dict[type[BaseModel], str]:
    out: dict[type[BaseModel], str] = {}
    for item in GENERATED:
        if item.name not in SCHEMA_FILES:
            continue
        root = SCHEMA_FILES[item.name]
        for model in item.models:
            title = str(model.model_config.get("title") or model.__name__)
            # The first file that publishes a model names its component (EmptyRequest: api.schema.json's).
            out.setdefault(model, root if item.root and root else f"{root}.{title}" if root else title)
    return out


def component_name(model: type[BaseModel]) -> str:
    """The component of a body's model: its definition in the published schema file that lists it.

    Raises:
        KeyError: No published schema file lists the model (every body an endpoint declares is listed; any
            other is added to its file in ``schemas/generate.py``).
    """
    return _model_components()[model]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": COMPONENT_PREFIX + component_name(model)}


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    params = [_parameter(p) for p in endpoint.params]
    if endpoint.idempotency_key:
        params.append({"$ref": "#/components/parameters/IdempotencyKey"})
    params.append({"$ref": "#/components/parameters/Traceparent"})
    success_headers: dict[str, Any] = {"X-Trace-Id": _ref_header("X-Trace-Id")}
    if endpoint.scope is not None:
        success_headers |= {h: {**_ref_header(h)} for h in _RATE_HEADERS}
    success_headers |= {h: _ref_header(h) for h in endpoint.success_headers}
    if endpoint.deprecated:
        success_headers |= {h: _ref_header(h) for h in ("Deprecation", "Sunset", "Link")}
    success: dict[str, Any] = {"description": endpoint.summary, "headers": success_headers}
    if endpoint.response:
        success["content"] = {endpoint.media: {"schema": _ref(endpoint.response)}}
    elif endpoint.media:
        success["content"] = {endpoint.media: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {str(endpoint.success): success}
    for status, model in endpoint.extra_success.items():
        responses[str(status)] = {
            "description": f"{endpoint.summary} (not ready)",
            "headers": {"X-Trace-Id": _ref_header("X-Trace-Id")},
            "content": {"application/json": {"schema": _ref(model)}},
        }
    statuses = set(endpoint.errors) | set(COMMON_ERRORS) | (set(AUTH_ERRORS) if endpoint.scope else set())
    for status in sorted(statuses - set(endpoint.extra_success)):
        responses[str(status)] = {"$ref": f"#/components/responses/{ERROR_RESPONSES[status][0]}"}
    out: dict[str, Any] = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
        "parameters": params,
        "responses": responses,
        "security": [{"bearerAuth": [endpoint.scope]}] if endpoint.scope else [],
        # The class of the token's buckets; public endpoints spend from the client address's instead.
        "x-rate-limit-class": endpoint.rate_class if endpoint.scope else None,
        "x-required-scope": endpoint.scope,
    }
    if endpoint.description:
        out["description"] = endpoint.description
    if endpoint.deprecated:
        out["deprecated"] = True
    if endpoint.body is not None:
        out["requestBody"] = {
            "required": endpoint.body.required,
            "content": {"application/json": {"schema": _ref(endpoint.body.model)}},
        }
    return out


def _version() -> str:
    try:
        return metadata.version("quantapilot")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def build_openapi(settings: Settings, endpoints: Registry = ENDPOINTS) -> dict[str, Any]:
    """The OpenAPI 3.1 document of an application built with ``settings`` and ``endpoints``."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints.resolved(settings.run_path):
        paths.setdefault(endpoint.canonical, {})[endpoint.method.lower()] = _operation(endpoint)
    # The limits as configured for the whole service, not one process's share of them.
    rates, split = rates_from(settings), limit_split(settings)
    rate_text = "; ".join(
        f"{cls.value}: {rates[cls].per_second * split:g}/s, burst {rates[cls].burst * split}" for cls in RouteClass
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
