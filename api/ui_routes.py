"""The review page of a gate and its decision form (``/ui/runs/{run_id}/gates/{gate}``), declared in endpoints.py.

The decision goes through the same workflow update as ``POST /v1/runs/{id}/gates/{gate}/decision``, so the run
applies its own rules (approver list, self-approval) whichever way a decision comes; it is recorded with source
``link`` (a signed link) or ``ui`` (a signed-in person). A link bound to another run or gate, an expired or altered
one, and a decision on a gate no longer pending answer a page that says so, and change nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from api.keys import ENGINE, SETTINGS, TEMPORAL
from api.runs import is_not_found, run_handle
from api.ui_pages import Viewer, docs_href, message, render, review_key, viewer
from quantapilot.errors import ApiError
from quantapilot.models import GateDecisionInput, GateRecord, GateStatus, RunStatus, approval_progress_text
from quantapilot.review.links import review_path
from quantapilot.review.page import LINK_HOLDER, approval_count, find_gate, may_decide, review_data, who_may_decide
from quantapilot.review.session import form_token, form_token_ok

MAX_REASON = 2000


async def run_status(
    request: web.Request, workspace: str, run_id: str, *, timeout_s: float | None = None
) -> RunStatus | None:
    """The run's status in ``workspace`` (None: no such run there)."""
    try:
        handle = run_handle(request.app[TEMPORAL], workspace, run_id)
    except ApiError:
        return None  # a malformed run id
    timeout = timedelta(seconds=timeout_s or request.app[SETTINGS].temporal_rpc_timeout_s)
    try:
        status: RunStatus = await handle.query("status", result_type=RunStatus, rpc_timeout=timeout)
    except RPCError as err:
        if is_not_found(err):
            return None
        raise
    return status


def _link_mismatch(view: Viewer, run_id: str, gate: str) -> bool:
    return view.link is not None and (view.link.run_id != run_id or view.link.gate != gate)


def decides_as(view: Viewer, gate: GateRecord) -> tuple[str | None, str]:
    """The subject the viewer would decide as (None: may only look), and why not when None."""
    if view.link is not None:
        if view.link.approver is not None:
            return view.link.approver, ""
        if not gate.approvers:
            return LINK_HOLDER, ""
        return None, "This gate names its approvers: decide with your own review link, or sign in."
    assert view.principal is not None
    if may_decide(gate, view.principal):
        return view.principal.subject, ""
    return None, "Your token may not decide this gate (it needs gates:decide and to be one of its approvers)."


def _stale(request: web.Request, gate: GateRecord) -> web.Response:
    who = gate.decided_by or "nobody"
    return message(
        request,
        409,
        "Already decided",
        f"Gate {gate.name} is {gate.status.value}: already decided by {who}"
        + (f" ({gate.reason})" if gate.reason else "")
        + ". Nothing was changed.",
    )


async def _resolve(request: web.Request, token: str | None) -> tuple[Viewer, RunStatus, GateRecord] | web.Response:
    run_id, gate_name = request.match_info["run_id"], request.match_info["gate"]
    view = await viewer(request, token)
    if isinstance(view, web.Response):
        return view
    if _link_mismatch(view, run_id, gate_name):
        return message(request, 403, "This review link is for another gate", "Nothing was changed.")
    status = await run_status(request, view.workspace, run_id)
    gate = find_gate(status, gate_name) if status is not None else None
    if status is None or gate is None:
        return message(request, 404, "Not found", "There is no such run or gate in your workspace.")
    return view, status, gate


async def review_page(request: web.Request) -> web.Response:
    """The gate's review page: the run, the gate, what is approved, and the decision form when the viewer may."""
    resolved = await _resolve(request, request.query.get("t"))
    if isinstance(resolved, web.Response):
        return resolved
    view, status, gate = resolved
    if view.link is not None and gate.status != GateStatus.PENDING:
        # A link is for deciding a pending gate; once decided it only says so.
        return _stale(request, gate)
    settings = request.app[SETTINGS]
    data = await review_data(request.app[ENGINE], settings.run_workdir, status, gate)
    subject, why_not = decides_as(view, gate)
    form: dict[str, Any] | None = None
    if subject is not None and gate.status == GateStatus.PENDING:
        form = {
            "action": review_path(status.run_id, gate.name) + "/decision",
            "csrf": form_token(review_key(request), view.bound),
            "link": view.token,
            "as_subject": "the holder of this link" if subject == LINK_HOLDER else subject,
        }
    return render(
        request,
        "review.html",
        data=data,
        gate=gate,
        who=who_may_decide(gate),
        form=form,
        view_only_reason=why_not,
        page_href=lambda slug, version: docs_href(slug, version, view.token),
    )


async def _submit(request: web.Request, view: Viewer, run_id: str, decision: GateDecisionInput) -> GateRecord | str:
    """Send the decision update; the run's refusal as text, or the gate as decided."""
    handle = run_handle(request.app[TEMPORAL], view.workspace, run_id)
    timeout = timedelta(seconds=request.app[SETTINGS].temporal_rpc_timeout_s * 3)
    try:
        record: GateRecord = await handle.execute_update(
            "submit_gate_decision", decision, result_type=GateRecord, rpc_timeout=timeout
        )
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        return cause.message if isinstance(cause, ApplicationError) else "the run refused the decision"
    except RPCError as err:
        if is_not_found(err):
            return "the run is no longer running"
        raise
    return record


async def decide(request: web.Request) -> web.Response:
    """The decision form's target: check the form token, then decide through the run's update."""
    form = await request.post()
    token = form.get("t")
    resolved = await _resolve(request, token if isinstance(token, str) and token else None)
    if isinstance(resolved, web.Response):
        return resolved
    view, status, gate = resolved
    csrf = form.get("csrf")
    if not form_token_ok(review_key(request), view.bound, csrf if isinstance(csrf, str) else None):
        return message(
            request, 403, "Form refused", "This form expired or came from another site. Nothing was changed."
        )
    choice = form.get("decision")
    if choice not in ("approve", "reject"):
        return message(request, 400, "No decision", "Choose Approve or Reject.")
    raw_reason = form.get("reason")
    reason = raw_reason.strip()[:MAX_REASON] if isinstance(raw_reason, str) else ""
    back = review_path(status.run_id, gate.name) if view.link is None else None
    if choice == "reject" and not reason:
        return message(request, 422, "A reason is needed", "Say why you reject the gate.", back=back)
    if gate.status != GateStatus.PENDING:
        return _stale(request, gate)
    subject, why_not = decides_as(view, gate)
    if subject is None:
        return message(request, 403, "You may not decide this gate", why_not + " Nothing was changed.")
    principal = view.principal
    decision = GateDecisionInput(
        gate=gate.name,
        approved=choice == "approve",
        reason=reason or None,
        decided_by=subject,
        source="link" if view.link is not None else "ui",
        decided_by_token=principal.token_id if principal else None,
        decider_scopes=sorted(principal.scopes) if principal else [],
    )
    outcome = await _submit(request, view, status.run_id, decision)
    if isinstance(outcome, str):
        fresh = await run_status(request, view.workspace, status.run_id)
        current = find_gate(fresh, gate.name) if fresh else None
        if current is not None and current.status != GateStatus.PENDING:
            return _stale(request, current)
        return message(request, 403, "The run refused the decision", outcome + ". Nothing was changed.", back=back)
    verb = "approved" if decision.approved else "rejected"
    recorded = f"Recorded: {subject} {verb} gate {gate.name} of run {status.run_id} via {decision.source}" + (
        f" ({reason})." if reason else "."
    )
    if outcome.status == GateStatus.PENDING:
        # N-of-M: this approval counted but the gate still waits for more; the page must not say it passed.
        progress = approval_progress_text(approval_count(outcome), max(outcome.required_approvals, 1))
        return message(
            request,
            200,
            f"Approval recorded: {progress}",
            f"{recorded} Gate {gate.name} now has {progress}; the run waits for the rest.",
            kind="ok",
            back=back,
        )
    return message(request, 200, f"Gate {gate.name} {verb}", recorded, kind="ok", back=back)
