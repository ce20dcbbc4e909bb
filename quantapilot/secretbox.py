"""Secrets at rest: AES-256-GCM under a key the database never holds.

A stored value is ``v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`` with a fresh random 96-bit nonce per
value. The caller names what the value belongs to (``context``, e.g. the table, row and slot), which becomes the
GCM associated data: a ciphertext copied onto another row no longer decrypts. The key id is derived from the key
(the first 8 bytes of an HMAC of a fixed label), so operators never name keys and a value says which key opens it.

Keys come from ``QP_SECRET_KEY`` (32 bytes, base64 or hex) or ``QP_SECRET_KEY_FILE`` (one key a line, the first
the primary) plus ``QP_SECRET_PREVIOUS_KEYS`` (decrypt only, for rotation). In development and tests without
either, a key file is generated in the state directory (mode 0600); in production a missing key stops the
process. Neither the key nor a decrypted value ever appears in an error message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from quantapilot.settings import Settings

FORMAT_VERSION: Final = "v1"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
KEY_FILE_NAME: Final = "secret.key"
_KEY_ID_LABEL: Final = b"quantapilot secret key id"


class SecretKeyError(RuntimeError):
    """The secret key is missing or malformed (a configuration error: the process must not start)."""


class SecretDecryptError(ValueError):
    """A stored value that no configured key opens (wrong key, unknown key id, tampered or moved value)."""


def key_id(material: bytes) -> str:
    """The public id of a key: 16 hex digits of an HMAC under the key, which reveal nothing about it."""
    return hmac.new(material, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


def parse_key(text: str, *, source: str) -> bytes:
    """Decode a 32-byte key written as hex (64 digits) or base64 (standard or URL-safe, padding optional).

    Args:
        text: The key as configured.
        source: Where it came from (a setting name or file), for the error message.

    Raises:
        SecretKeyError: The text is not a 32-byte key. The message never contains the text.
    """
    value = text.strip()
    if len(value) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass  # 64 characters of base64 are not a 32-byte key either; reported below
    try:
        decoded = base64.b64decode(value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != KEY_BYTES:
        raise SecretKeyError(f"{source} is not a {KEY_BYTES}-byte key in base64 or hex (see `qp secrets generate-key`)")
    return decoded


def generate_key() -> str:
    """A new random key, URL-safe base64 without padding (what ``QP_SECRET_KEY`` takes)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii").rstrip("=")


class KeyRing:
    """The primary key (encrypts) and older keys (decrypt only), by key id.

    Args:
        keys: Raw 32-byte keys, the primary first. Repeated keys are ignored.
    """

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise SecretKeyError("no secret key configured")
        self._keys: dict[str, AESGCM] = {}
        for material in keys:
            if len(material) != KEY_BYTES:
                raise SecretKeyError(f"a secret key must be {KEY_BYTES} bytes")
            self._keys.setdefault(key_id(material), AESGCM(material))
        self.primary_id = key_id(keys[0])

    def __repr__(self) -> str:
        return f"KeyRing(primary={self.primary_id!r}, keys={self.key_ids!r})"

    @property
    def key_ids(self) -> list[str]:
        """Ids of every configured key, the primary first."""
        return list(self._keys)

    def encrypt(self, plaintext: str, *, context: str) -> str:
        """Encrypt ``plaintext`` under the primary key, bound to ``context``.

        Args:
            plaintext: The secret.
            context: What the value belongs to (e.g. ``webhook_secrets/<endpoint>/<row id>``); decrypting needs
                the same context.

        Returns:
            The stored form ``v1:<key id>:<base64url(nonce ‖ ciphertext)>``.
        """
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self.primary_id].encrypt(nonce, plaintext.encode("utf-8"), self._aad(context))
        body = base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")
        return f"{FORMAT_VERSION}:{self.primary_id}:{body}"

    def decrypt(self, stored: str, *, context: str) -> str:
        """Decrypt a value :meth:`encrypt` made for the same ``context``.

        Raises:
            SecretDecryptError: Not our format, a key id that is not configured, or a value that fails
                authentication (wrong key, tampered, or moved to another row). The message names the key id only.
        """
        kid = self.key_id_of(stored)
        if kid is None:
            raise SecretDecryptError("not an encrypted value")
        aead = self._keys.get(kid)
        if aead is None:
            raise SecretDecryptError(f"encrypted under key {kid}, which is not configured (QP_SECRET_PREVIOUS_KEYS)")
        body = stored.split(":", 2)[2]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            plain = aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], self._aad(context))
        except (binascii.Error, ValueError, InvalidTag):
            raise SecretDecryptError(f"value under key {kid} does not authenticate for its row") from None
        return plain.decode("utf-8")

    @staticmethod
    def key_id_of(stored: str) -> str | None:
        """The key id of an encrypted value, or None when the value is not in our format (e.g. plaintext)."""
        parts = stored.split(":", 2)
        if len(parts) != 3 or parts[0] != FORMAT_VERSION or len(parts[1]) != 16:
            return None
        return parts[1]

    @staticmethod
    def _aad(context: str) -> bytes:
        return f"quantapilot/{FORMAT_VERSION}/{context}".encode()


def default_key_file(settings: Settings) -> Path:
    """Where development keeps its generated key: ``<QP_STATE_DIR>/secret.key``."""
    return settings.state_dir / KEY_FILE_NAME


def _read_key_file(path: Path) -> list[bytes]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SecretKeyError(f"cannot read the secret key file {path}: {exc.strerror or type(exc).__name__}") from None
    lines = [line.strip() for line in text.splitlines()]
    keys = [parse_key(line, source=f"line {n} of {path}") for n, line in enumerate(lines, 1) if line and line[0] != "#"]
    if not keys:
        raise SecretKeyError(f"the secret key file {path} holds no key")
    return keys


def _generate_key_file(path: Path) -> None:
    """Write a new key file atomically, owner-only; a process that loses the race keeps the winner's file.

    The key goes into a private temporary file that is then hard-linked into place: the link either creates the
    complete file or fails because it exists, so no process ever reads a half-written key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("# QuantaPilot secret key (encrypts webhook secrets). Keep it; never put it in the database.\n")
            out.write(generate_key() + "\n")
        with contextlib.suppress(FileExistsError):  # another process won the race: its key stands
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_keyring(settings: Settings) -> KeyRing:
    """Build the key ring from the settings (generating the development key file when needed).

    Order: ``QP_SECRET_KEY`` or the keys of ``QP_SECRET_KEY_FILE`` (first line primary), then
    ``QP_SECRET_PREVIOUS_KEYS``. Without either setting, development and tests use (and on first start create)
    ``<QP_STATE_DIR>/secret.key``; production refuses.

    Raises:
        SecretKeyError: No key in production, both ``QP_SECRET_KEY`` and ``QP_SECRET_KEY_FILE`` set, an
            unreadable file, or a malformed key.
    """
    if settings.secret_key and settings.secret_key_file:
        raise SecretKeyError("set QP_SECRET_KEY or QP_SECRET_KEY_FILE, not both")
    if settings.secret_key:
        keys = [parse_key(settings.secret_key, source="QP_SECRET_KEY")]
    elif settings.secret_key_file:
        keys = _read_key_file(settings.secret_key_file)
    elif settings.environment == "production":
        raise SecretKeyError(
            "QP_SECRET_KEY or QP_SECRET_KEY_FILE is required in production (webhook secrets are encrypted with it); "
            "make one with `qp secrets generate-key`"
        )
    else:
        path = default_key_file(settings)
        if not path.exists():
            _generate_key_file(path)
        keys = _read_key_file(path)
    previous = [
        parse_key(text, source=f"QP_SECRET_PREVIOUS_KEYS[{n}]") for n, text in enumerate(settings.secret_previous_keys)
    ]
    return KeyRing([*keys, *previous])
