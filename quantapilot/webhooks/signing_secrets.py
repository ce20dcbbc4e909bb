"""Signing secrets at rest: stored encrypted with the service's secret key, re-encrypted on key rotation.

Which secrets sign a delivery (rotation overlap) is decided in :mod:`quantapilot.webhooks.rotation`
(:func:`quantapilot.webhooks.rotation.active_secrets`); this module only stores and opens them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import select
from sqlmodel import Session, col

from quantapilot.secretbox import FORMAT_VERSION, KeyRing, SecretDecryptError
from quantapilot.webhooks.tables import WebhookSecret


class StoredSecret(Protocol):
    """What opening a stored secret reads of its row (a :class:`WebhookSecret`, or a Core row of those columns)."""

    @property
    def id(self) -> int | None:
        """The row id (part of the associated data)."""
        ...

    @property
    def endpoint_id(self) -> str:
        """The endpoint (part of the associated data)."""
        ...

    @property
    def secret(self) -> str:
        """The stored value: ciphertext, or plaintext from before encryption."""
        ...


def _secret_context(row: StoredSecret) -> str:
    # The associated data: a ciphertext moved to another endpoint or row no longer decrypts.
    return f"webhook_secrets/{row.endpoint_id}/{row.id}"


def add_secret(session: Session, endpoint_id: str, secret: str, *, keyring: KeyRing, at: datetime) -> WebhookSecret:
    """Store a new signing secret of an endpoint, encrypted under the primary key (flushes for the row id)."""
    row = WebhookSecret(endpoint_id=endpoint_id, secret="", created_at=at)
    session.add(row)
    session.flush()  # the row id is part of the associated data
    row.secret = keyring.encrypt(secret, context=_secret_context(row))
    session.add(row)
    session.flush()
    return row


def reveal_secret(row: StoredSecret, *, keyring: KeyRing) -> str:
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
