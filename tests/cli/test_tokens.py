"""`qp tokens create/list/revoke` on the service database, as an operator runs them."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import Engine

from quantapilot.settings import Settings
from quantapilot.tokens import ALL_SCOPES, hash_token, list_tokens, lookup_token
from tests.cli.terminal import run_in_terminal
from tests.drills.helpers import settings_env

QP = str(Path(sys.executable).with_name("qp"))


def qp(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = settings_env(settings) | {"COLUMNS": "250"}  # rich tables must not wrap ids in a pipe
    return subprocess.run([QP, "tokens", *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_cli_tokens_create_list_revoke(settings: Settings, engine: Engine) -> None:
    before = datetime.now(UTC)
    made = qp(
        settings, "create", "--workspace", "acme", "--subject", "ci-bot", "--scope", "runs:read", "--expires", "90d"
    )
    assert made.returncode == 0, made.stderr
    *info, plaintext = made.stdout.strip().splitlines()
    principal = lookup_token(engine, plaintext)
    assert principal is not None
    assert (principal.workspace, principal.subject, tuple(principal.scopes)) == ("acme", "ci-bot", ("runs:read",))
    token_id = info[0].split()[2]
    assert "workspace acme" in info[0] and "scopes runs:read" in info[0]

    listed = qp(settings, "list", "--workspace", "acme")
    assert listed.returncode == 0, listed.stderr
    assert token_id in listed.stdout and "ci-bot" in listed.stdout
    # The value is shown once, at creation: never listed, not even as its hash.
    assert plaintext not in listed.stdout and hash_token(plaintext) not in listed.stdout
    expires = next(line for line in listed.stdout.splitlines() if token_id in line)
    # The expiry's date is 90 days after the command ran, whichever side of midnight (UTC) the test is on.
    days = {(when + timedelta(days=90)).date().isoformat() for when in (before, datetime.now(UTC))}
    assert any(day in expires for day in days), (days, expires)
    assert qp(settings, "list", "--workspace", "other").stdout.count(token_id) == 0

    revoked = qp(settings, "revoke", token_id)
    assert revoked.returncode == 0, revoked.stderr
    assert lookup_token(engine, plaintext) is None
    again = qp(settings, "revoke", "tok_does_not_exist")
    assert again.returncode == 1 and "no token" in again.stderr


def test_cli_tokens_refuse_unknown_scope_and_bad_expiry(settings: Settings, engine: Engine) -> None:
    for args in (("--scope", "runs:everything"), ("--expires", "90x"), ("--expires", "d")):
        made = qp(settings, "create", *args)
        assert made.returncode == 2, (args, made.stdout, made.stderr)
        assert "Invalid value" in made.stderr, made.stderr


def listed_row(settings: Settings, workspace: str, token_id: str) -> str:
    listed = qp(settings, "list", "--workspace", workspace)
    assert listed.returncode == 0, listed.stderr
    return next(line for line in listed.stdout.splitlines() if token_id in line)


def test_cli_tokens_create_without_scope_refuses_without_terminal(settings: Settings, engine: Engine) -> None:
    env = settings_env(settings) | {"COLUMNS": "250"}
    made = subprocess.run(
        [QP, "tokens", "create", "--workspace", "noscope"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 2, made.stdout + made.stderr
    assert "--scope is required" in made.stderr
    assert "qp_" not in made.stdout  # no token was printed ...
    assert list_tokens(engine, workspace="noscope") == []  # ... nor created


def test_cli_tokens_create_without_scope_asks_on_terminal(settings: Settings, engine: Engine) -> None:
    env = settings_env(settings) | {"COLUMNS": "250"}
    shown = run_in_terminal([QP, "tokens", "create", "--workspace", "asked"], env, b"2 docs:read\n")
    assert "1. runs:trigger" in shown and "8. telemetry:write" in shown  # the scopes were offered
    assert "Scopes (numbers or names; all for every scope): " in shown
    plaintext = shown.strip().splitlines()[-1]
    principal = lookup_token(engine, plaintext)
    assert principal is not None
    assert principal.scopes == frozenset({"runs:read", "docs:read"})


def test_cli_tokens_expire_by_default(settings: Settings, engine: Engine) -> None:
    made = qp(settings, "create", "--workspace", "expiry", "--scope", "runs:read")
    assert made.returncode == 0, made.stderr
    token_id = made.stdout.split()[2]
    expected = (datetime.now(UTC) + timedelta(days=90)).date().isoformat()
    assert expected in made.stdout.splitlines()[0]
    assert expected in listed_row(settings, "expiry", token_id)

    forever = qp(settings, "create", "--workspace", "expiry", "--scope", "all", "--expires", "never")
    assert forever.returncode == 0, forever.stderr
    forever_id = forever.stdout.split()[2]
    assert "never expires" in forever.stdout
    (row,) = [t for t in list_tokens(engine, workspace="expiry") if t.id == forever_id]
    assert row.expires_at is None and tuple(row.scopes) == ALL_SCOPES
