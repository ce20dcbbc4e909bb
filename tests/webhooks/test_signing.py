"""Signature creation and verification, including rotation, tolerance and garbage headers."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from quantapilot.webhooks.signing import SIGNATURE_HEADER, new_secret, sign, verify_signature

BODY = b'{"id":"ev_1","type":"run.started"}'
NOW = 1_700_000_000


def _expected(secret: str, t: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def test_signing_header_format_matches_documented_hmac() -> None:
    header = sign(["whsec_a"], BODY, timestamp=NOW)
    assert header == f"t={NOW},v1={_expected('whsec_a', NOW, BODY)}"


def test_signing_one_v1_per_secret_in_order() -> None:
    header = sign(["new", "old"], BODY, timestamp=NOW)
    assert header.split(",") == [
        f"t={NOW}",
        f"v1={_expected('new', NOW, BODY)}",
        f"v1={_expected('old', NOW, BODY)}",
    ]


def test_signing_refuses_no_secrets() -> None:
    with pytest.raises(ValueError, match="secret"):
        sign([], BODY, timestamp=NOW)


def test_signing_verify_accepts_valid_and_case_insensitive_header() -> None:
    header = sign(["s1"], BODY, timestamp=NOW)
    assert verify_signature("s1", {SIGNATURE_HEADER: header}, BODY, now=NOW)
    assert verify_signature("s1", {"x-vc-signature": header}, BODY, now=NOW)
    assert verify_signature("s1", {"X-VC-SIGNATURE": header}, BODY, now=NOW + 10)


def test_signing_verify_rejects_wrong_secret_and_tampered_body() -> None:
    header = sign(["s1"], BODY, timestamp=NOW)
    assert not verify_signature("s2", {SIGNATURE_HEADER: header}, BODY, now=NOW)
    assert not verify_signature("s1", {SIGNATURE_HEADER: header}, BODY + b" ", now=NOW)
    # Moving the timestamp without re-signing breaks the HMAC.
    forged = header.replace(f"t={NOW}", f"t={NOW + 1}")
    assert not verify_signature("s1", {SIGNATURE_HEADER: forged}, BODY, now=NOW)


def test_signing_rotation_both_secrets_verify() -> None:
    header = sign(["new", "old"], BODY, timestamp=NOW)
    assert verify_signature("new", {SIGNATURE_HEADER: header}, BODY, now=NOW)
    assert verify_signature("old", {SIGNATURE_HEADER: header}, BODY, now=NOW)
    assert not verify_signature("other", {SIGNATURE_HEADER: header}, BODY, now=NOW)
    after_overlap = sign(["new"], BODY, timestamp=NOW)
    assert not verify_signature("old", {SIGNATURE_HEADER: after_overlap}, BODY, now=NOW)


def test_signing_tolerance_rejects_stale_and_future() -> None:
    header = {SIGNATURE_HEADER: sign(["s"], BODY, timestamp=NOW)}
    assert verify_signature("s", header, BODY, now=NOW + 300)
    assert not verify_signature("s", header, BODY, now=NOW + 301)
    assert verify_signature("s", header, BODY, now=NOW - 300)
    assert not verify_signature("s", header, BODY, now=NOW - 301)
    assert verify_signature("s", header, BODY, now=NOW + 3000, tolerance=3600)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "t=,v1=",
        f"t={NOW}",
        "v1=abcd",
        f"t=abc,v1={'0' * 64}",
        f"t=-5,v1={'0' * 64}",
        f"t={NOW},t={NOW},v1={'0' * 64}",
        f"t={NOW},v1=\u00e9\u00e9",
        "t=" + "9" * 5000 + ",v1=00",
        "=,=,=",
        f"t={NOW};v1=00",
        "t=\uff11\uff12\uff13,v1=00",  # fullwidth digits,
    ],
)
def test_signing_verify_garbage_is_false_not_error(value: str) -> None:
    assert verify_signature("s", {SIGNATURE_HEADER: value}, BODY, now=NOW) is False


def test_signing_verify_missing_header_or_empty_secret() -> None:
    header = sign(["s"], BODY, timestamp=NOW)
    assert not verify_signature("s", {}, BODY, now=NOW)
    assert not verify_signature("", {SIGNATURE_HEADER: header}, BODY, now=NOW)


def test_signing_verify_uses_clock_by_default() -> None:
    import time

    header = sign(["s"], BODY, timestamp=int(time.time()))
    assert verify_signature("s", {SIGNATURE_HEADER: header}, BODY)
    stale = sign(["s"], BODY, timestamp=int(time.time()) - 3600)
    assert not verify_signature("s", {SIGNATURE_HEADER: stale}, BODY)


def test_signing_new_secret_is_prefixed_random_and_long() -> None:
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(secret) >= len("whsec_") + 43
        assert all(c.isalnum() or c in "-_" for c in secret.removeprefix("whsec_"))
