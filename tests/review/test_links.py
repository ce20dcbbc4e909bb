"""Review links and /ui/ session cookies as values: signing, tampering, expiry, the key file, form tokens."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from quantapilot.events.envelope import EventEnvelope
from quantapilot.review.links import (
    LinkError,
    LinkKeyMissing,
    ReviewLink,
    key_file,
    link_expiry,
    load_link_key,
    mint_token,
    verify_token,
    with_review_url,
)
from quantapilot.review.session import form_token, form_token_ok, open_session, seal_session
from quantapilot.settings import Settings

KEY = b"k" * 48
SOON = datetime.now(UTC) + timedelta(hours=1)


def test_links_round_trip_and_bind_every_claim() -> None:
    link = ReviewLink("ws", "rr_" + "a" * 32, "anchor", "carol", SOON.replace(microsecond=0))
    assert verify_token(KEY, mint_token(KEY, link)) == link
    holder = ReviewLink("ws", link.run_id, "anchor", None, link.expires_at)
    assert verify_token(KEY, mint_token(KEY, holder)).approver is None
    assert mint_token(KEY, link) != mint_token(KEY, holder)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
        lambda t: t.replace("v1.", "v2.", 1),
        lambda t: t.split(".")[0] + "." + t.split(".")[2],
        lambda t: "",
        lambda t: t + "x" * 3000,
    ],
)
def test_links_refuse_altered_tokens(mutate) -> None:
    token = mint_token(KEY, ReviewLink("ws", "rr_1", "anchor", None, SOON))
    with pytest.raises(LinkError):
        verify_token(KEY, mutate(token))


def test_links_refuse_other_keys_and_expired_links() -> None:
    token = mint_token(KEY, ReviewLink("ws", "rr_1", "anchor", None, SOON))
    with pytest.raises(LinkError, match="altered or signed with another key"):
        verify_token(b"x" * 48, token)
    with pytest.raises(LinkError, match="expired"):
        verify_token(KEY, token, now=SOON + timedelta(seconds=1))


def test_links_key_file_generated_once_owner_only(tmp_path: Path) -> None:
    settings = Settings(environment="test", state_dir=tmp_path)
    key = load_link_key(settings)
    assert len(key) >= 32 and load_link_key(settings) == key
    assert stat.S_IMODE(key_file(settings).stat().st_mode) == 0o600
    assert load_link_key(settings.model_copy(update={"review_link_key": "z" * 40})) == b"z" * 40
    with pytest.raises(LinkKeyMissing):
        load_link_key(Settings(environment="production", state_dir=tmp_path / "prod"))
    assert not (tmp_path / "prod").exists()


def test_links_review_url_is_deterministic_and_only_on_gate_requested(tmp_path: Path) -> None:
    settings = Settings(environment="test", state_dir=tmp_path, public_base_url="https://qp.example/")
    at = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    envelope = EventEnvelope(
        id="evt_1", type="gate.requested", created_at=at, workspace="ws", run_id="rr_1", data={"gate": "anchor"}
    )
    first, second = with_review_url(settings, envelope), with_review_url(settings, envelope)
    url = first.data["review_url"]
    assert url == second.data["review_url"] and url.startswith("https://qp.example/ui/runs/rr_1/gates/anchor?t=v1.")
    link = verify_token(load_link_key(settings), url.split("?t=", 1)[1], now=at)
    assert link.expires_at == at + timedelta(days=7) and link.approver is None
    assert "review_url" not in envelope.data  # the stored envelope is untouched
    other = envelope.model_copy(update={"type": "gate.decided"})
    assert with_review_url(settings, other) is other
    production = settings.model_copy(update={"environment": "production"})
    assert "review_url" not in with_review_url(production, envelope).data


def test_links_review_url_expires_at_the_gate_deadline_when_sooner(tmp_path: Path) -> None:
    settings = Settings(environment="test", state_dir=tmp_path, review_link_ttl=3600)
    at = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)

    def expiry(data: dict[str, object]) -> datetime:
        envelope = EventEnvelope(id="e", type="gate.requested", created_at=at, workspace="ws", run_id="rr_1", data=data)
        url = with_review_url(settings, envelope).data["review_url"]
        return verify_token(load_link_key(settings), url.split("?t=", 1)[1], now=at).expires_at

    soon = {"gate": "anchor", "timeout_s": 90.5, "deadline": "2026-12-01T10:01:30.500000Z"}
    assert expiry(soon) == at + timedelta(seconds=90)  # whole seconds, never after the deadline
    late = {"gate": "anchor", "timeout_s": 7200, "deadline": "2026-12-01T12:00:00Z"}
    assert expiry(late) == at + timedelta(hours=1)  # the TTL is shorter
    assert expiry({"gate": "anchor", "deadline": "not a time"}) == at + timedelta(hours=1)
    assert link_expiry(at, settings, deadline=at + timedelta(minutes=5)) == at + timedelta(minutes=5)


def test_session_cookie_hides_the_token_and_expires() -> None:
    token = "qp_" + "s" * 40
    cookie = seal_session(KEY, token, ttl_s=60)
    assert token not in cookie and "sss" not in cookie
    assert open_session(KEY, cookie) == token
    assert open_session(KEY, cookie, now=10**11) is None
    assert open_session(b"o" * 48, cookie) is None
    assert open_session(KEY, cookie[:-2] + ("AA" if cookie[-2:] != "AA" else "BB")) is None
    assert open_session(KEY, "not-base64!!") is None


def test_form_tokens_are_bound_to_what_they_act_for() -> None:
    token = form_token(KEY, "session:abc")
    assert form_token_ok(KEY, "session:abc", token)
    assert not form_token_ok(KEY, "session:abd", token)
    assert not form_token_ok(KEY, "session:abc", None)
    assert not form_token_ok(b"o" * 48, "session:abc", token)
