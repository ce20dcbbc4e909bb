"""Webhook endpoints, their signing secrets, deliveries and attempts (tables ``webhook_*``) and their queries.

Every function takes the session keyword-only and only flushes: the caller owns the transaction (use
:func:`quantapilot.db.session_scope`). Functions called on behalf of an API caller take ``workspace`` and treat
a row of another workspace exactly like a missing one (:class:`WebhookNotFoundError`), so ids cannot be probed
across tenants. Functions the delivery worker calls (``active_secrets``, ``record_attempt``, ``mark_*``) work
by id alone.
"""

from __future__ import annotations

import secrets as _secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from sqlalchemy import JSON, Column, Index, UniqueConstraint, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, Session, SQLModel, col

from quantapilot.db import UtcDateTime, utcnow
from quantapilot.secretbox import FORMAT_VERSION, KeyRing, SecretDecryptError
from quantapilot.webhooks.schedule import DISABLE_AFTER
from quantapilot.webhooks.sender import DeliveryOutcome, DeliveryResult
from quantapilot.webhooks.signing import new_secret
from quantapilot.webhooks.urlsafety import check_url_syntax

# The dotted event types consumers can subscribe to.
KNOWN_EVENT_TYPES: Final[tuple[str, ...]] = (
    "run.started",
    "documentation.generated",
    "gate.requested",
    "gate.decided",
    "milestone.completed",
    "run.paused",
    "run.resumed",
    "run.failed",
    "run.completed",
    "run.cancelled",
    "stage.completed",
    "realization.updated",
    "webhook.endpoint_disabled",
)
# The QuantaPilot seed names events with underscores (``run_started``); every dotted type is accepted in that
# spelling, plus the seed's one irregular name.
EVENT_TYPE_ALIASES: Final[dict[str, str]] = {
    **{name.replace(".", "_"): name for name in KNOWN_EVENT_TYPES},
    "gate_decision": "gate.decided",
}
MAX_FILTER_ITEMS: Final = 100
DISABLED_GONE: Final = "gone"
DISABLED_FAILING: Final = "failing"
DISABLED_UNSAFE: Final = "unsafe_url"


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


def _ts(*, nullable: bool, index: bool = False) -> Any:
    # A fresh Column per field: SQLAlchemy columns cannot be shared between attributes or tables.
    return Column(UtcDateTime(), nullable=nullable, index=index)


def _json_list() -> Any:
    return Column(JSON, nullable=False)


class WebhookEndpoint(SQLModel, table=True):
    """A consumer URL subscribed to a workspace's events.

    Empty filter lists mean "all". ``failing_since`` is when deliveries started failing without a success in
    between; after :data:`~quantapilot.webhooks.schedule.DISABLE_AFTER` the endpoint is disabled.
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


class WebhookSecret(SQLModel, table=True):
    """A signing secret of an endpoint.

    HMAC signing needs the secret itself, so it cannot be hashed; ``secret`` holds it encrypted with the service's
    secret key (:mod:`quantapilot.secretbox`, bound to the endpoint and this row's id), which is never in the
    database: a dump alone signs nothing. Rows written before encryption hold the plaintext until
    :func:`encrypt_plaintext_secrets` runs (every API and worker start, and ``qp secrets rotate-key``). The
    secret is returned once, when created (endpoint creation or rotation), and never exposed by any read path
    afterwards. ``expires_at`` is set when a newer secret replaces it; until then both sign (rotation overlap).
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


# --- event types and filters -------------------------------------------------------------------------------


def normalize_event_type(name: str) -> str:
    """Map an event type or its seed alias to the dotted name.

    Args:
        name: ``run.started``, ``run_started``, ``gate_decision``, ...

    Returns:
        The dotted type.

    Raises:
        ValueError: If the name is not a known type or alias.
    """
    key = name.strip().lower()
    if key in KNOWN_EVENT_TYPES:
        return key
    if key in EVENT_TYPE_ALIASES:
        return EVENT_TYPE_ALIASES[key]
    raise ValueError(f"unknown event type {name[:64]!r}")


def _unique(items: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def _filter_list(values: Iterable[str], what: str) -> list[str]:
    items = list(values)
    if len(items) > MAX_FILTER_ITEMS:
        raise ValueError(f"at most {MAX_FILTER_ITEMS} {what} may be given")
    for item in items:
        if not isinstance(item, str) or not item.strip() or len(item) > 2048:
            raise ValueError(f"{what} must be non-empty strings")
    return items


def normalize_repository(value: str) -> str:
    """Normalise a repository URL for filter matching (case, trailing slash and ``.git`` do not matter)."""
    # Lower-cased first, so ".GIT" goes too.
    return value.strip().lower().rstrip("/").removesuffix(".git").rstrip("/")


def _event_types(values: Iterable[str]) -> list[str]:
    return _unique(normalize_event_type(v) for v in _filter_list(values, "event types"))


def _run_kinds(values: Iterable[str]) -> list[str]:
    return _unique(v.strip().lower() for v in _filter_list(values, "run kinds"))


def _repositories(values: Iterable[str]) -> list[str]:
    return _unique(normalize_repository(v) for v in _filter_list(values, "repositories"))


def endpoint_matches(
    endpoint: WebhookEndpoint, *, event_type: str, run_kind: str | None, repository: str | None
) -> bool:
    """Tell whether an endpoint's filters admit an event.

    An event outside any run (``webhook.endpoint_disabled``) passes the run-kind and repository filters and is
    filtered by type alone. A repository filter admits only runs of those repositories: a lifecycle run, which
    has none, does not pass it.

    Args:
        endpoint: The endpoint.
        event_type: The event's dotted type.
        run_kind: The run's kind, if the event belongs to a run.
        repository: The run's repository URL, if any.

    Returns:
        True when the event should be delivered to the endpoint (ignoring ``enabled``).
    """
    if endpoint.event_types and event_type not in endpoint.event_types:
        return False
    if run_kind is None:
        return True
    if endpoint.run_kinds and run_kind.lower() not in endpoint.run_kinds:
        return False
    if endpoint.repositories:
        return repository is not None and normalize_repository(repository) in endpoint.repositories
    return True


# --- endpoints -----------------------------------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return prefix + _secrets.token_hex(12)


def create_endpoint(
    *,
    session: Session,
    workspace: str,
    url: str,
    description: str = "",
    event_types: Sequence[str] = (),
    run_kinds: Sequence[str] = (),
    repositories: Sequence[str] = (),
    allow_private: bool | None = None,
    keyring: KeyRing,
    now: datetime | None = None,
) -> tuple[WebhookEndpoint, str]:
    """Create an endpoint and its first signing secret.

    Args:
        session: Database session.
        workspace: Owning workspace.
        url: Receiver URL; checked with :func:`~quantapilot.webhooks.urlsafety.check_url_syntax`.
        description: Free text for people.
        event_types: Types or aliases to receive; empty for all.
        run_kinds: Run kinds to receive; empty for all.
        repositories: Repository URLs to receive; empty for all.
        allow_private: Passed to the URL syntax check (literal IP policy); None checks syntax only.
        keyring: Encrypts the secret for storage.
        now: Creation time (tests).

    Returns:
        The endpoint and the plaintext secret; show the secret to the caller once, never again.

    Raises:
        UnsafeUrlError: If the URL is refused (a ``ValueError``).
        ValueError: If a filter is invalid (unknown event type, too many items).
    """
    check_url_syntax(url, allow_private=allow_private)
    at = now or utcnow()
    endpoint = WebhookEndpoint(
        id=_new_id("we_"),
        workspace=workspace,
        url=url,
        description=description,
        event_types=_event_types(event_types),
        run_kinds=_run_kinds(run_kinds),
        repositories=_repositories(repositories),
        created_at=at,
        updated_at=at,
    )
    secret = new_secret()
    session.add(endpoint)
    session.flush()  # the secret row references the endpoint
    _add_secret(session, endpoint.id, secret, keyring=keyring, at=at)
    return endpoint, secret


def list_endpoints(*, session: Session, workspace: str) -> list[WebhookEndpoint]:
    """List a workspace's endpoints, oldest first."""
    query = (
        select(WebhookEndpoint)
        .where(col(WebhookEndpoint.workspace) == workspace)
        .order_by(col(WebhookEndpoint.created_at), col(WebhookEndpoint.id))
    )
    return list(session.scalars(query))


def get_endpoint(endpoint_id: str, *, session: Session, workspace: str) -> WebhookEndpoint:
    """Return an endpoint of the workspace.

    Raises:
        WebhookNotFoundError: If it does not exist or belongs to another workspace.
    """
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.workspace != workspace:
        raise WebhookNotFoundError("webhook endpoint")
    return endpoint


def update_endpoint(
    endpoint_id: str,
    *,
    session: Session,
    workspace: str,
    url: str | None = None,
    description: str | None = None,
    event_types: Sequence[str] | None = None,
    run_kinds: Sequence[str] | None = None,
    repositories: Sequence[str] | None = None,
    enabled: bool | None = None,
    allow_private: bool | None = None,
    now: datetime | None = None,
) -> WebhookEndpoint:
    """Change an endpoint; arguments left None stay as they are.

    Re-enabling clears ``disabled_reason`` and ``failing_since`` so the endpoint gets a fresh five days.

    Raises:
        WebhookNotFoundError: If it does not exist or belongs to another workspace.
        UnsafeUrlError: If the new URL is refused.
        ValueError: If a filter is invalid.
    """
    endpoint = get_endpoint(endpoint_id, session=session, workspace=workspace)
    if url is not None:
        check_url_syntax(url, allow_private=allow_private)
        endpoint.url = url
    if description is not None:
        endpoint.description = description
    if event_types is not None:
        endpoint.event_types = _event_types(event_types)
    if run_kinds is not None:
        endpoint.run_kinds = _run_kinds(run_kinds)
    if repositories is not None:
        endpoint.repositories = _repositories(repositories)
    if enabled is not None:
        if enabled and not endpoint.enabled:
            endpoint.disabled_reason = None
            endpoint.failing_since = None
        elif not enabled and endpoint.enabled:
            endpoint.disabled_reason = "disabled by user"
        endpoint.enabled = enabled
    endpoint.updated_at = now or utcnow()
    session.add(endpoint)
    session.flush()
    return endpoint


def delete_endpoint(endpoint_id: str, *, session: Session, workspace: str) -> None:
    """Delete an endpoint with its secrets, deliveries and attempts.

    Raises:
        WebhookNotFoundError: If it does not exist or belongs to another workspace.
    """
    endpoint = get_endpoint(endpoint_id, session=session, workspace=workspace)
    delivery_ids = select(col(WebhookDelivery.id)).where(col(WebhookDelivery.endpoint_id) == endpoint.id)
    # Children first: the foreign keys have no ON DELETE CASCADE, so the order is explicit and portable.
    session.execute(delete(WebhookAttempt).where(col(WebhookAttempt.delivery_id).in_(delivery_ids)))
    session.execute(delete(WebhookDelivery).where(col(WebhookDelivery.endpoint_id) == endpoint.id))
    session.execute(delete(WebhookSecret).where(col(WebhookSecret.endpoint_id) == endpoint.id))
    session.delete(endpoint)
    session.flush()


# --- secrets -------------------------------------------------------------------------------------------------


def rotate_secret(
    endpoint_id: str,
    *,
    session: Session,
    workspace: str,
    overlap: timedelta,
    keyring: KeyRing,
    now: datetime | None = None,
) -> str:
    """Give an endpoint a new secret; current secrets keep signing for ``overlap``.

    Secrets that already expired are deleted. Rotating twice within the overlap shortens nothing: an older
    secret never outlives ``now + overlap``.

    Args:
        endpoint_id: The endpoint.
        session: Database session.
        workspace: The caller's workspace.
        overlap: How long the previous secrets stay valid (``timedelta(0)`` revokes them at once).
        keyring: Encrypts the new secret for storage.
        now: Current time (tests).

    Returns:
        The new plaintext secret, to show once.

    Raises:
        WebhookNotFoundError: If the endpoint does not exist or belongs to another workspace.
        ValueError: If ``overlap`` is negative.
    """
    if overlap < timedelta(0):
        raise ValueError("overlap must not be negative")
    endpoint = get_endpoint(endpoint_id, session=session, workspace=workspace)
    at = now or utcnow()
    until = at + overlap
    rows = session.scalars(select(WebhookSecret).where(col(WebhookSecret.endpoint_id) == endpoint.id))
    for row in rows:
        if row.expires_at is not None and row.expires_at <= at:
            session.delete(row)
        elif row.expires_at is None or row.expires_at > until:
            row.expires_at = until
            session.add(row)
    secret = new_secret()
    _add_secret(session, endpoint.id, secret, keyring=keyring, at=at)
    endpoint.updated_at = at
    session.add(endpoint)
    session.flush()
    return secret


def active_secrets(endpoint_id: str, *, session: Session, keyring: KeyRing, now: datetime | None = None) -> list[str]:
    """Return the secrets that sign deliveries now, newest first (one ``v1=`` each).

    Args:
        endpoint_id: The endpoint.
        session: Database session.
        keyring: Decrypts the stored secrets.
        now: Current time (tests).

    Returns:
        The plaintext secrets; for signing only, never for display.

    Raises:
        SecretDecryptError: A secret that no configured key opens (the key is missing from this process, or the
            row was tampered with); the delivery attempt fails and is retried on its schedule.
    """
    at = now or utcnow()
    rows = session.scalars(
        select(WebhookSecret)
        .where(col(WebhookSecret.endpoint_id) == endpoint_id)
        .order_by(col(WebhookSecret.created_at).desc(), col(WebhookSecret.id).desc())
    )
    return [reveal_secret(row, keyring=keyring) for row in rows if row.expires_at is None or row.expires_at > at]


# --- secrets at rest -------------------------------------------------------------------------------------------


def _secret_context(row: WebhookSecret) -> str:
    # The associated data: a ciphertext moved to another endpoint or row no longer decrypts.
    return f"webhook_secrets/{row.endpoint_id}/{row.id}"


def _add_secret(session: Session, endpoint_id: str, secret: str, *, keyring: KeyRing, at: datetime) -> WebhookSecret:
    row = WebhookSecret(endpoint_id=endpoint_id, secret="", created_at=at)
    session.add(row)
    session.flush()  # the row id is part of the associated data
    row.secret = keyring.encrypt(secret, context=_secret_context(row))
    session.add(row)
    session.flush()
    return row


def reveal_secret(row: WebhookSecret, *, keyring: KeyRing) -> str:
    """The plaintext of a stored secret (a row from before encryption is returned as it is).

    Raises:
        SecretDecryptError: The row is encrypted but no configured key opens it for this row.
    """
    if KeyRing.key_id_of(row.secret) is None:
        return row.secret
    return keyring.decrypt(row.secret, context=_secret_context(row))


@dataclass(frozen=True, slots=True)
class ReencryptReport:
    """What :func:`reencrypt_secrets` did: rows rewritten under the primary key, already under it, plaintext."""

    reencrypted: int
    current: int
    plaintext: int


def reencrypt_secrets(*, session: Session, keyring: KeyRing, plaintext_only: bool = False) -> ReencryptReport:
    """Rewrite every stored secret under the primary key (and encrypt rows still in plaintext).

    Each row is decrypted with whichever configured key it names and encrypted again with a fresh nonce. Rows
    already under the primary key are left alone, so running it again changes nothing. The caller's transaction
    makes it all or nothing: one row that no key opens aborts it, before anything is written.

    Args:
        session: Database session (commit to keep the result).
        keyring: Primary key to write, and the keys to read.
        plaintext_only: Only encrypt plaintext rows (what every process start does).

    Returns:
        The counts.

    Raises:
        SecretDecryptError: A row that no configured key opens (the message names its id and key id).
    """
    reencrypted = current = plaintext = 0
    query = select(WebhookSecret).order_by(col(WebhookSecret.id))
    if plaintext_only:
        query = query.where(col(WebhookSecret.secret).not_like(f"{FORMAT_VERSION}:%"))
    for row in session.scalars(query.with_for_update()):
        kid = KeyRing.key_id_of(row.secret)
        if kid == keyring.primary_id:
            current += 1
            continue
        try:
            secret = reveal_secret(row, keyring=keyring)
        except SecretDecryptError as exc:
            raise SecretDecryptError(f"webhook secret {row.id}: {exc}") from None
        if kid is None:
            plaintext += 1
        else:
            reencrypted += 1
        row.secret = keyring.encrypt(secret, context=_secret_context(row))
        session.add(row)
    session.flush()
    return ReencryptReport(reencrypted=reencrypted, current=current, plaintext=plaintext)


def secrets_by_key(*, session: Session) -> dict[str, int]:
    """How many stored secrets each key id holds (``plaintext`` for rows not yet encrypted)."""
    counts: dict[str, int] = {}
    for stored in session.scalars(select(col(WebhookSecret.secret))):
        kid = KeyRing.key_id_of(stored) or "plaintext"
        counts[kid] = counts.get(kid, 0) + 1
    return counts


# --- matching and deliveries ---------------------------------------------------------------------------------


def matching_endpoints(
    *,
    session: Session,
    workspace: str,
    event_type: str,
    run_kind: str | None = None,
    repository: str | None = None,
) -> list[WebhookEndpoint]:
    """Return the enabled endpoints of a workspace that subscribe to an event.

    Args:
        session: Database session.
        workspace: The event's workspace.
        event_type: The event type (dotted or alias).
        run_kind: The run's kind, if the event belongs to a run.
        repository: The run's repository URL, if any.

    Returns:
        The endpoints, oldest first.

    Raises:
        ValueError: If the event type is unknown.
    """
    dotted = normalize_event_type(event_type)
    query = (
        select(WebhookEndpoint)
        .where(col(WebhookEndpoint.workspace) == workspace)
        .where(col(WebhookEndpoint.enabled).is_(True))
        .order_by(col(WebhookEndpoint.created_at), col(WebhookEndpoint.id))
    )
    # JSON list filters are evaluated here, not in SQL: the JSON operators differ between SQLite and
    # PostgreSQL, and a workspace has few endpoints.
    return [
        endpoint
        for endpoint in session.scalars(query)
        if endpoint_matches(endpoint, event_type=dotted, run_kind=run_kind, repository=repository)
    ]


def ensure_delivery(
    *,
    session: Session,
    endpoint: WebhookEndpoint,
    event_id: str,
    event_type: str,
    run_id: str | None = None,
    now: datetime | None = None,
) -> tuple[WebhookDelivery, bool]:
    """Create the delivery of an event to an endpoint unless it exists (safe under concurrency and retries).

    Args:
        session: Database session.
        endpoint: The endpoint.
        event_id: The event id.
        event_type: The event type (dotted or alias).
        run_id: The event's run, if any.
        now: Creation time (tests).

    Returns:
        The delivery and whether this call created it.
    """
    dotted = normalize_event_type(event_type)
    values = {
        "id": _new_id("wd_"),
        "endpoint_id": endpoint.id,
        "workspace": endpoint.workspace,
        "event_id": event_id,
        "event_type": dotted,
        "run_id": run_id,
        "status": DeliveryStatus.PENDING.value,
        "attempts": 0,
        "created_at": now or utcnow(),
    }
    # INSERT ... ON CONFLICT DO NOTHING: a second worker racing on the same event neither fails nor duplicates,
    # and the transaction stays usable (no IntegrityError to recover from).
    dialect = session.get_bind().dialect.name
    insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        insert_fn(WebhookDelivery)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
        .returning(col(WebhookDelivery.id))
    )
    # RETURNING yields a row only when this statement inserted (rowcount is not reliable across drivers).
    created = session.execute(statement).scalar_one_or_none() is not None
    delivery = session.scalars(
        select(WebhookDelivery)
        .where(col(WebhookDelivery.endpoint_id) == endpoint.id)
        .where(col(WebhookDelivery.event_id) == event_id)
        .execution_options(populate_existing=True)
    ).one()
    return delivery, created


def _delivery(delivery_id: str, *, session: Session) -> WebhookDelivery:
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        raise WebhookNotFoundError("webhook delivery")
    return delivery


def get_delivery(delivery_id: str, *, session: Session, workspace: str) -> WebhookDelivery:
    """Return a delivery of the workspace.

    Raises:
        WebhookNotFoundError: If it does not exist or belongs to another workspace.
    """
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.workspace != workspace:
        raise WebhookNotFoundError("webhook delivery")
    return delivery


def list_deliveries(
    endpoint_id: str, *, session: Session, workspace: str, limit: int = 100, status: DeliveryStatus | None = None
) -> list[WebhookDelivery]:
    """List an endpoint's deliveries, newest first.

    Raises:
        WebhookNotFoundError: If the endpoint does not exist or belongs to another workspace.
    """
    get_endpoint(endpoint_id, session=session, workspace=workspace)
    query = (
        select(WebhookDelivery)
        .where(col(WebhookDelivery.endpoint_id) == endpoint_id)
        .order_by(col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id).desc())
        .limit(max(1, min(limit, 1000)))
    )
    if status is not None:
        query = query.where(col(WebhookDelivery.status) == status.value)
    return list(session.scalars(query))


def list_attempts(delivery_id: str, *, session: Session, workspace: str) -> list[WebhookAttempt]:
    """List a delivery's attempts in order.

    Raises:
        WebhookNotFoundError: If the delivery does not exist or belongs to another workspace.
    """
    get_delivery(delivery_id, session=session, workspace=workspace)
    query = (
        select(WebhookAttempt)
        .where(col(WebhookAttempt.delivery_id) == delivery_id)
        .order_by(col(WebhookAttempt.attempt))
    )
    return list(session.scalars(query))


def record_attempt(
    delivery_id: str,
    *,
    session: Session,
    attempt: int,
    result: DeliveryResult,
    now: datetime | None = None,
) -> WebhookAttempt:
    """Record one attempt and copy its result onto the delivery.

    Recording the same attempt number again (an activity retried after a worker crash) overwrites that row
    instead of adding one. The delivery's status is not changed here; use the ``mark_*`` helpers.

    Args:
        delivery_id: The delivery.
        session: Database session.
        attempt: Attempt number, from 1.
        result: What :func:`~quantapilot.webhooks.sender.post_event` returned.
        now: Time of the attempt (tests).

    Returns:
        The attempt row.

    Raises:
        WebhookNotFoundError: If the delivery does not exist.
    """
    delivery = _delivery(delivery_id, session=session)
    at = now or utcnow()
    row = session.scalars(
        select(WebhookAttempt)
        .where(col(WebhookAttempt.delivery_id) == delivery_id)
        .where(col(WebhookAttempt.attempt) == attempt)
    ).one_or_none()
    if row is None:
        row = WebhookAttempt(delivery_id=delivery_id, attempt=attempt, outcome=result.outcome.value)
    row.outcome = result.outcome.value
    row.status_code = result.status_code
    row.latency_ms = result.latency_ms
    row.error = result.error
    row.at = at
    session.add(row)
    delivery.attempts = max(delivery.attempts, attempt)
    delivery.last_status_code = result.status_code
    delivery.last_latency_ms = result.latency_ms
    delivery.last_error = result.error
    session.add(delivery)
    session.flush()
    return row


def _endpoint_of(delivery: WebhookDelivery, *, session: Session) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
    if endpoint is None:  # pragma: no cover - the foreign key prevents it
        raise WebhookNotFoundError("webhook endpoint")
    return endpoint


def mark_delivered(delivery_id: str, *, session: Session, now: datetime | None = None) -> WebhookDelivery:
    """Mark a delivery delivered; a success also ends the endpoint's failing streak."""
    delivery = _delivery(delivery_id, session=session)
    at = now or utcnow()
    delivery.status = DeliveryStatus.DELIVERED.value
    delivery.delivered_at = at
    delivery.next_retry_at = None
    endpoint = _endpoint_of(delivery, session=session)
    endpoint.failing_since = None
    session.add_all([delivery, endpoint])
    session.flush()
    return delivery


def mark_retrying(
    delivery_id: str, *, session: Session, next_retry_at: datetime, now: datetime | None = None
) -> WebhookDelivery:
    """Keep a delivery pending until ``next_retry_at`` and start the endpoint's failing streak if needed."""
    delivery = _delivery(delivery_id, session=session)
    delivery.status = DeliveryStatus.PENDING.value
    delivery.next_retry_at = next_retry_at
    endpoint = _endpoint_of(delivery, session=session)
    if endpoint.failing_since is None:
        endpoint.failing_since = now or utcnow()
    session.add_all([delivery, endpoint])
    session.flush()
    return delivery


def mark_failed(delivery_id: str, *, session: Session, error: str | None = None) -> WebhookDelivery:
    """Give a delivery up (retries exhausted, or the URL is refused)."""
    delivery = _delivery(delivery_id, session=session)
    delivery.status = DeliveryStatus.FAILED.value
    delivery.next_retry_at = None
    if error is not None:
        delivery.last_error = error
    session.add(delivery)
    session.flush()
    return delivery


def mark_gone(delivery_id: str, *, session: Session, now: datetime | None = None) -> bool:
    """Mark a delivery gone (the receiver answered 410) and disable its endpoint.

    Returns:
        True if this call disabled the endpoint (record ``webhook.endpoint_disabled`` once, then).
    """
    delivery = _delivery(delivery_id, session=session)
    delivery.status = DeliveryStatus.GONE.value
    delivery.next_retry_at = None
    session.add(delivery)
    return disable_endpoint(delivery.endpoint_id, session=session, reason=DISABLED_GONE, now=now)


def mark_disabled(delivery_id: str, *, session: Session) -> WebhookDelivery:
    """Stop a delivery because its endpoint is disabled (it can still be redelivered later)."""
    delivery = _delivery(delivery_id, session=session)
    delivery.status = DeliveryStatus.DISABLED.value
    delivery.next_retry_at = None
    session.add(delivery)
    session.flush()
    return delivery


def redeliver(delivery_id: str, *, session: Session, workspace: str) -> WebhookDelivery:
    """Put a delivery back to pending so the delivery workflow sends it again (same event id).

    Attempts keep counting from where they were, so the log shows the history.

    Raises:
        WebhookNotFoundError: If it does not exist or belongs to another workspace.
    """
    delivery = get_delivery(delivery_id, session=session, workspace=workspace)
    delivery.status = DeliveryStatus.PENDING.value
    delivery.next_retry_at = None
    session.add(delivery)
    session.flush()
    return delivery


def record_own_event(
    endpoint: WebhookEndpoint,
    *,
    session: Session,
    event_id: str,
    event_type: str,
    payload: dict[str, Any],
    now: datetime | None = None,
) -> WebhookDelivery:
    """Keep an event about an endpoint in that endpoint's own delivery log, without sending it.

    Used for ``webhook.endpoint_disabled``: the endpoint it is about is disabled, so the event cannot reach it,
    and the workspace may have no other endpoint subscribed to it. The row (status ``disabled``, no attempts,
    the envelope in ``payload``) is the durable record operators find with the endpoint's deliveries; a
    redelivery after re-enabling sends it like any other. Recording the same event again changes nothing.

    Args:
        endpoint: The endpoint the event is about.
        session: Database session (the transaction that disabled the endpoint).
        event_id: The event id.
        event_type: The event type (dotted or alias).
        payload: The event's envelope, as delivered to subscribers.
        now: Time of the event (tests).

    Returns:
        The delivery row.
    """
    delivery, created = ensure_delivery(
        session=session, endpoint=endpoint, event_id=event_id, event_type=event_type, now=now
    )
    if created:
        delivery.status = DeliveryStatus.DISABLED.value
        delivery.payload = payload
        session.add(delivery)
        session.flush()
    return delivery


def disable_endpoint(endpoint_id: str, *, session: Session, reason: str, now: datetime | None = None) -> bool:
    """Disable an endpoint (worker side: 410, failing too long, unsafe URL).

    Returns:
        True if it was enabled before (so the caller records ``webhook.endpoint_disabled`` exactly once).
    """
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or not endpoint.enabled:
        return False
    endpoint.enabled = False
    endpoint.disabled_reason = reason
    endpoint.updated_at = now or utcnow()
    session.add(endpoint)
    session.flush()
    return True


def failing_too_long(endpoint: WebhookEndpoint, *, now: datetime | None = None) -> bool:
    """Tell whether an endpoint has been failing for :data:`~quantapilot.webhooks.schedule.DISABLE_AFTER`."""
    if endpoint.failing_since is None:
        return False
    return (now or utcnow()) - endpoint.failing_since >= DISABLE_AFTER


def is_terminal(outcome: DeliveryOutcome) -> bool:
    """Tell whether an attempt outcome ends the delivery (no further retry)."""
    return outcome is not DeliveryOutcome.RETRY
