"""API tokens: random bearer tokens stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from quantapilot.db import ApiToken, utcnow

TOKEN_PREFIX = "qp_"  # noqa: S105 - a public prefix that lets scanners spot leaked tokens, not a secret
# The scopes of the seed (lifecycle:trigger, docs:read, telemetry:write) and ours.
ALL_SCOPES: tuple[str, ...] = (
    "runs:trigger",
    "runs:read",
    "runs:control",
    "gates:decide",
    "webhooks:manage",
    "lifecycle:trigger",
    "docs:read",
    "telemetry:write",
)


def hash_token(token: str) -> str:
    """SHA-256 of the token; 256 random bits need no slow hash, and equal-length hex compares in a lookup."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's workspace, subject and scopes."""

    token_id: str
    workspace: str
    subject: str
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        """Tell whether the token carries ``scope``."""
        return scope in self.scopes


def create_token(
    engine: Engine,
    *,
    workspace: str,
    subject: str,
    scopes: list[str] | tuple[str, ...] = ALL_SCOPES,
    expires_at: datetime | None = None,
) -> tuple[str, ApiToken]:
    """Create a token; the plaintext is returned once and never stored.

    Args:
        engine: Database engine.
        workspace: Workspace the token belongs to.
        subject: Who uses it (shown in gate decisions and logs).
        scopes: Scopes granted.
        expires_at: Optional expiry.

    Returns:
        The plaintext token and its stored row.
    """
    unknown = set(scopes) - set(ALL_SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes: {sorted(unknown)}")
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        id=f"tok_{uuid.uuid4().hex[:16]}",
        workspace=workspace,
        subject=subject,
        token_hash=hash_token(plaintext),
        scopes=list(scopes),
        expires_at=expires_at,
    )
    with Session(engine, expire_on_commit=False) as session:
        session.add(row)
        session.commit()
    return plaintext, row


def lookup_token(engine: Engine, plaintext: str, *, now: datetime | None = None) -> Principal | None:
    """Find the live token with this plaintext.

    Returns:
        The principal, or None for an unknown, revoked or expired token.
    """
    if not plaintext.startswith(TOKEN_PREFIX) or len(plaintext) > 200:
        return None
    with Session(engine) as session:
        row = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(plaintext))).first()
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None:
        expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
        if expires <= (now or utcnow()):
            return None
    return Principal(token_id=row.id, workspace=row.workspace, subject=row.subject, scopes=frozenset(row.scopes))


def revoke_token(engine: Engine, token_id: str) -> bool:
    """Revoke a token by id; returns False when there is no such token."""
    with Session(engine) as session:
        row = session.get(ApiToken, token_id)
        if row is None:
            return False
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            session.add(row)
            session.commit()
    return True


def list_tokens(engine: Engine, *, workspace: str | None = None) -> list[ApiToken]:
    """List tokens (hashes included, plaintexts never exist here)."""
    with Session(engine) as session:
        query = select(ApiToken)
        if workspace:
            query = query.where(ApiToken.workspace == workspace)
        return list(session.exec(query.order_by(col(ApiToken.created_at))))
