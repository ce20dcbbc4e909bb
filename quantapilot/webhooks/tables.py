"""The webhook tables (``webhook_endpoints``, ``webhook_secrets``, ``webhook_deliveries``, ``webhook_attempts``).

The modules beside this one work on these rows and share its conventions: every function takes the session
keyword-only and only flushes (the caller owns the transaction: use :func:`quantapilot.db.session_scope`).
Functions called on behalf of an API caller take ``workspace`` and treat a row of another workspace exactly like
a missing one (:class:`WebhookNotFoundError`), so ids cannot be probed across tenants; functions the delivery
worker calls work by id alone.

- :mod:`~quantapilot.webhooks.endpoints`: event types, filters, endpoint CRUD and matching.
- :mod:`~quantapilot.webhooks.signing_secrets`: storing signing secrets encrypted, re-encryption.
- :mod:`~quantapilot.webhooks.deliveries`: creating delivery rows once per event, reading the delivery log.
- :mod:`~quantapilot.webhooks.delivery`: the delivery state machine (attempts, retries, disabling, rotation
  overlap).
- :mod:`~quantapilot.webhooks.recovery`: redelivering one delivery, or every undelivered delivery of an endpoint's
  time window.
"""

from __future__ import annotations

import secrets as _secrets
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict
from pydantic import Field as ModelField
from sqlalchemy import JSON, Column, Index, Table, UniqueConstraint
from sqlmodel import Field, Session, SQLModel

from quantapilot.db import UtcDateTime, utcnow


def new_id(prefix: str) -> str:
    """A fresh random row id with a readable prefix (``we_`` endpoints, ``wd_`` deliveries)."""
    return prefix + _secrets.token_hex(12)


class WebhookNotFoundError(LookupError):
    """An endpoint or delivery that does not exist or belongs to another workspace.

    Attributes:
        what: Which kind of object (``webhook endpoint`` or ``webhook delivery``), for the 404 message.
    """

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")
        self.what = what


class DeliveryStatus(StrEnum):
    """Where a delivery stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    GONE = "gone"
    DISABLED = "disabled"


class DeliveryOutcome(StrEnum):
    """How one delivery attempt ended (``webhook_attempts.outcome``).

    See :func:`quantapilot.webhooks.delivery.classify_answer`.
    """

    DELIVERED = "delivered"
    RETRY = "retry"
    GONE = "gone"
    REJECTED_UNSAFE = "rejected_unsafe"
    ABORTED = "aborted"


class DeliveryResult(BaseModel):
    """The result of one delivery attempt; safe to store and show (no secrets, no URL, no addresses)."""

    model_config = ConfigDict(frozen=True)

    outcome: DeliveryOutcome
    status_code: int | None = None
    latency_ms: float = ModelField(ge=0)
    retry_after_s: float | None = None
    error: str | None = None


def _ts(*, nullable: bool, index: bool = False) -> Any:
    # A fresh Column per field: SQLAlchemy columns cannot be shared between attributes or tables.
    return Column(UtcDateTime(), nullable=nullable, index=index)


def _json_list() -> Any:
    return Column(JSON, nullable=False)


class WebhookEndpoint(SQLModel, table=True):
    """A consumer URL subscribed to a workspace's events.

    Empty filter lists mean "all". ``failing_since`` is when deliveries started failing without a success in
    between; after :data:`~quantapilot.webhooks.schedule.DISABLE_AFTER` the endpoint is disabled
    (:func:`quantapilot.webhooks.delivery.failing_too_long`). ``throttled_until`` is set by a ``429``/``503``
    answer with ``Retry-After``: until then none of the endpoint's deliveries is attempted
    (:func:`quantapilot.webhooks.delivery.throttle_endpoint`).
    """

    __tablename__ = "webhook_endpoints"

    id: str = Field(primary_key=True)
    workspace: str = Field(index=True)
    url: str
    description: str = ""
    event_types: list[str] = Field(default_factory=list, sa_column=_json_list())
    run_kinds: list[str] = Field(default_factory=list, sa_column=_json_list())
    repositories: list[str] = Field(default_factory=list, sa_column=_json_list())
    enabled: bool = True
    disabled_reason: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    failing_since: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    throttled_until: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class WebhookSecret(SQLModel, table=True):
    """A signing secret of an endpoint.

    HMAC signing needs the secret itself, so it cannot be hashed; ``secret`` holds it encrypted with the service's
    secret key (:mod:`quantapilot.secretbox`, bound to the endpoint and this row's id), which is never in the
    database: a dump alone signs nothing. Rows written before encryption hold the plaintext until
    :func:`~quantapilot.webhooks.at_rest.encrypt_plaintext_secrets` runs (every API and worker start, and
    ``qp secrets rotate-key``). The secret is returned once, when created (endpoint creation or rotation), and
    never exposed by any read path afterwards. ``expires_at`` is set when a newer secret replaces it; until then
    both sign (rotation overlap, :func:`quantapilot.webhooks.rotation.active_secrets`).
    """

    __tablename__ = "webhook_secrets"

    id: int | None = Field(default=None, primary_key=True)
    endpoint_id: str = Field(foreign_key="webhook_endpoints.id", index=True)
    secret: str = Field(repr=False)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    expires_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class WebhookDelivery(SQLModel, table=True):
    """One event for one endpoint; created once per ``(endpoint_id, event_id)`` and retried in place."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_deliveries_endpoint_event"),
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )

    id: str = Field(primary_key=True)
    endpoint_id: str = Field(foreign_key="webhook_endpoints.id")
    workspace: str = Field(index=True)
    event_id: str
    event_type: str
    run_id: str | None = Field(default=None, index=True)
    # A plain string column (values of DeliveryStatus): a database ENUM type would need migrations to extend.
    status: str = Field(default=DeliveryStatus.PENDING.value, max_length=16, index=True)
    attempts: int = 0
    last_status_code: int | None = None
    last_latency_ms: float | None = None
    last_error: str | None = None
    next_retry_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    delivered_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    # The envelope of an event that is not in ``run_events`` (``webhook.endpoint_disabled``); None for run
    # events, which are rebuilt from the run's log by event id.
    payload: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # The Temporal workflow that currently owns this delivery; a redelivery replaces it, and a superseded
    # workflow that wakes up later sees the mismatch and stops without sending.
    workflow_id: str | None = Field(default=None, max_length=200)
    # The outbox (:mod:`quantapilot.webhooks.outbox`): when a dispatcher may next attempt the delivery (None: not
    # in the outbox, or settled), which claim holds it and until when, and the attempt count at which its retry
    # schedule (re)started (0, or the attempts made before a redelivery).
    next_attempt_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    claim_token: str | None = Field(default=None, max_length=64)
    claimed_until: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    schedule_base: int = 0


class WebhookAttempt(SQLModel, table=True):
    """One HTTP attempt of a delivery; ``(delivery_id, attempt)`` is unique so a retried activity overwrites."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (UniqueConstraint("delivery_id", "attempt", name="uq_webhook_attempts_delivery_attempt"),)

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: str = Field(foreign_key="webhook_deliveries.id", index=True)
    attempt: int
    outcome: str
    status_code: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


# The Core tables behind the models, for set-based statements (one executemany for a batch of rows) where the
# ORM's per-object unit of work would cost more than the SQL itself (the outbox dispatcher's hot path).
DELIVERIES_TABLE: Table = WebhookDelivery.__table__  # type: ignore[attr-defined]
ATTEMPTS_TABLE: Table = WebhookAttempt.__table__  # type: ignore[attr-defined]
ENDPOINTS_TABLE: Table = WebhookEndpoint.__table__  # type: ignore[attr-defined]
SECRETS_TABLE: Table = WebhookSecret.__table__  # type: ignore[attr-defined]

_Owned = TypeVar("_Owned", WebhookEndpoint, WebhookDelivery)


def workspace_row(session: Session, table: type[_Owned], row_id: str, *, workspace: str, what: str) -> _Owned:
    """The row ``row_id`` of ``table`` when it belongs to ``workspace``: what the API may read and change.

    Raises:
        WebhookNotFoundError: If it does not exist or belongs to another workspace (the two look the same, so
            one workspace never learns which ids another has).
    """
    row = session.get(table, row_id)
    if row is None or row.workspace != workspace:
        raise WebhookNotFoundError(what)
    return row
