"""Stable error codes and the domain exceptions the API turns into the error envelope."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


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
    FATAL = "FATAL"


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
