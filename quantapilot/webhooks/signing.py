"""Webhook request signatures: ``X-VC-Signature`` and the Standard Webhooks headers, built in one place.

Every delivery carries two signatures of the same body at the same Unix timestamp (:func:`signature_headers`):

- ``X-VC-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]``: HMAC-SHA256 of ``f"{t}."`` followed by the raw body,
  keyed with the endpoint's secret string (its UTF-8 bytes); the format Stripe's verifier reads. Consumers
  verify with :func:`verify_signature`, deliberately dependency-free so it can be copied into a receiver.
- Standard Webhooks (https://www.standardwebhooks.com): ``webhook-id`` (the event id, stable across retries,
  so consumers drop duplicates by it), ``webhook-timestamp`` (the same ``t``) and ``webhook-signature:
  v1,<base64 HMAC-SHA256 of f"{id}.{t}." + body>[ v1,<...>...]``. Its key is the same secret bytes; a
  Standard Webhooks library takes them as ``"whsec_" + base64(key)``, which :func:`standard_secret` gives
  (the mapping lives only in :func:`standard_key`).

During a secret rotation every still-valid secret contributes one ``v1`` entry to each header, so a consumer
holding either the old or the new secret accepts the request.
"""

from __future__ import annotations

import base64
import hmac
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence

SIGNATURE_HEADER = "X-VC-Signature"
STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"  # noqa: S105 - a public prefix, not a secret
SIGNATURE_SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300.0

# A header longer than this is garbage, not a rotation with many secrets; refusing it early bounds the work.
_MAX_HEADER_LEN = 4096


def new_secret() -> str:
    """Create a new endpoint signing secret.

    Returns:
        ``"whsec_"`` followed by 32 random bytes, URL-safe base64 encoded.
    """
    return SECRET_PREFIX + _secrets.token_urlsafe(32)


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    signed = f"{timestamp}.".encode() + body
    # hmac.digest: the one-shot C path (no HMAC object built per signature), the same bytes as hmac.new(...).
    return hmac.digest(secret.encode(), signed, "sha256").hex()


def sign(secrets: Sequence[str], body: bytes, *, timestamp: int) -> str:
    """Build the ``X-VC-Signature`` header value for ``body``.

    Args:
        secrets: The endpoint's valid secrets, newest first; one ``v1=`` entry is written per secret.
        body: The exact request body bytes that will be sent.
        timestamp: Signing time as Unix seconds.

    Returns:
        The header value ``t=<timestamp>,v1=<hex>[,v1=<hex>...]``.

    Raises:
        ValueError: If ``secrets`` is empty (an unsigned request would be indistinguishable from a forgery).
    """
    if not secrets:
        raise ValueError("at least one secret is required to sign")
    parts = [f"t={int(timestamp)}"]
    parts.extend(f"{SIGNATURE_SCHEME}={_digest(secret, int(timestamp), body)}" for secret in secrets)
    return ",".join(parts)


def standard_key(secret: str) -> bytes:
    """The Standard Webhooks HMAC key of an endpoint secret: the secret string's UTF-8 bytes.

    The one definition of the mapping. It is the key ``X-VC-Signature`` uses too, so one stored secret serves
    both schemes. The secret as shown (``whsec_`` followed by URL-safe base64) is NOT the Standard Webhooks
    form: a Standard Webhooks library would base64-decode it into other bytes; hand it :func:`standard_secret`.
    """
    return secret.encode()


def standard_secret(secret: str) -> str:
    """The form of an endpoint secret that Standard Webhooks libraries take: ``"whsec_" + base64(key)``.

    Args:
        secret: The endpoint secret (as returned when created or rotated).

    Returns:
        ``"whsec_"`` followed by the standard (padded) base64 of :func:`standard_key`; decoding it yields exactly
        the key deliveries are signed with.
    """
    return SECRET_PREFIX + base64.b64encode(standard_key(secret)).decode("ascii")


def sign_standard(secrets: Sequence[str], body: bytes, *, msg_id: str, timestamp: int) -> str:
    """Build the Standard Webhooks ``webhook-signature`` value for ``body``.

    Args:
        secrets: The endpoint's valid secrets, newest first; one ``v1,`` entry is written per secret.
        body: The exact request body bytes that will be sent.
        msg_id: The ``webhook-id`` value (the event id).
        timestamp: The ``webhook-timestamp`` value, Unix seconds.

    Returns:
        ``v1,<base64>[ v1,<base64>...]`` (space separated, as the specification says).

    Raises:
        ValueError: If ``secrets`` is empty.
    """
    if not secrets:
        raise ValueError("at least one secret is required to sign")
    signed = f"{msg_id}.{int(timestamp)}.".encode() + body
    entries = (
        base64.b64encode(hmac.digest(standard_key(secret), signed, "sha256")).decode("ascii") for secret in secrets
    )
    return " ".join(f"{SIGNATURE_SCHEME},{entry}" for entry in entries)


def signature_headers(secrets: Sequence[str], body: bytes, *, msg_id: str, timestamp: int) -> dict[str, str]:
    """All the signature headers of one delivery attempt: ``X-VC-Signature`` and the Standard Webhooks three.

    Args:
        secrets: The endpoint's valid secrets, newest first (each signs in both schemes).
        body: The exact request body bytes that will be sent.
        msg_id: The event id (``webhook-id``; the same on every attempt).
        timestamp: Signing time as Unix seconds, shared by both schemes.

    Returns:
        The four headers.

    Raises:
        ValueError: If ``secrets`` is empty.
    """
    return {
        SIGNATURE_HEADER: sign(secrets, body, timestamp=timestamp),
        STANDARD_ID_HEADER: msg_id,
        STANDARD_TIMESTAMP_HEADER: str(int(timestamp)),
        STANDARD_SIGNATURE_HEADER: sign_standard(secrets, body, msg_id=msg_id, timestamp=timestamp),
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # HTTP header names are case-insensitive; plain dicts are not, so look the name up by hand.
    wanted = name.lower()
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == wanted:
            return value if isinstance(value, str) else None
    return None


def parse_signature_header(value: str) -> tuple[int, list[str]] | None:
    """Split a signature header into its timestamp and ``v1`` signatures.

    Args:
        value: The header value.

    Returns:
        ``(timestamp, [hex, ...])``, or None when the value is malformed (no single integer ``t``, no ``v1``).
    """
    if len(value) > _MAX_HEADER_LEN:
        return None
    timestamp: int | None = None
    signatures: list[str] = []
    for item in value.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            return None
        key, val = key.strip(), val.strip()
        if key == "t":
            # A second t= would let an attacker choose which one a sloppy verifier reads; refuse it.
            if timestamp is not None or not val.isascii() or not val.isdigit():
                return None
            timestamp = int(val)
        elif key == SIGNATURE_SCHEME and val:
            signatures.append(val)
        # Unknown schemes are ignored so a future v2 can be added next to v1 without breaking consumers.
    if timestamp is None or not signatures:
        return None
    return timestamp, signatures


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Check that a webhook request was signed with ``secret`` recently.

    Args:
        secret: The endpoint secret the consumer holds.
        headers: The request headers (looked up case-insensitively).
        body: The raw request body, exactly as received (before any JSON parsing).
        tolerance: Maximum age, and maximum clock skew into the future, of the signature in seconds; bounds
            replays of a captured request.
        now: Current Unix time; defaults to the system clock.

    Returns:
        True when the timestamp is within ``tolerance`` and any ``v1`` entry matches. Any malformed input
        yields False; the function never raises on garbage.
    """
    try:
        value = _header(headers, SIGNATURE_HEADER)
        if not value or not secret:
            return False
        parsed = parse_signature_header(value)
        if parsed is None:
            return False
        timestamp, signatures = parsed
        current = time.time() if now is None else now
        if abs(current - timestamp) > tolerance:
            return False
        expected = _digest(secret, timestamp, body).encode()
        matched = False
        for candidate in signatures:
            # Compare every entry (no early exit) so timing does not reveal which position matched.
            matched |= hmac.compare_digest(expected, candidate.encode("ascii", "replace"))
        return matched
    except (AttributeError, TypeError, ValueError, OverflowError):
        return False
