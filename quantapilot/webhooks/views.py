"""The public (JSON) forms of webhook subscriptions: request bodies, endpoints, deliveries and attempts.

The models are the source of ``schemas/webhooks.schema.json`` (the request bodies) and of the webhook answers in
``schemas/api.schema.json`` (``make schemas``). The API answers with their dumps, and anything else that shows an
endpoint or a delivery (a command, a script) uses the same models, so a field is named once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, Self

from pydantic import AwareDatetime, ConfigDict, Field, field_validator, model_validator
from typing_extensions import TypeAliasType

from quantapilot.bodies import NonEmptyBody, RequestBody, ResponseBody, UniqueItems, UtcInstant, described
from quantapilot.webhooks.tables import WebhookAttempt, WebhookDelivery, WebhookEndpoint

# ----- requests ------------------------------------------------------------------------------------------

_NO_CONTROLS = r"^[^\s\x00-\x1f\x7f]+$"

WebhookUrl = TypeAliasType(
    "WebhookUrl",
    Annotated[
        str,
        Field(
            min_length=1,
            max_length=2048,
            pattern=r"^[hH][tT][tT][pP][sS]?://[^\s\x00-\x1f\x7f]+$",
            description=(
                "Absolute http(s) URL of the receiver. Loopback, private, link-local and metadata addresses are "
                "refused unless the operator allows private addresses (metadata never)."
            ),
        ),
    ],
)
EventTypes = TypeAliasType(
    "EventTypes",
    Annotated[
        UniqueItems[list[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_.]*$")]]],
        Field(max_length=100, description="Event types to receive; empty or absent: all."),
    ],
)
RunKinds = TypeAliasType(
    "RunKinds",
    Annotated[
        UniqueItems[list[Literal["repository", "lifecycle"]]],
        Field(max_length=100, description="Run kinds to receive; empty or absent: all."),
    ],
)
Repositories = TypeAliasType(
    "Repositories",
    Annotated[
        UniqueItems[list[Annotated[str, Field(min_length=1, max_length=2000, pattern=_NO_CONTROLS)]]],
        Field(
            max_length=100,
            description=(
                "Repository URLs whose runs' events to receive (case, trailing slash and .git do not matter); "
                "empty or absent: all."
            ),
        ),
    ],
)
Description = TypeAliasType(
    "Description",
    Annotated[str, Field(max_length=500, description="Free text for people; must not contain personal data.")],
)


class _EndpointFields(RequestBody):
    """The fields an endpoint is created with and updated by, each declared once (unpublished base)."""

    # Optional here: an update may leave it out; :class:`CreateEndpointRequest` requires it (same place in the
    # schema: a redeclared field keeps its base's position).
    url: WebhookUrl | None = None
    events: EventTypes | None = None
    description: Description | None = None
    run_kinds: RunKinds | None = None
    repositories: Repositories | None = None


class CreateEndpointRequest(_EndpointFields):
    """``POST /v1/webhooks/endpoints``."""

    model_config = described(
        "CreateEndpointRequest",
        "POST /v1/webhooks/endpoints: subscribe a receiver URL to the caller's workspace events.",
    )

    url: WebhookUrl


class UpdateEndpointRequest(_EndpointFields, NonEmptyBody):
    """``PATCH /v1/webhooks/endpoints/{id}``."""

    model_config = described(
        "UpdateEndpointRequest",
        "PATCH /v1/webhooks/endpoints/{id}: change the given fields; enabled=true re-enables a disabled endpoint.",
    )

    enabled: bool | None = None


class RotateSecretRequest(RequestBody):
    """``POST /v1/webhooks/endpoints/{id}/rotate-secret``."""

    model_config = described(
        "RotateSecretRequest",
        "POST /v1/webhooks/endpoints/{id}/rotate-secret (body optional): overlap_hours overrides the operator's "
        "default overlap during which the previous secret keeps signing.",
    )

    overlap_hours: float | None = Field(default=None, ge=0, le=168, allow_inf_nan=False)


class RecoverRequest(RequestBody):
    """``POST /v1/webhooks/endpoints/{id}/recover``."""

    model_config = described(
        "RecoverRequest",
        "POST /v1/webhooks/endpoints/{id}/recover: re-send every delivery of the endpoint that did not arrive "
        "(status failed, gone or disabled) whose event was created at or after since and before until.",
    )

    # Lax on purpose: strict mode refuses every string for a datetime once the base's before-validator ran;
    # _strings_only below keeps numbers (Unix times) out, so only RFC 3339 strings with a zone pass.
    since: AwareDatetime = Field(strict=False, description="Start of the window (inclusive), RFC 3339 with a zone.")
    until: AwareDatetime | None = Field(
        default=None, strict=False, description="End of the window (exclusive), RFC 3339 with a zone; absent: now."
    )

    @field_validator("since", "until", mode="before")
    @classmethod
    def _strings_only(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise ValueError("must be an RFC 3339 date-time string")
        return value

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.until is not None and self.until <= self.since:
            raise ValueError("until must be after since")
        return self


# ----- answers -------------------------------------------------------------------------------------------

_STANDARD_SECRET = r"^whsec_[A-Za-z0-9+/]+={0,2}$"  # noqa: S105 (a pattern, not a secret)
_STANDARD_FORM = (
    '"whsec_" + base64 of the secret\'s UTF-8 bytes, the key of webhook-signature. Pass it to a Standard '
    "Webhooks library."
)


class WebhookEndpointView(ResponseBody):
    """The public form of an endpoint (never its secrets)."""

    model_config = ConfigDict(title="WebhookEndpoint")

    id: str
    url: str
    description: str = ""
    events: list[str]
    run_kinds: list[str]
    repositories: list[str]
    enabled: bool
    disabled_reason: str | None = None
    failing_since: UtcInstant | None = None
    throttled_until: UtcInstant | None = Field(
        default=None,
        description="Set by a 429 or 503 answer with Retry-After: no delivery to the endpoint is attempted before it.",
    )
    created_at: UtcInstant | None = None
    updated_at: UtcInstant | None = None

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> WebhookEndpointView:
        """The public form of a stored endpoint."""
        return cls(
            id=endpoint.id,
            url=endpoint.url,
            description=endpoint.description,
            events=list(endpoint.event_types),
            run_kinds=list(endpoint.run_kinds),
            repositories=list(endpoint.repositories),
            enabled=endpoint.enabled,
            disabled_reason=endpoint.disabled_reason,
            failing_since=endpoint.failing_since,
            throttled_until=endpoint.throttled_until,
            created_at=endpoint.created_at,
            updated_at=endpoint.updated_at,
        )


class WebhookEndpointCreated(WebhookEndpointView):
    """The answer of endpoint creation: the endpoint and its signing secret, shown this once."""

    model_config = described("WebhookEndpointCreated", "The endpoint and its signing secret, shown this once.")

    secret: str = Field(min_length=16)
    standard_webhooks_secret: str = Field(
        pattern=_STANDARD_SECRET, description="The same secret in the Standard Webhooks form: " + _STANDARD_FORM
    )


class WebhookEndpointList(ResponseBody):
    """``GET /v1/webhooks/endpoints``."""

    model_config = ConfigDict(title="WebhookEndpointList")

    endpoints: list[WebhookEndpointView]


class WebhookSecretRotated(ResponseBody):
    """The answer of a rotation: the new secret, shown this once."""

    model_config = ConfigDict(title="WebhookSecretRotated")

    endpoint_id: str
    secret: str = Field(min_length=16)
    standard_webhooks_secret: str = Field(
        pattern=_STANDARD_SECRET, description="The new secret in the Standard Webhooks form: " + _STANDARD_FORM
    )
    previous_secrets_expire_at: UtcInstant | None


class WebhookRecovery(ResponseBody):
    """The answer of a recovery: how many deliveries were re-sent."""

    model_config = ConfigDict(title="WebhookRecovery")

    endpoint_id: str
    since: UtcInstant
    until: UtcInstant
    recovered: int = Field(
        ge=0, description="Deliveries put back to pending and re-sent (each through a new workflow)."
    )
    more: bool = Field(
        description=(
            "True when the window held more recoverable deliveries than one call re-sends (the oldest are re-sent "
            "first); call again with the same window for the rest."
        )
    )


class AttemptView(ResponseBody):
    """One attempt of a delivery."""

    attempt: int
    outcome: str
    status_code: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    at: UtcInstant | None = None

    @classmethod
    def of(cls, row: WebhookAttempt) -> AttemptView:
        """The public form of a stored attempt: its fields of the same names (the row's others are not shown)."""
        return cls.model_validate(row, from_attributes=True)


class DeliveryView(ResponseBody):
    """A delivery with its attempts (status codes, latencies, errors) and next retry."""

    model_config = ConfigDict(title="WebhookDelivery")

    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    run_id: str | None = None
    status: Literal["pending", "delivered", "failed", "gone", "disabled"]
    attempt_count: int = Field(ge=0)
    last_status_code: int | None = None
    last_latency_ms: float | None = None
    last_error: str | None = None
    next_retry_at: UtcInstant | None = None
    created_at: UtcInstant | None = None
    delivered_at: UtcInstant | None = None
    data: dict[str, Any] | None = Field(
        default=None,
        description=(
            "The payload of an event kept with its deliveries because no run's log has it "
            "(webhook.endpoint_disabled); null for run events, which GET /v1/runs/{run_id}/events serves."
        ),
    )
    attempts: list[AttemptView] = []

    @classmethod
    def of(cls, delivery: WebhookDelivery, attempts: Sequence[WebhookAttempt] = ()) -> DeliveryView:
        """The public form of a stored delivery with its attempts."""
        data = delivery.payload.get("data") if delivery.payload is not None else None
        return cls(
            id=delivery.id,
            endpoint_id=delivery.endpoint_id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            run_id=delivery.run_id,
            status=delivery.status,
            attempt_count=delivery.attempts,
            last_status_code=delivery.last_status_code,
            last_latency_ms=delivery.last_latency_ms,
            last_error=delivery.last_error,
            next_retry_at=delivery.next_retry_at,
            created_at=delivery.created_at,
            delivered_at=delivery.delivered_at,
            data=data if isinstance(data, dict) else None,
            attempts=[AttemptView.of(a) for a in attempts],
        )


class WebhookDeliveryList(ResponseBody):
    """``GET /v1/webhooks/endpoints/{id}/deliveries``."""

    model_config = ConfigDict(title="WebhookDeliveryList")

    deliveries: list[DeliveryView]
