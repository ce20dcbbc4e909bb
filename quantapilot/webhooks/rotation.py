"""Signing-secret rotation: which secrets sign a delivery now, and giving an endpoint a new one.

A rotation lets the previous secrets keep signing beside the new one for an overlap, so receivers can switch
without losing deliveries; the secrets themselves are stored and opened by :mod:`quantapilot.webhooks.signing_secrets`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlmodel import Session, col

from quantapilot.db import utcnow
from quantapilot.secretbox import KeyRing
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
    at = now or utcnow()
    rows = session.scalars(
        select(WebhookSecret)
        .where(col(WebhookSecret.endpoint_id) == endpoint_id)
        .order_by(col(WebhookSecret.created_at).desc(), col(WebhookSecret.id).desc())
    )
    return [reveal_secret(row, keyring=keyring) for row in rows if row.expires_at is None or row.expires_at > at]
