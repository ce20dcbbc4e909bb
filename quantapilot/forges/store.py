"""Pull request records of the ``git`` forge: numbered per repository, one per run, head and base."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Column, ForeignKey, Integer, String, UniqueConstraint, cast, func, insert, literal
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from quantapilot.db import session_scope, utcnow
from quantapilot.forges.base import PullRequest

# Attempts at taking the next number when concurrent creators race for it (PostgreSQL reads the same MAX in
# both transactions; the unique constraint turns the loser's insert into an IntegrityError and a retry).
_NUMBER_ATTEMPTS = 20


class PullRequestRecord(SQLModel, table=True):
    """A pull request kept by the ``git`` forge."""

    __tablename__ = "pull_requests"
    __table_args__ = (
        UniqueConstraint("repo_url", "number", name="uq_pull_requests_repo_number"),
        # A retried open for the same run finds this row instead of creating a second pull request.
        UniqueConstraint("repo_url", "head", "base", "run_id", name="uq_pull_requests_repo_head_base_run"),
    )

    id: int | None = Field(default=None, primary_key=True)
    repo_url: str = Field(index=True)
    number: int
    head: str
    base: str
    title: str
    body: str = ""
    state: str = "open"
    url: str
    run_id: str = Field(index=True)
    merge_sha: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    merged_at: datetime | None = None

    def to_model(self) -> PullRequest:
        """Return the forge-neutral view of this record."""
        return PullRequest.model_validate(
            {
                "number": self.number,
                "head": self.head,
                "base": self.base,
                "title": self.title,
                "state": self.state,
                "url": self.url,
                "merge_sha": self.merge_sha,
            }
        )


class PullRequestComment(SQLModel, table=True):
    """A comment on a ``git`` forge pull request."""

    __tablename__ = "pull_request_comments"

    id: int | None = Field(default=None, primary_key=True)
    pull_request_id: int = Field(
        sa_column=Column(Integer, ForeignKey("pull_requests.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    body: str
    created_at: datetime = Field(default_factory=utcnow)


def pull_request_url(repo_url: str, number: int) -> str:
    """Return the url-like reference of pull request ``number`` (``<repo_url>#pr-<number>``)."""
    return f"{repo_url}#pr-{number}"


def find_pull_request(
    *, session: Session, repo_url: str, head: str, base: str, run_id: str
) -> PullRequestRecord | None:
    """Return the pull request a run opened from ``head`` into ``base``, if any."""
    stmt = select(PullRequestRecord).where(
        col(PullRequestRecord.repo_url) == repo_url,
        col(PullRequestRecord.head) == head,
        col(PullRequestRecord.base) == base,
        col(PullRequestRecord.run_id) == run_id,
    )
    return session.exec(stmt).first()


def get_pull_request(*, session: Session, repo_url: str, number: int) -> PullRequestRecord | None:
    """Return pull request ``number`` of ``repo_url``, if any."""
    stmt = select(PullRequestRecord).where(
        col(PullRequestRecord.repo_url) == repo_url, col(PullRequestRecord.number) == number
    )
    return session.exec(stmt).first()


def get_or_create_pull_request(
    engine: Engine, *, repo_url: str, head: str, base: str, title: str, body: str, run_id: str
) -> PullRequestRecord:
    """Return the run's pull request from ``head`` into ``base``, creating it with the next number if needed.

    Takes the engine rather than a session because it runs its own short transactions: the number is taken
    in one ``INSERT ... SELECT MAX(number) + 1`` statement, and a unique violation (a concurrent creator took
    the number, or created this very pull request) is answered by looking again and retrying.

    Args:
        engine: Database engine.
        repo_url: Repository URL, as the run knows it.
        head: Source branch.
        base: Target branch.
        title: Title.
        body: Description.
        run_id: The run opening it.

    Returns:
        The existing or new record.
    """
    table = PullRequestRecord.__table__  # type: ignore[attr-defined]
    for _ in range(_NUMBER_ATTEMPTS):
        with session_scope(engine) as session:
            existing = find_pull_request(session=session, repo_url=repo_url, head=head, base=base, run_id=run_id)
            if existing is not None:
                return existing
        now = utcnow()
        next_number = func.coalesce(func.max(table.c.number), 0) + 1
        url_expr = literal(f"{repo_url}#pr-") + cast(next_number, String)
        source = sa_select(
            literal(repo_url),
            next_number,
            literal(head),
            literal(base),
            literal(title),
            literal(body),
            literal("open"),
            url_expr,
            literal(run_id),
            literal(now, table.c.created_at.type),
            literal(now, table.c.updated_at.type),
        ).where(table.c.repo_url == repo_url)
        stmt = insert(table).from_select(
            [
                "repo_url",
                "number",
                "head",
                "base",
                "title",
                "body",
                "state",
                "url",
                "run_id",
                "created_at",
                "updated_at",
            ],
            source,
        )
        try:
            with engine.begin() as conn:
                conn.execute(stmt)
        except IntegrityError:
            continue
    raise RuntimeError("could not assign a pull request number under contention")


def mark_merged(*, session: Session, record: PullRequestRecord, merge_sha: str) -> PullRequestRecord:
    """Record that ``record`` was merged as ``merge_sha``."""
    now = utcnow()
    record.state = "merged"
    record.merge_sha = merge_sha
    record.merged_at = now
    record.updated_at = now
    session.add(record)
    return record


def add_comment(*, session: Session, record: PullRequestRecord, body: str) -> PullRequestComment:
    """Add a comment to ``record``."""
    assert record.id is not None
    comment = PullRequestComment(pull_request_id=record.id, body=body)
    session.add(comment)
    session.flush()
    return comment


def list_comments(*, session: Session, record: PullRequestRecord) -> Sequence[PullRequestComment]:
    """Return the comments on ``record``, oldest first."""
    stmt = (
        select(PullRequestComment)
        .where(col(PullRequestComment.pull_request_id) == record.id)
        .order_by(col(PullRequestComment.id))
    )
    return session.exec(stmt).all()
