"""Stable error codes, the error envelope's models and the domain exceptions the API turns into the envelope.

The models are the source of ``schemas/error.schema.json`` (``make schemas``, :mod:`schemas.generate`).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema


class ErrorCode(StrEnum):
    """Error codes shared by the HTTP envelope, ``run.failed`` events and Temporal ``ApplicationError`` types."""

    VALIDATION_ERROR = "VALIDATION_ERROR"
    AUTHENTICATION_ERROR = "AUTHENTICATION_ERROR"
    AUTHORIZATION_ERROR = "AUTHORIZATION_ERROR"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    SERVER_ERROR = "SERVER_ERROR"
    # Run failures (also Temporal ApplicationError types)
    PRECONDITION_FAILED = "PRECONDITION_FAILED"
    REPO_URL_NOT_ALLOWED = "REPO_URL_NOT_ALLOWED"
    REPO_CLONE_FAILED = "REPO_CLONE_FAILED"
    REPO_NOT_FOUND = "REPO_NOT_FOUND"
    BRANCH_NOT_FOUND = "BRANCH_NOT_FOUND"
    REPO_TOO_LARGE = "REPO_TOO_LARGE"
    CONFIG_INVALID = "CONFIG_INVALID"
    DOCS_LINT_FAILED = "DOCS_LINT_FAILED"
    GATE_REJECTED = "GATE_REJECTED"
    GATE_TIMEOUT = "GATE_TIMEOUT"
    MERGE_CONFLICT = "MERGE_CONFLICT"
    COMMANDS_NOT_ALLOWED = "COMMANDS_NOT_ALLOWED"
    COMMANDS_SANDBOX_UNAVAILABLE = "COMMANDS_SANDBOX_UNAVAILABLE"
    STEP_FAILED = "STEP_FAILED"
    TOOL_FAILURE = "TOOL_FAILURE"
    UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
    TRANSIENT_NETWORK = "TRANSIENT_NETWORK"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    FORGE_ERROR = "FORGE_ERROR"
    AGENT_FAILED = "AGENT_FAILED"
    # Model steps (quantapilot/llm/): the service refused the request (4xx: permanent), is unavailable (429, 5xx,
    # timeouts: retried, Retry-After honoured), is not configured on the worker, or answered a diff that is unsafe
    # or too large to apply.
    MODEL_REQUEST_REJECTED = "MODEL_REQUEST_REJECTED"
    MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"
    MODEL_NOT_CONFIGURED = "MODEL_NOT_CONFIGURED"
    MODEL_DIFF_REJECTED = "MODEL_DIFF_REJECTED"
    # Webhooks: a workspace already holds QP_WEBHOOK_MAX_ENDPOINTS endpoints.
    WEBHOOK_ENDPOINT_LIMIT = "WEBHOOK_ENDPOINT_LIMIT"
    MODEL_ANSWER_REJECTED = "MODEL_ANSWER_REJECTED"
    FATAL = "FATAL"

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """Each code with what it means (the published ``ErrorCode``)."""
        return {"type": "string", "oneOf": [{"const": c.value, "description": ERROR_CODE_MEANINGS[c]} for c in cls]}


#: What each code means: published with the code in ``schemas/error.schema.json``.
ERROR_CODE_MEANINGS: dict[ErrorCode, str] = {
    ErrorCode.VALIDATION_ERROR: (
        "400/422: the request (body, query, header) is malformed or does not match its schema; details lists each "
        "problem."
    ),
    ErrorCode.AUTHENTICATION_ERROR: (
        "401: no bearer token, or an unknown, expired or revoked one. Sent with WWW-Authenticate: Bearer."
    ),
    ErrorCode.AUTHORIZATION_ERROR: (
        "403: the token lacks the scope the endpoint needs (details.scope names it), or a gate's approver rules "
        "refuse the caller."
    ),
    ErrorCode.NOT_FOUND: (
        "404: no such route or resource in the caller's workspace (another workspace's resources look exactly like "
        "missing ones)."
    ),
    ErrorCode.WEBHOOK_ENDPOINT_LIMIT: (
        "409: the workspace already holds as many webhook endpoints as allowed (QP_WEBHOOK_MAX_ENDPOINTS, "
        "details.limit); delete one first."
    ),
    ErrorCode.CONFLICT: "409: the resource's state does not allow the action (gate not pending, run already finished).",
    ErrorCode.IDEMPOTENCY_KEY_REUSED: "422: the Idempotency-Key was already used with a different request body.",
    ErrorCode.PAYLOAD_TOO_LARGE: "413: the body is larger than the configured limit (QP_MAX_BODY_BYTES).",
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: "415: the body is not application/json.",
    ErrorCode.METHOD_NOT_ALLOWED: "405: the path exists but not with this method; the Allow header lists the methods.",
    ErrorCode.RATE_LIMIT_EXCEEDED: (
        "429: the token spent its rate limit for this route class; Retry-After says when to retry."
    ),
    ErrorCode.REQUEST_TIMEOUT: (
        "408: the request body did not arrive within QP_HTTP_BODY_TIMEOUT_S; the connection is closed."
    ),
    ErrorCode.SERVICE_UNAVAILABLE: "503: a dependency (Temporal, the database) does not answer.",
    ErrorCode.SERVER_ERROR: "500: an unexpected failure; the traceId finds the log line.",
    ErrorCode.PRECONDITION_FAILED: "A run's precondition does not hold.",
    ErrorCode.REPO_URL_NOT_ALLOWED: (
        "Run failure: the repository URL carries credentials, uses a refused transport (ext::, file:// unless "
        "allowed), matches no allowed pattern, or its host is not allowed (loopback, private, link-local or metadata "
        "address unless QP_REPO_ALLOW_PRIVATE)."
    ),
    ErrorCode.REPO_CLONE_FAILED: "Run failure: the repository could not be cloned.",
    ErrorCode.REPO_NOT_FOUND: "Run failure: the repository does not exist or is not reachable.",
    ErrorCode.BRANCH_NOT_FOUND: "Run failure: the branch does not exist in the repository.",
    ErrorCode.REPO_TOO_LARGE: (
        "Run failure: the repository grew past QP_CLONE_MAX_BYTES while it was cloned or fetched; the partial clone "
        "was removed."
    ),
    ErrorCode.CONFIG_INVALID: (
        "Run failure: quantapilot.yml is invalid (schema, size, YAML aliases or depth, or a path leaving the "
        "repository)."
    ),
    ErrorCode.DOCS_LINT_FAILED: (
        "Run failure: the generated documentation failed its lint (front matter, personal data)."
    ),
    ErrorCode.GATE_REJECTED: "Run failure: a gate was rejected.",
    ErrorCode.GATE_TIMEOUT: "Run failure: a gate was not decided in time.",
    ErrorCode.MERGE_CONFLICT: "Run failure: a pull request could not be merged.",
    ErrorCode.COMMANDS_NOT_ALLOWED: (
        "Run failure: quantapilot.yml asks to run commands in a repository the operator does not allow to."
    ),
    ErrorCode.COMMANDS_SANDBOX_UNAVAILABLE: (
        "Run failure: milestone commands cannot run because bubblewrap, their sandbox, is missing or cannot create "
        "namespaces on the worker host (QP_COMMAND_SANDBOX)."
    ),
    ErrorCode.STEP_FAILED: "Run failure: a step failed after its retries.",
    ErrorCode.TOOL_FAILURE: "Run failure: an external tool failed (retried with backoff).",
    ErrorCode.UPSTREAM_TIMEOUT: "Run failure: an upstream service timed out (retried with backoff).",
    ErrorCode.TRANSIENT_NETWORK: "Run failure: a network fault (retried with backoff).",
    ErrorCode.BUDGET_EXCEEDED: "A run's time or attempt budget is spent; the run pauses for an operator.",
    ErrorCode.FORGE_ERROR: "Run failure: the forge (git host, GitHub, Gitea) refused an operation.",
    ErrorCode.AGENT_FAILED: "Run failure: a lifecycle stage agent failed.",
    ErrorCode.FATAL: "Run failure that is not retried.",
    ErrorCode.MODEL_REQUEST_REJECTED: (
        "Run failure: the model service refused the request (a 4xx answer other than 429); not retried."
    ),
    ErrorCode.MODEL_UNAVAILABLE: (
        "The model service is unavailable (429, 5xx, timeout); retried, honouring Retry-After."
    ),
    ErrorCode.MODEL_NOT_CONFIGURED: (
        "Run failure: the worker has no model provider configured (QP_MODEL_BASE_URL, QP_MODEL_PROVIDER)."
    ),
    ErrorCode.MODEL_DIFF_REJECTED: (
        "Run failure: a model's diff leaves the worktree, touches .git or a link, or is too large."
    ),
    ErrorCode.MODEL_ANSWER_REJECTED: (
        "Run failure: a model answered a documentation page or a lifecycle narrative with nothing usable."
    ),
}


class ErrorBody(BaseModel):
    """The ``error`` object of the envelope."""

    model_config = ConfigDict(extra="forbid", title="ErrorBody", validate_by_name=True)

    code: ErrorCode
    message: str = Field(description="Human-readable detail; never contains a token or secret.")
    trace_id: str = Field(
        alias="traceId",
        pattern="^[0-9a-f]{32}$",
        description=(
            "From a valid W3C traceparent header, else fresh; also in the X-Trace-Id header and the server's log line."
        ),
    )
    timestamp: datetime
    details: Any = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description=(
            "Structured detail: a list of {path, message} for validation errors, {scope} for a missing scope, {class,"
            " limit, retryAfter} for rate limits."
        ),
    )


class ErrorResponse(BaseModel):
    """The error envelope: ``{"error": {code, message, traceId, timestamp, details?}}``."""

    model_config = ConfigDict(extra="forbid", title="ErrorResponse")

    error: ErrorBody


class ErrorEnvelope(ErrorResponse):
    """The envelope under the name ``api.schema.json`` publishes it by (the same shape)."""

    model_config = ConfigDict(title="ErrorEnvelope")


def error_document(code: str, message: str, trace_id: str, timestamp: datetime, details: Any = None) -> dict[str, Any]:
    """The envelope as JSON data; ``details`` is left out when None."""
    # Not validated: the error path must answer whatever went wrong before it.
    body = ErrorBody.model_construct(
        code=ErrorCode(code), message=message, trace_id=trace_id, timestamp=timestamp, details=details
    )
    return ErrorResponse.model_construct(error=body).model_dump(mode="json", by_alias=True, warnings=False)


class ApiError(Exception):
    """An error the API answers with its envelope and HTTP status.

    Args:
        status: HTTP status code.
        code: Stable error code.
        message: Human-readable detail; never contains secrets.
        details: Optional structured detail (e.g. validation errors).
        headers: Extra response headers (e.g. ``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        code: ErrorCode,
        message: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def not_found(what: str) -> ApiError:
    """Build the 404 used for anything unknown or outside the caller's workspace."""
    return ApiError(404, ErrorCode.NOT_FOUND, f"{what} not found")


def conflict(message: str, *, code: ErrorCode = ErrorCode.CONFLICT, details: Any = None) -> ApiError:
    """Build a 409 conflict."""
    return ApiError(409, code, message, details=details)
