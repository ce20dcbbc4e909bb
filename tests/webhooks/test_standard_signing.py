"""The signature headers checked by the reference verifiers: ``standardwebhooks`` and Stripe's.

The reference implementations are the oracle here (not our own verifier), so a header our code both writes and
reads wrongly in the same way cannot pass.
"""

from __future__ import annotations

import base64
import time

import pytest
import standardwebhooks
import stripe

from quantapilot.webhooks.signing import (
    SIGNATURE_HEADER,
    STANDARD_ID_HEADER,
    STANDARD_SIGNATURE_HEADER,
    STANDARD_TIMESTAMP_HEADER,
    new_secret,
    sign_standard,
    signature_headers,
    standard_key,
    standard_secret,
)

BODY = b'{"id":"evt_1","type":"run.started"}'


def _headers(secrets: list[str], *, msg_id: str = "evt_1", timestamp: int | None = None) -> dict[str, str]:
    return signature_headers(
        secrets, BODY, msg_id=msg_id, timestamp=int(time.time()) if timestamp is None else timestamp
    )


def test_standard_headers_carry_id_timestamp_and_one_entry_per_secret() -> None:
    now = int(time.time())
    headers = _headers([new_secret(), new_secret()], timestamp=now)
    assert headers[STANDARD_ID_HEADER] == "evt_1"
    assert headers[STANDARD_TIMESTAMP_HEADER] == str(now)
    # The same instant in both schemes.
    assert headers[SIGNATURE_HEADER].startswith(f"t={now},")
    entries = headers[STANDARD_SIGNATURE_HEADER].split(" ")
    assert len(entries) == 2 and all(entry.startswith("v1,") for entry in entries)
    assert all(len(base64.b64decode(entry.removeprefix("v1,"), validate=True)) == 32 for entry in entries)


def test_standard_secret_decodes_to_the_signing_key() -> None:
    secret = new_secret()
    shown = standard_secret(secret)
    assert shown.startswith("whsec_")
    assert base64.b64decode(shown.removeprefix("whsec_"), validate=True) == standard_key(secret) == secret.encode()


def test_standard_reference_library_verifies_a_delivery() -> None:
    secret = new_secret()
    parsed = standardwebhooks.Webhook(standard_secret(secret)).verify(BODY, _headers([secret]))
    assert parsed == {"id": "evt_1", "type": "run.started"}


def test_standard_reference_library_verifies_with_either_secret_during_rotation() -> None:
    new, old = new_secret(), new_secret()
    headers = _headers([new, old])
    for secret in (new, old):
        standardwebhooks.Webhook(standard_secret(secret)).verify(BODY, headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(standard_secret(new_secret())).verify(BODY, headers)


def test_standard_reference_library_refuses_tampering_and_old_timestamps() -> None:
    secret = new_secret()
    hook = standardwebhooks.Webhook(standard_secret(secret))
    headers = _headers([secret])
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        hook.verify(BODY.replace(b"started", b"stopped"), headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        hook.verify(BODY, {**headers, STANDARD_ID_HEADER: "evt_2"})  # the id is signed too
    with pytest.raises(standardwebhooks.WebhookVerificationError, match="too old"):
        hook.verify(BODY, _headers([secret], timestamp=int(time.time()) - 3600))


def test_standard_secret_as_shown_is_not_the_standard_form() -> None:
    # Why the API returns a separate field: the plain secret, handed to a Standard Webhooks library, decodes
    # into other bytes (its alphabet is URL-safe base64) and nothing verifies.
    # (or, for some secrets, refuses to decode it at all).
    for _ in range(20):
        secret = new_secret()
        with pytest.raises((standardwebhooks.WebhookVerificationError, ValueError)):
            standardwebhooks.Webhook(secret).verify(BODY, _headers([secret]))


def test_standard_signing_refuses_no_secrets() -> None:
    with pytest.raises(ValueError, match="secret"):
        sign_standard([], BODY, msg_id="evt_1", timestamp=1)


def test_x_vc_signature_verifies_with_stripes_verifier_with_either_secret() -> None:
    new, old = new_secret(), new_secret()
    header = _headers([new, old])[SIGNATURE_HEADER]
    for secret in (new, old):
        assert stripe.WebhookSignature.verify_header(BODY, header, secret, tolerance=300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(BODY, header, new_secret(), tolerance=300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(BODY + b" ", header, new, tolerance=300)
    stale = _headers([new], timestamp=int(time.time()) - 3600)[SIGNATURE_HEADER]
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(BODY, stale, new, tolerance=300)
