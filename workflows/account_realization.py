"""One long-lived workflow per account that refreshes its realization when telemetry arrives.

The telemetry API signal-with-starts it after every accepted batch. Bursts coalesce: a refresh starts at most
once per ``window_s`` seconds, and every signal received meanwhile is served by the next refresh. A refresh runs
the realization agent over the report period (the 30 days up to now) against the latest approved targets -
skipped, with a note, while the account has none - republishes ``accounts/<accountId>/realization`` and emits
``realization.updated`` into the account's event stream (run id :func:`account_stream_id`). The workflow
continues as new after ``refreshes_per_run`` refreshes or when the server suggests it, carrying its counters and
any pending refresh over.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.common import EventEmitter, retry_policy

with workflow.unsafe.imports_passed_through():
    from activities.lifecycle import LifecycleActivities
    from quantapilot.lifecycle.contracts import (
        ACCOUNT_WORKFLOW,
        TELEMETRY_SIGNAL,
        AccountRealizationInput,
        AccountRealizationStatus,
        PublishStageInput,
        StageAgentInput,
        StoreStageResultInput,
        TelemetryIngested,
        account_stream_id,
        kpi_statuses,
    )
    from quantapilot.lifecycle.outputs import RealizationOutput
    from quantapilot.lifecycle.realization import report_period
    from quantapilot.models import RunKind

ACTIVITY_TIMEOUT = timedelta(seconds=120)
ACTIVITY_ATTEMPTS = 5
# A refresh whose activities gave up (the database away for longer than their retries) is tried again, after
# window_s * 2**failures, at most this long, instead of waiting for the next telemetry batch: the samples already
# stored must not stay unreported.
REFRESH_RETRY_MAX_S = 600.0
# Workflow versioning (workflow.patched): a failed refresh is retried.
PATCH_RETRY_FAILED_REFRESH = "retry-failed-refresh"


@workflow.defn(name=ACCOUNT_WORKFLOW)
class AccountRealizationWorkflow:
    """Coalescing realization refreshes of one account (see the module docstring)."""

    @workflow.init
    def __init__(self, inp: AccountRealizationInput) -> None:
        self._inp = inp
        self._pending = inp.pending
        self._signals = 0
        self._refreshes_total = inp.refreshes_total
        self._skipped_total = inp.skipped_total
        self._last_refresh_at = inp.last_refresh_at
        self._last_note: str | None = None
        self._last_overall: str | None = None
        self._last_version: str | None = None
        self._refreshes_here = 0
        self._failures = inp.failures
        self._stream = account_stream_id(inp.workspace, inp.account_id)
        self._events = EventEmitter(
            run_id=self._stream, workspace=inp.workspace, kind=RunKind.LIFECYCLE, correlation_id=None
        )
        # Sequence numbers continue across continue-as-new so the stream stays one ordered log.
        self._events.restore(inp.event_seq)

    @workflow.signal(name=TELEMETRY_SIGNAL)
    def telemetry_ingested(self, signal: TelemetryIngested) -> None:
        """A batch of the account's telemetry was stored: a refresh is due."""
        self._pending = True
        self._signals += 1

    @workflow.query(name="status")
    def status(self) -> AccountRealizationStatus:
        """Counters and the outcome of the last refresh."""
        return AccountRealizationStatus(
            workspace=self._inp.workspace,
            account_id=self._inp.account_id,
            refreshes_total=self._refreshes_total,
            skipped_total=self._skipped_total,
            signals=self._signals,
            pending=self._pending,
            last_refresh_at=self._last_refresh_at,
            last_note=self._last_note,
            last_overall_status=self._last_overall,
            last_version=self._last_version,
        )

    def _time_to_continue(self) -> bool:
        return self._refreshes_here >= self._inp.refreshes_per_run or workflow.info().is_continue_as_new_suggested()

    @workflow.run
    async def run(self, inp: AccountRealizationInput) -> None:
        """Refresh on demand until it is time to continue as new."""
        while True:
            await workflow.wait_condition(lambda: self._pending or self._time_to_continue())
            if self._time_to_continue():
                break
            if self._last_refresh_at is not None:
                # Coalesce: signals arriving while we wait are all served by this one refresh. After failed
                # refreshes the wait grows, so an outage costs a few attempts, not one per window.
                delay = min(inp.window_s * 2 ** min(self._failures, 20), max(inp.window_s, REFRESH_RETRY_MAX_S))
                wait_s = (self._last_refresh_at + timedelta(seconds=delay) - workflow.now()).total_seconds()
                if wait_s > 0:
                    await workflow.sleep(wait_s)
            self._pending = False
            await self._refresh()
            self._refreshes_here += 1
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            inp.model_copy(
                update={
                    "refreshes_total": self._refreshes_total,
                    "skipped_total": self._skipped_total,
                    "event_seq": self._events.seq,
                    "pending": self._pending,
                    "last_refresh_at": self._last_refresh_at,
                    "failures": self._failures,
                }
            )
        )

    async def _refresh(self) -> None:
        inp = self._inp
        now = workflow.now()
        self._last_refresh_at = now
        self._refreshes_total += 1
        try:
            outcome = await workflow.execute_activity_method(
                LifecycleActivities.run_stage_agent,
                StageAgentInput(
                    workspace=inp.workspace,
                    account_id=inp.account_id,
                    stage="realization",
                    as_of=now,
                    period=report_period(requested=None, as_of=now),
                    require_approved_target=True,
                ),
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=retry_policy(ACTIVITY_ATTEMPTS, initial_s=inp.retry_initial_s),
                summary="realization agent",
            )
            if outcome.result is None:
                self._skipped_total += 1
                self._last_note = outcome.skipped
                return
            result = outcome.result
            key = f"{self._stream}/{workflow.uuid4().hex}"
            stored = await workflow.execute_activity_method(
                LifecycleActivities.store_stage_result,
                StoreStageResultInput(
                    key=key, workspace=inp.workspace, run_id=self._stream, status="completed", result=result
                ),
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=retry_policy(ACTIVITY_ATTEMPTS, initial_s=inp.retry_initial_s),
                summary="store realization",
            )
            page = await workflow.execute_activity_method(
                LifecycleActivities.publish_stage_page,
                PublishStageInput(key=stored.key, workspace=inp.workspace),
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=retry_policy(ACTIVITY_ATTEMPTS, initial_s=inp.retry_initial_s),
                summary="publish realization",
            )
        except ActivityError as err:
            # The account stream must outlive a bad refresh: note it. A transient failure (retries exhausted) is
            # tried again after a backoff; a permanent one (a faulty agent) waits for the next telemetry batch.
            self._last_note = f"refresh failed: {err.cause or err}"
            transient = not (isinstance(err.cause, ApplicationError) and err.cause.non_retryable)
            if transient and workflow.patched(PATCH_RETRY_FAILED_REFRESH):
                self._failures += 1
                self._pending = True
            workflow.logger.warning(
                "realization refresh of account %s failed: %s",
                inp.account_id,
                err.cause,
                extra={"account_id": inp.account_id, "workspace": inp.workspace},
            )
            return
        self._failures = 0
        output = result.output
        if not isinstance(output, RealizationOutput):
            self._last_note = f"agent returned a {output.stage} output"
            return
        self._last_note = None
        self._last_overall = output.overall_status
        self._last_version = page.version
        await self._events.emit(
            "realization.updated",
            {
                "account_id": inp.account_id,
                "overall_status": output.overall_status,
                "kpis": kpi_statuses(output),
                "samples": sum(k.samples for k in output.kpis),
                "docs_slug": page.slug,
                "docs_version": page.version,
                "source": "telemetry",
            },
        )
