"""Every endpoint of the API, each declared once: the router, the contract, the scopes and the rate classes follow.

Adding an endpoint is one :class:`~api.registry.Endpoint` here, or for ``/v1/webhooks`` in
:mod:`api.webhook_endpoints` (and its handler): ``api/app.py`` mounts it, ``api/openapi.py`` documents it,
``api/auth.py`` knows whether it is public, ``api/ratelimit.py`` its rate class, and ``make schemas`` publishes its
bodies (``schemas/generate.py``). The order is the order of the OpenAPI document's paths and of the bodies in
``schemas/api.schema.json``.
"""

from __future__ import annotations

from pydantic import BaseModel

from api import (
    contract_routes,
    docs_routes,
    health_routes,
    lifecycle_routes,
    link_routes,
    metrics_routes,
    run_routes,
    ui_pages,
    ui_routes,
    ui_session_routes,
)
from api.event_log import MAX_SEQ
from api.registry import BODY_ERRORS, PUBLIC, RUN_PATH, Body, Endpoint, Handler, Page, Param, Registry
from api.webhook_endpoints import WEBHOOK_ENDPOINTS
from quantapilot.bodies import EmptyRequest, Health, OpenApiDocument, Readiness
from quantapilot.docs.views import DocsPage, DocsPageList
from quantapilot.events.log import EVENTS_PAGE
from quantapilot.lifecycle.models import LifecycleRunRequest
from quantapilot.lifecycle.telemetry_body import TelemetryBody
from quantapilot.models import GateRecord
from quantapilot.runs.contracts import RunList
from quantapilot.runs.http import (
    AccountEventList,
    BudgetRequest,
    CancelAccepted,
    EventList,
    GateDecisionRequest,
    GateLinkRequest,
    LifecycleRunAccepted,
    PauseRequest,
    ReviewLinkAnswer,
    RunAccepted,
    RunAcceptedDeprecated,
    RunRequest,
    RunStatusView,
    TelemetryAccepted,
)

RUN_ID = Param(
    "run_id",
    "path",
    {"type": "string", "maxLength": 64},
    "Run id (``rr_`` repository or ``lc_`` lifecycle, then 32 hex digits); anything else is 404.",
    required=True,
)
GATE = Param("gate", "path", {"type": "string", "minLength": 1, "maxLength": 100}, "Gate name.", required=True)
AFTER = Param(
    "after",
    "query",
    {"type": "integer", "minimum": 0, "maximum": MAX_SEQ, "default": 0},
    f"Return events with a sequence number greater than this (default 0); pages hold at most {EVENTS_PAGE}.",
)

RUN_TRIGGER_DESCRIPTION = (
    "Starts a durable repository run: clone, read quantapilot.yml, generate and lint docs, then the gated "
    "milestones. With an Idempotency-Key, the same key and body always answer with the same run."
)


def _control(
    action: str,
    handler: Handler,
    operation_id: str,
    summary: str,
    body: type[BaseModel] = EmptyRequest,
    *,
    required: bool = False,
    answer: type[BaseModel] = RunStatusView,
    status: int = 200,
) -> Endpoint:
    """A run control, ``POST /v1/runs/{run_id}/<action>``: scope ``runs:control``, 404 unknown, 409 refused.

    Args:
        action: The last path segment.
        handler: The route's handler.
        operation_id: Its OpenAPI operation id.
        summary: Its one-line summary.
        body: The request body's model (default: an empty body).
        required: Whether the body must be sent.
        answer: The success answer's model.
        status: The success status.
    """
    return Endpoint(
        "POST",
        f"/v1/runs/{{run_id}}/{action}",
        handler,
        "runs:control",
        operation_id,
        summary,
        "runs",
        status,
        answer,
        body=Body(body, required=required),
        params=(RUN_ID,),
        errors=(*BODY_ERRORS, 404, 409),
    )


_RUNS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST",
        "/v1/runs",
        run_routes.trigger_repo_run,
        "runs:trigger",
        "triggerRun",
        "Trigger a repository run",
        "runs",
        202,
        RunAccepted,
        body=Body(RunRequest),
        idempotency_key=True,
        rate="triggers",
        errors=BODY_ERRORS,
        description=RUN_TRIGGER_DESCRIPTION,
        success_headers=("Location",),
    ),
    Endpoint(
        "GET",
        "/v1/runs",
        run_routes.list_runs,
        "runs:read",
        "listRuns",
        "The workspace's runs, open ones first, newest first, with the gate each waits at",
        "runs",
        200,
        RunList,
        params=run_routes.RUN_LIST_PARAMS,
        errors=(400,),
        description=(
            "From Temporal visibility: only the caller's workspace (from the token). Open runs come first, newest "
            "first, then finished runs, the latest finished first. Pages follow next_page_token, which is bound to "
            "the workspace and the filters: a token that is not (tampered, another listing's) is 400, as are "
            "unknown, repeated or out-of-bounds parameters."
        ),
    ),
    Endpoint(
        "POST",
        RUN_PATH,
        run_routes.trigger_repo_run,
        "runs:trigger",
        "triggerRunSeedAlias",
        "Trigger a repository run (deprecated alias of POST /v1/runs)",
        "runs",
        202,
        RunAcceptedDeprecated,
        body=Body(RunRequest),
        idempotency_key=True,
        rate="triggers",
        errors=BODY_ERRORS,
        description=(
            f"The seed's path, kept as an alias of POST /v1/runs. {run_routes.run_alias_notice()} Responses carry "
            "Deprecation, Sunset and Link headers and a deprecationNotice field."
        ),
        deprecated=True,
        success_headers=("Location",),
    ),
    Endpoint(
        "GET",
        "/v1/runs/{run_id}",
        run_routes.get_run,
        "runs:read",
        "getRun",
        "A run's state, current step, gates, milestones and timestamps",
        "runs",
        200,
        RunStatusView,
        params=(RUN_ID,),
        errors=(404,),
    ),
    Endpoint(
        "GET",
        "/v1/runs/{run_id}/events",
        run_routes.run_events,
        "runs:read",
        "listRunEvents",
        "A run's ordered event log",
        "runs",
        200,
        EventList,
        params=(RUN_ID, AFTER),
        errors=(400, 404),
    ),
    Endpoint(
        "POST",
        "/v1/runs/{run_id}/gates/{gate}/decision",
        run_routes.decide_gate,
        "gates:decide",
        "decideGate",
        "Approve or reject a pending gate",
        "runs",
        200,
        GateRecord,
        body=Body(GateDecisionRequest),
        params=(RUN_ID, GATE),
        errors=(*BODY_ERRORS, 404, 409),
        description=(
            "The decision is recorded with who decided (the token's subject), when, from where and why. A gate "
            "may name its approvers; the token that triggered the run may not approve its own gates unless the "
            "gate allows self-approval (403). The same decision twice is idempotent; a gate that is not pending "
            "is 409."
        ),
    ),
    Endpoint(
        "POST",
        "/v1/runs/{run_id}/gates/{gate}/links",
        link_routes.mint_link,
        "gates:decide",
        "createGateReviewLink",
        "Mint a signed review link for a pending gate",
        "runs",
        201,
        ReviewLinkAnswer,
        body=Body(GateLinkRequest, required=False),
        params=(RUN_ID, GATE),
        errors=(*BODY_ERRORS, 404, 409, 503),
        description=(
            "The link opens the gate's review page (/ui/) without a token and expires after QP_REVIEW_LINK_TTL. "
            "With approver (one of the gate's approvers, when it names any) the link decides as that subject; "
            "without, it decides as its holder only when the gate names no approvers. Treat the URL as a secret."
        ),
    ),
    _control("pause", run_routes.pause_run, "pauseRun", "Pause a run (no new step starts)", PauseRequest),
    _control("resume", run_routes.resume_run, "resumeRun", "Resume a paused run"),
    _control(
        "budget",
        run_routes.raise_budget,
        "raiseRunBudget",
        "Raise a run's time budget, step attempts or model budgets (tokens, usd)",
        BudgetRequest,
        required=True,
    ),
    _control(
        "cancel", run_routes.cancel_run, "cancelRun", "Request a run's cancellation", answer=CancelAccepted, status=202
    ),
)

_LIFECYCLE: tuple[Endpoint, ...] = (
    Endpoint(
        "POST",
        "/v1/lifecycle/runs",
        lifecycle_routes.trigger_lifecycle_run,
        "lifecycle:trigger",
        "triggerLifecycleRun",
        "Run one value-lifecycle stage for one account",
        "lifecycle",
        202,
        LifecycleRunAccepted,
        body=Body(LifecycleRunRequest, parse=lifecycle_routes.parse_lifecycle_run),
        idempotency_key=True,
        rate="triggers",
        errors=BODY_ERRORS,
        description="Status, events, gates and controls of the run are the /v1/runs/{run_id} endpoints.",
        success_headers=("Location",),
    ),
    Endpoint(
        "POST",
        "/v1/telemetry/events",
        lifecycle_routes.ingest_telemetry,
        "telemetry:write",
        "ingestTelemetry",
        "Store one telemetry event or a batch of up to 1000",
        "lifecycle",
        202,
        TelemetryAccepted,
        body=Body(TelemetryBody, from_bytes=lifecycle_routes.parse_telemetry),
        idempotency_key=True,
        rate="telemetry",
        errors=(*BODY_ERRORS, 503),
        description=(
            "Each touched account's realization is refreshed (bursts coalesce per account). A retry stores "
            "nothing twice: events with an id already stored, and a batch whose Idempotency-Key was stored with "
            "the same body, count as duplicates; the same key with another body is 422 IDEMPOTENCY_KEY_REUSED."
        ),
    ),
    Endpoint(
        "GET",
        "/v1/accounts/{account_id}/events",
        lifecycle_routes.account_events,
        "runs:read",
        "listAccountEvents",
        "An account's realization event stream",
        "lifecycle",
        200,
        AccountEventList,
        params=(
            Param("account_id", "path", {"type": "string", "maxLength": 64}, "Account UUID.", required=True),
            AFTER,
        ),
        errors=(400, 404),
    ),
)

_DOCS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET",
        "/v1/docs/pages",
        docs_routes.list_docs_pages,
        "docs:read",
        "listDocsPages",
        "Docs pages of the caller's workspace with their versions",
        "docs",
        200,
        DocsPageList,
        params=(
            Param(
                "project",
                "query",
                {"type": "string", "minLength": 1, "maxLength": docs_routes.MAX_PROJECT_LENGTH},
                "Only this project.",
            ),
        ),
        errors=(422,),
    ),
    Endpoint(
        "GET",
        "/v1/docs/pages/{slug:.+}",
        docs_routes.get_docs_page,
        "docs:read",
        "getDocsPage",
        "One docs page: metadata, Markdown and HTML, related links",
        "docs",
        200,
        DocsPage,
        params=(
            Param(
                "slug",
                "path",
                {"type": "string", "minLength": 1, "maxLength": 300},
                "Page slug, a path such as accounts/<accountId>/realization; '..' and empty segments are 422.",
                required=True,
            ),
            Param(
                "version",
                "query",
                {"type": "string", "minLength": 1, "maxLength": 64},
                "A version label; default: the latest.",
            ),
        ),
        errors=(404, 422),
    ),
)

_SERVICE: tuple[Endpoint, ...] = (
    Endpoint("GET", "/healthz", health_routes.healthz, PUBLIC, "healthz", "Liveness", "service", 200, Health),
    Endpoint(
        "GET",
        "/readyz",
        health_routes.readyz,
        PUBLIC,
        "readyz",
        "Readiness: Temporal and the database answer",
        "service",
        200,
        Readiness,
        extra_success={503: Readiness},
    ),
    Endpoint(
        "GET",
        metrics_routes.METRICS_PATH,
        metrics_routes.metrics,
        PUBLIC,
        "metrics",
        "Prometheus metrics of this API process",
        "service",
        200,
        None,
        errors=(401, 404),
        media="text/plain",
        description=(
            "Requests by route and status, latencies. Open in development; with QP_METRICS_TOKEN it needs "
            "`Authorization: Bearer <metrics token>` (401 otherwise); with QP_METRICS_PORT it is served on that "
            "port instead (404 here), and in production without either it is not served (404)."
        ),
        mounted=metrics_routes.served_on_api_port,
    ),
    Endpoint(
        "GET",
        contract_routes.OPENAPI_PATH,
        contract_routes.openapi_document,
        PUBLIC,
        "openapi",
        "This document",
        "service",
        200,
        OpenApiDocument,
    ),
    Endpoint(
        "GET",
        contract_routes.API_PAGE_PATH,
        contract_routes.api_page,
        PUBLIC,
        "apiPage",
        "This document as a web page",
        "service",
        200,
        None,
        media="text/html",
    ),
)

#: The application's endpoints.
ENDPOINTS = Registry((*_RUNS, *_LIFECYCLE, *_DOCS, *WEBHOOK_ENDPOINTS, *_SERVICE))

#: The server-rendered pages under /ui/ (review pages, sign-in, inbox, docs): HTML, outside the JSON contract.
PAGES: tuple[Page, ...] = (
    Page("GET", "/ui/style.css", ui_pages.style, "The pages' stylesheet"),
    Page("GET", "/ui/", ui_session_routes.inbox, "Inbox: gates waiting for the signed-in person"),
    Page("GET", "/ui/login", ui_session_routes.login_page, "Sign-in form (an API token)"),
    Page("POST", "/ui/login", ui_session_routes.login, "Sign in: sets the session cookie"),
    Page("POST", "/ui/logout", ui_session_routes.logout, "Sign out"),
    Page("GET", "/ui/runs/{run_id}/gates/{gate}", ui_routes.review_page, "A gate's review page (link or sign-in)"),
    Page("POST", "/ui/runs/{run_id}/gates/{gate}/decision", ui_routes.decide, "Approve or reject from the page"),
    Page("GET", "/ui/docs", ui_session_routes.docs_index, "Docs pages with their versions"),
    Page("GET", "/ui/docs/{slug:.+}", ui_session_routes.docs_page, "One docs page rendered"),
)
