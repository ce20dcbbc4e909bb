"""Webhook secrets at rest, database-wide: encrypting old plaintext rows at start, re-encrypting on key rotation.

Every API and worker process calls :func:`encrypt_plaintext_secrets` when it starts, so a database from before
encryption is encrypted by the first process of the new version (rows written meanwhile by an older process are
encrypted by the next start or by ``qp secrets rotate-key``). :func:`rotate_key` is that command.
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import Engine

from quantapilot.db import session_scope
from quantapilot.secretbox import KeyRing
from quantapilot.webhooks.signing_secrets import ReencryptReport, reencrypt_secrets, secrets_by_key

log = logging.getLogger("quantapilot.secrets")


def encrypt_plaintext_secrets(engine: Engine, keyring: KeyRing) -> int:
    """Encrypt every webhook secret still stored in plaintext under the primary key; return how many."""
    with session_scope(engine) as session:
        report = reencrypt_secrets(session=session, keyring=keyring, plaintext_only=True)
    if report.plaintext:
        log.info(
            "encrypted %d webhook secrets stored in plaintext", report.plaintext, extra={"key_id": keyring.primary_id}
        )
    return report.plaintext


def rotate_key(engine: Engine, keyring: KeyRing) -> ReencryptReport:
    """Re-encrypt every webhook secret under the primary key, in one transaction (all rows or none)."""
    with session_scope(engine) as session:
        return reencrypt_secrets(session=session, keyring=keyring)


def key_usage(engine: Engine) -> dict[str, int]:
    """How many webhook secrets each key id holds (``plaintext`` for rows not yet encrypted)."""
    with session_scope(engine) as session:
        return secrets_by_key(session=session)
