"""`qp tokens create/list/revoke` on the service database, as an operator runs them."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import Engine

from quantapilot.settings import Settings
from quantapilot.tokens import hash_token, lookup_token
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
