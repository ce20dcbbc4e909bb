"""``qp secrets``: the key that encrypts webhook signing secrets at rest (docs/DEPLOY.md, "Secret key").

- ``qp secrets generate-key`` prints a new random key for ``QP_SECRET_KEY`` (or a line of ``QP_SECRET_KEY_FILE``).
- ``qp secrets status`` shows the configured key ids (primary first) and how many stored secrets each holds.
- ``qp secrets rotate-key`` re-encrypts every stored secret under the primary key (old keys must still be
  configured, as ``QP_SECRET_PREVIOUS_KEYS`` or later lines of the key file), and encrypts rows still in
  plaintext; all rows or none.

None of them ever prints a key or a secret, except ``generate-key`` its new key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from quantapilot.secretbox import KeyRing, SecretDecryptError, SecretKeyError, generate_key, load_keyring
from quantapilot.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def _keyring(settings: Settings) -> KeyRing:
    try:
        return load_keyring(settings)
    except SecretKeyError as exc:
        raise click.ClickException(str(exc)) from None


def _keyring_and_database() -> tuple[KeyRing, Engine]:
    """The configured key ring and the service database, migrated (imported late: ``qp --help`` stays fast)."""
    from quantapilot.db import make_engine
    from quantapilot.migrate import ensure_schema

    settings = Settings()
    keyring = _keyring(settings)
    engine = make_engine(settings.database_url)
    ensure_schema(engine, auto_migrate=settings.db_auto_migrate)
    return keyring, engine


@click.group()
def secrets() -> None:
    """Manage the key that encrypts webhook secrets at rest."""


@secrets.command("generate-key")
def generate_key_command() -> None:
    """Print a new random 32-byte key (URL-safe base64)."""
    click.echo(generate_key())


@secrets.command("status")
def status() -> None:
    """Show the configured key ids and how many stored secrets each one holds."""
    from quantapilot.webhooks.at_rest import key_usage

    keyring, engine = _keyring_and_database()
    usage = key_usage(engine)
    for kid in keyring.key_ids:
        role = "primary" if kid == keyring.primary_id else "previous"
        click.echo(f"key {kid} ({role}): {usage.pop(kid, 0)} secrets")
    for kid, count in sorted(usage.items()):
        # Plaintext rows, or rows under a key that is not configured (they cannot be decrypted here).
        click.echo(f"{'plaintext' if kid == 'plaintext' else f'key {kid} (not configured)'}: {count} secrets")


@secrets.command("rotate-key")
def rotate_key_command() -> None:
    """Re-encrypt every stored webhook secret under the primary key (configure the old key as a previous key)."""
    from quantapilot.webhooks.at_rest import rotate_key

    keyring, engine = _keyring_and_database()
    try:
        report = rotate_key(engine, keyring)
    except SecretDecryptError as exc:
        raise click.ClickException(f"nothing changed: {exc}") from None
    click.echo(
        f"key {keyring.primary_id}: re-encrypted {report.reencrypted} secrets, encrypted {report.plaintext} "
        f"plaintext ones, {report.current} already under it"
    )
