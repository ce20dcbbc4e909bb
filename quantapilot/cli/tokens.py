"""``qp tokens``: create, list and revoke API tokens, on the database directly (no API needed)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import click
from rich.table import Table

from quantapilot.cli.client import console, load_settings


@click.group()
def tokens() -> None:
    """Manage API tokens (works on the database directly)."""


#: Lifetime of a token made by `qp tokens create` without --expires; `--expires never` opts out explicitly.
DEFAULT_TOKEN_EXPIRY = "90d"  # noqa: S105 - a lifetime, not a secret


def _parse_expiry(value: str) -> datetime | None:
    if value == "never":
        return None
    units = {"d": "days", "h": "hours", "m": "minutes"}
    if not value or value[-1] not in units or not value[:-1].isdigit():
        raise click.BadParameter("use a number followed by d, h or m (e.g. 90d), or never")
    return datetime.now(UTC) + timedelta(**{units[value[-1]]: int(value[:-1])})


def _parse_scopes(answer: str) -> tuple[str, ...]:
    """Scopes from names or list numbers separated by spaces or commas, or ``all``."""
    from quantapilot.tokens import ALL_SCOPES

    words = answer.replace(",", " ").split()
    if words == ["all"]:
        return ALL_SCOPES
    chosen: list[str] = []
    for word in words:
        scope = ALL_SCOPES[int(word) - 1] if word.isdigit() and 1 <= int(word) <= len(ALL_SCOPES) else word
        if scope not in ALL_SCOPES:
            raise click.BadParameter(f"unknown scope {word[:40]!r}")
        if scope not in chosen:
            chosen.append(scope)
    if not chosen:
        raise click.BadParameter("name at least one scope")
    return tuple(chosen)


def _scopes_for(given: Sequence[str]) -> tuple[str, ...]:
    """The scopes to grant: as given (``all`` for every scope), else asked on a terminal, else refused."""
    from quantapilot.tokens import ALL_SCOPES

    if given:
        return ALL_SCOPES if tuple(given) == ("all",) else tuple(given)
    if not sys.stdin.isatty():
        # A script that forgets --scope must not get an all-powerful token by default.
        raise click.UsageError("--scope is required (no terminal to ask on): repeat --scope S, or --scope all")
    click.echo("Scopes a token can carry (grant only what its user needs)")
    for number, scope in enumerate(ALL_SCOPES, 1):
        click.echo(f"  {number}. {scope}")
    scopes: tuple[str, ...] = click.prompt("Scopes (numbers or names; all for every scope)", value_proc=_parse_scopes)
    return scopes


@tokens.command("create")
@click.option("--workspace", default="default", show_default=True)
@click.option("--subject", default="operator", show_default=True, help="Who uses the token.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    help="Scope to grant (repeatable), or all. Without it: asked on a terminal, refused otherwise.",
)
@click.option(
    "--expires", default=DEFAULT_TOKEN_EXPIRY, show_default=True, help="Lifetime such as 90d, 12h; never for none."
)
def tokens_create(workspace: str, subject: str, scopes: Sequence[str], expires: str) -> None:
    """Create a token and print it once."""
    from quantapilot.db import make_engine
    from quantapilot.migrate import ensure_schema
    from quantapilot.tokens import create_token

    expires_at = _parse_expiry(expires)
    granted = _scopes_for(scopes)
    engine = make_engine(load_settings().database_url)
    ensure_schema(engine, auto_migrate=load_settings().db_auto_migrate)
    try:
        plaintext, row = create_token(
            engine, workspace=workspace, subject=subject, scopes=granted, expires_at=expires_at
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    until = f"expires {row.expires_at:%Y-%m-%d %H:%M} UTC" if row.expires_at else "never expires"
    console.print(f"token id {row.id} (workspace {workspace}, scopes {' '.join(row.scopes)}, {until})")
    click.echo(plaintext)


@tokens.command("list")
@click.option("--workspace", default=None)
def tokens_list(workspace: str | None) -> None:
    """List tokens (never their values)."""
    from quantapilot.db import make_engine
    from quantapilot.migrate import ensure_schema
    from quantapilot.tokens import list_tokens

    engine = make_engine(load_settings().database_url)
    ensure_schema(engine, auto_migrate=load_settings().db_auto_migrate)
    table = Table("id", "workspace", "subject", "scopes", "expires", "revoked")
    for row in list_tokens(engine, workspace=workspace):
        table.add_row(
            row.id,
            row.workspace,
            row.subject,
            " ".join(row.scopes),
            str(row.expires_at or ""),
            str(row.revoked_at or ""),
        )
    console.print(table)


@tokens.command("revoke")
@click.argument("token_id")
def tokens_revoke(token_id: str) -> None:
    """Revoke a token by id."""
    from quantapilot.db import make_engine
    from quantapilot.tokens import revoke_token

    if not revoke_token(make_engine(load_settings().database_url), token_id):
        raise click.ClickException(f"no token {token_id}")
    console.print(f"revoked {token_id}")
