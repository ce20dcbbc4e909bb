"""Signing-secret rotation: which secrets sign a delivery now, and giving an endpoint a new one.

A rotation lets the previous secrets keep signing beside the new one for an overlap, so receivers can switch
without losing deliveries; the secrets themselves are stored and opened by :mod:`quantapilot.webhooks.signing_secrets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlmodel import Session, col

from quantapilot.db import utcnow
from quantapilot.secretbox import KeyRing, SecretDecryptError
from quantapilot.webhooks.endpoints import get_endpoint
from quantapilot.webhooks.signing import new_secret
from quantapilot.webhooks.signing_secrets import add_secret, reveal_secret
from quantapilot.webhooks.tables import WebhookSecret


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
    add_secret(session, endpoint.id, secret, keyring=keyring, at=at)
    endpoint.updated_at = at
    session.add(endpoint)
    session.flush()
    return secret


def _signing_rows(session: Session, endpoint_ids: Sequence[str], at: datetime) -> list[WebhookSecret]:
    """The unexpired secret rows of these endpoints, newest first within each (the order they sign in)."""
    rows = session.scalars(
        select(WebhookSecret)
        .where(col(WebhookSecret.endpoint_id).in_(list(endpoint_ids)))
        .order_by(col(WebhookSecret.created_at).desc(), col(WebhookSecret.id).desc())
    )
    return [row for row in rows if row.expires_at is None or row.expires_at > at]


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
            row was tampered with); :func:`~quantapilot.webhooks.delivery.prepare_attempt` then fails the delivery
            and disables the endpoint (``secret_undecryptable``).
    """
    rows = _signing_rows(session, [endpoint_id], now or utcnow())
    return [reveal_secret(row, keyring=keyring) for row in rows]


def active_secrets_of(
    endpoint_ids: Sequence[str], *, session: Session, keyring: KeyRing, now: datetime | None = None
) -> dict[str, list[str]]:
    """:func:`active_secrets` of several endpoints in one query (the outbox dispatcher's claim).

    An endpoint is left out when one of its secrets cannot be decrypted, or when it has none: the caller then
    prepares its attempts one by one, where :func:`active_secrets` raises or returns ``[]`` and the delivery
    state machine decides what follows, so nothing is decided here.

    Returns:
        Endpoint id -> its signing secrets, newest first, for the endpoints that have some.
    """
    grouped: dict[str, list[WebhookSecret]] = {}
    for row in _signing_rows(session, endpoint_ids, now or utcnow()):
        grouped.setdefault(row.endpoint_id, []).append(row)
    opened: dict[str, list[str]] = {}
    for endpoint_id, rows in grouped.items():
        try:
            opened[endpoint_id] = [reveal_secret(row, keyring=keyring) for row in rows]
        except SecretDecryptError:
            continue
    return opened
