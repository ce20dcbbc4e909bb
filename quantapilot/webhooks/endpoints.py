"""Webhook endpoints: the event types they can subscribe to, their filters, CRUD and matching events to them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Final, NamedTuple, Protocol

from sqlalchemy import bindparam, delete, func, select, text
from sqlmodel import Session, col

from quantapilot.db import utcnow
from quantapilot.secretbox import KeyRing
from quantapilot.webhooks.signing import new_secret
from quantapilot.webhooks.signing_secrets import add_secret
from quantapilot.webhooks.tables import (
    ENDPOINTS_TABLE,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookSecret,
    new_id,
    workspace_row,
)
from quantapilot.webhooks.urlsafety import check_url_syntax

# The dotted event types consumers can subscribe to.
KNOWN_EVENT_TYPES: Final[tuple[str, ...]] = (
    "run.started",
    "documentation.generated",
    "gate.requested",
    "gate.approval_recorded",
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


class EndpointLimitError(Exception):
    """A workspace already holds the most endpoints it may (``QP_WEBHOOK_MAX_ENDPOINTS``).

    Attributes:
        limit: The limit that refused the new endpoint.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"a workspace holds at most {limit} webhook endpoints; delete one first")
        self.limit = limit


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


class EndpointFilters(Protocol):
    """What matching reads of an endpoint: its filters (a :class:`WebhookEndpoint` or an :class:`EndpointMatch`)."""

    @property
    def event_types(self) -> Sequence[str]:
        """Dotted types to receive; empty for all."""
        ...

    @property
    def run_kinds(self) -> Sequence[str]:
        """Run kinds to receive; empty for all."""
        ...

    @property
    def repositories(self) -> Sequence[str]:
        """Normalised repository URLs to receive; empty for all."""
        ...


class EndpointMatch(NamedTuple):
    """An enabled endpoint as fan-out reads it: the columns it matches and addresses deliveries by, no ORM object.

    Attributes:
        id: The endpoint's id.
        workspace: Its workspace.
        event_types: Its type filter (dotted; empty for all).
        run_kinds: Its run-kind filter (empty for all).
        repositories: Its repository filter (normalised; empty for all).
    """

    id: str
    workspace: str
    event_types: list[str]
    run_kinds: list[str]
    repositories: list[str]


def endpoint_matches(
    endpoint: EndpointFilters, *, event_type: str, run_kind: str | None, repository: str | None
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
    max_endpoints: int | None = None,
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
        max_endpoints: How many endpoints the workspace may hold, this one included; None for no limit.
        now: Creation time (tests).

    Returns:
        The endpoint and the plaintext secret; show the secret to the caller once, never again.

    Raises:
        UnsafeUrlError: If the URL is refused (a ``ValueError``).
        ValueError: If a filter is invalid (unknown event type, too many items).
        EndpointLimitError: If the workspace already holds ``max_endpoints`` endpoints (roll back: the new row
            was flushed).
    """
    check_url_syntax(url, allow_private=allow_private)
    at = now or utcnow()
    endpoint = WebhookEndpoint(
        id=new_id("we_"),
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
    if max_endpoints is not None:
        _lock_workspace_endpoints(session, workspace)
    session.add(endpoint)
    session.flush()  # the secret row references the endpoint
    if max_endpoints is not None and count_endpoints(session=session, workspace=workspace) > max_endpoints:
        raise EndpointLimitError(max_endpoints)
    add_secret(session, endpoint.id, secret, keyring=keyring, at=at)
    return endpoint, secret


def _lock_workspace_endpoints(session: Session, workspace: str) -> None:
    """Serialise endpoint creation per workspace until the transaction ends, so the limit holds under races.

    PostgreSQL: a transaction-scoped advisory lock on the workspace (READ COMMITTED alone would let two
    transactions each count the other's row out). SQLite needs none: the new row is flushed before counting,
    which takes the database's single write lock, so a concurrent creator counts only after this one committed.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": f"webhook_endpoints:{workspace}"}
        )


def count_endpoints(*, session: Session, workspace: str) -> int:
    """How many endpoints a workspace holds (enabled or not)."""
    query = select(func.count()).select_from(WebhookEndpoint).where(col(WebhookEndpoint.workspace) == workspace)
    return int(session.scalar(query) or 0)


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
    return workspace_row(session, WebhookEndpoint, endpoint_id, workspace=workspace, what="webhook endpoint")


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


# Built once: every stored event runs it, and building a statement (its clauses, then its cache key) per call cost
# about as much as executing it. Five columns, not whole rows: fan-out constructs no ORM object per endpoint.
_ENDPOINT_COLUMNS = ENDPOINTS_TABLE.c
ENABLED_IN_WORKSPACE = (
    select(
        _ENDPOINT_COLUMNS.id,
        _ENDPOINT_COLUMNS.workspace,
        _ENDPOINT_COLUMNS.event_types,
        _ENDPOINT_COLUMNS.run_kinds,
        _ENDPOINT_COLUMNS.repositories,
    )
    .where(_ENDPOINT_COLUMNS.workspace == bindparam("workspace"))
    .where(_ENDPOINT_COLUMNS.enabled.is_(True))
    .order_by(_ENDPOINT_COLUMNS.created_at, _ENDPOINT_COLUMNS.id)
)


def matching_endpoints(
    *,
    session: Session,
    workspace: str,
    event_type: str,
    run_kind: str | None = None,
    repository: str | None = None,
) -> list[EndpointMatch]:
    """Return the enabled endpoints of a workspace that subscribe to an event.

    Args:
        session: Database session.
        workspace: The event's workspace.
        event_type: The event type (dotted or alias).
        run_kind: The run's kind, if the event belongs to a run.
        repository: The run's repository URL, if any.

    Returns:
        The endpoints' ids, workspaces and filters, oldest first.

    Raises:
        ValueError: If the event type is unknown.
    """
    dotted = normalize_event_type(event_type)
    if session.autoflush:
        # What an ORM query does first, and a Core one does not: an endpoint disabled in this transaction but not
        # flushed yet must not match. Nothing to write costs nothing.
        session.flush()
    # JSON list filters are evaluated here, not in SQL: the JSON operators differ between SQLite and
    # PostgreSQL, and a workspace has few endpoints.
    rows = session.execute(ENABLED_IN_WORKSPACE, {"workspace": workspace})
    return [
        endpoint
        for endpoint in map(EndpointMatch._make, rows)
        if endpoint_matches(endpoint, event_type=dotted, run_kind=run_kind, repository=repository)
    ]
