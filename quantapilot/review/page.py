"""What a review page shows: the gate and who may still decide it, and what is being approved.

For the ``anchor`` gate that is the generated documentation (the pages the docs API serves, their Markdown
rendered again here with raw HTML escaped and unsafe links dropped) and the docs pull request's diff; for a
milestone gate, the milestone's steps (exit codes, output tails) and its branch's diff. Everything shown comes
from the repository and is untrusted: templates autoescape it, and Markdown goes through
:func:`quantapilot.docs.render.render_html` (``html=False``, safe link schemes only).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from sqlalchemy.engine import Engine
from sqlmodel import Session

from quantapilot.docs.render import render_html
from quantapilot.docs.store import PageSummary, get_page, list_pages, list_versions
from quantapilot.models import GateRecord, GateStatus, MilestoneRecord, RunStatus
from quantapilot.repos.policy import ANCHOR_GATE
from quantapilot.review.diff import Diff, branch_diff, run_worktree
from quantapilot.runs.budget import ModelCallRecord
from quantapilot.runs.contracts import project_name
from quantapilot.tokens import Principal

#: Pages rendered inline on a review page (the page list names all of them).
MAX_INLINE_PAGES: Final = 40
#: Who decides through a link that names no approver.
LINK_HOLDER: Final = "review-link"


@dataclass(frozen=True, slots=True)
class DocView:
    """One docs page as the review page shows it."""

    slug: str
    title: str
    version: str
    versions: list[str]
    html: str
    related: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReviewData:
    """Everything the review template needs besides the form."""

    status: RunStatus
    gate: GateRecord
    approvals: int
    required: int
    pages: list[PageSummary] = field(default_factory=list)
    docs: list[DocView] = field(default_factory=list)
    milestone: MilestoneRecord | None = None
    diff: Diff | None = None
    # The model calls behind what is approved: the documentation pages' (anchor) or the milestone's.
    model_calls: list[ModelCallRecord] = field(default_factory=list)


def find_gate(status: RunStatus, name: str) -> GateRecord | None:
    """The run's gate of that name."""
    return next((g for g in status.gates if g.name == name), None)


def approval_count(gate: GateRecord) -> int:
    """Distinct subjects that approved (a single-approval gate decided before ``approvals`` existed counts 1)."""
    subjects = {a.subject for a in gate.approvals if a.approved}
    if not subjects and gate.status == GateStatus.APPROVED:
        return 1
    return len(subjects)


def who_may_decide(gate: GateRecord) -> str:
    """The gate's approvers in words."""
    if not gate.approvers:
        return "anyone in the workspace with the gates:decide scope (or this gate's review link)"
    return ", ".join(gate.approvers)


def may_decide(gate: GateRecord, principal: Principal) -> bool:
    """Whether a signed-in person may decide the gate (the run's own rules still apply when they do)."""
    if not principal.has("gates:decide"):
        return False
    if not gate.approvers:
        return True
    return principal.subject in gate.approvers or any(f"scope:{s}" in gate.approvers for s in principal.scopes)


def render_doc(engine: Engine, workspace: str, slug: str, version: str | None) -> DocView | None:
    """One docs page of the workspace, rendered safely, or None."""
    with Session(engine) as session:
        record = get_page(session=session, workspace=workspace, slug=slug, version=version)
        if record is None:
            return None
        versions = list_versions(session=session, workspace=workspace, slug=slug)
    return DocView(
        slug=record.slug,
        title=record.title,
        version=record.version,
        versions=versions,
        html=render_html(record.markdown),
        related=[{"slug": str(r.get("slug", "")), "title": str(r.get("title", ""))} for r in record.related],
    )


def project_pages(engine: Engine, workspace: str, project: str | None) -> list[PageSummary]:
    """The workspace's docs pages (of one project when given)."""
    with Session(engine) as session:
        return list_pages(session=session, workspace=workspace, project=project)


def run_project(status: RunStatus) -> str | None:
    """The docs project of a repository run (None for a lifecycle run: its pages are the account's)."""
    return project_name(status.repo_url) if status.repo_url else None


def _docs(engine: Engine, status: RunStatus) -> tuple[list[PageSummary], list[DocView]]:
    project = run_project(status)
    if project is None:
        return [], []
    pages = project_pages(engine, status.workspace, project)
    views = [render_doc(engine, status.workspace, p.slug, None) for p in pages[:MAX_INLINE_PAGES]]
    return pages, [v for v in views if v is not None]


async def review_data(engine: Engine, workdir: Path, status: RunStatus, gate: GateRecord) -> ReviewData:
    """Gather what the review page of ``gate`` shows."""
    data = ReviewData(
        status=status, gate=gate, approvals=approval_count(gate), required=max(gate.required_approvals, 1)
    )
    repo = run_worktree(workdir, status.workspace, status.run_id)
    if gate.name == ANCHOR_GATE:
        pages, docs = await asyncio.to_thread(_docs, engine, status)
        pr = next((p for p in status.pull_requests if p.purpose == "docs"), None)
        head = pr.head if pr else status.docs_branch
        diff = await branch_diff(repo, base=pr.base if pr else status.branch or "", head=head) if head else None
        return replace(data, pages=pages, docs=docs, diff=diff, model_calls=list(status.model_calls))
    milestone = next((m for m in status.milestones if m.gate == gate.name or m.id == gate.name), None)
    if milestone is not None and milestone.branch:
        pr = next((p for p in status.pull_requests if p.head == milestone.branch), None)
        diff = await branch_diff(repo, base=pr.base if pr else status.branch or "", head=milestone.branch)
        return replace(data, milestone=milestone, diff=diff, model_calls=list(milestone.model_calls))
    return replace(data, milestone=milestone, model_calls=list(milestone.model_calls) if milestone else [])
