"""The repository run: clone, read quantapilot.yml, document, open a PR, pass gates, run milestones, merge."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.common import RunFailure, events_not_recorded
from workflows.model_docs import PATCH_MODEL_DOCS, ModelDocs
from workflows.model_qa import qa_note
from workflows.model_steps import PATCH_MODEL_STEPS

with workflow.unsafe.imports_passed_through():
    from activities.repo import RepoActivities
    from quantapilot.errors import ErrorCode
    from quantapilot.models import (
        MilestoneRecord,
        MilestoneStatus,
        PullRequestRef,
        RepoRunCarry,
        RepoRunInput,
        RunKind,
        RunStatus,
    )
    from quantapilot.repos.config import MilestoneConfig, QuantapilotConfig, StepConfig
    from quantapilot.repos.policy import (
        ANCHOR_GATE,
        FIRST_MERGE_GATE,
        command_policy,
        effective_gates,
        gate_settings,
        run_branch_namespace,
        step_policy,
    )
    from quantapilot.runs.contracts import (
        DocsInput,
        LoadConfigInput,
        MergePullRequestInput,
        MilestoneInput,
        MilestoneStep,
        OpenPullRequestInput,
        PullRequestResult,
        RepoRef,
        project_name,
    )
    from quantapilot.runs.ids import REPO_RUN_WORKFLOW

CLONE_TIMEOUT_S = 600.0
CONFIG_TIMEOUT_S = 60.0
CLEANUP_TIMEOUT_S = 120.0
# Workflow versioning (workflow.patched): a run that ends removes its worktree (cleanup_worktree) first.
PATCH_WORKTREE_CLEANUP = "cleanup-worktree-at-end"
# ... and does so with a local activity: no activity task, no workflow task after it, just a marker in the history.
# Asked when the run starts, and PATCH_WORKTREE_CLEANUP with it: each patch's marker (and the TemporalChangeVersion
# search attribute the SDK upserts with it) is written in the run's first workflow task, not after its last step.
PATCH_CLEANUP_LOCAL = "cleanup-worktree-local"


def _named_step(config: QuantapilotConfig, name: str) -> StepConfig | None:
    return next((s for s in config.steps if s.name == name), None)


@workflow.defn(name=REPO_RUN_WORKFLOW)
class RepoRunWorkflow(ModelDocs):
    """One durable repository run (see the module docstring for its steps)."""

    @workflow.init
    def __init__(self, inp: RepoRunInput) -> None:
        self._inp = inp
        self._init_run(inp, RunKind.REPOSITORY, heartbeat_s=inp.heartbeat_timeout_s)
        self._repo = RepoRef(run_id=inp.run_id, workspace=inp.workspace, repo_url=inp.repo_url, branch=inp.branch)
        self._config: QuantapilotConfig | None = None
        self._milestones: list[MilestoneRecord] = []
        self._pull_requests: list[PullRequestRef] = []
        self._docs_branch: str | None = None
        self._merged_once = False
        self._local_cleanup = False  # decided as the run starts (run)

    @workflow.run
    async def run(self, inp: RepoRunInput) -> RunStatus:
        """Run the pipeline to completion, failure or cancellation."""
        # Runs started before the patch replay without it (False, kept for the run), and ask PATCH_WORKTREE_CLEANUP
        # at their end as they did; a new run asks both now, so the end finds them decided and records no marker.
        self._local_cleanup = workflow.patched(PATCH_CLEANUP_LOCAL) and workflow.patched(PATCH_WORKTREE_CLEANUP)
        return await self._guarded(self._pipeline)

    async def _release(self) -> None:
        """Remove the run's worktree when it ends: completed, failed or cancelled (continuing as new is no end).

        The step runs on one worker; worktrees other workers cloned for this run are removed by their sweep
        (``worker.py``), which also covers a run that was terminated. A cleanup that fails never fails the run.
        """
        if not workflow.patched(PATCH_WORKTREE_CLEANUP):
            return  # started before worktrees were removed: replay without the step
        # A local activity: the worker running this workflow task runs it at once and the task goes on to close the
        # run, where an activity cost a round trip through the server and another workflow task. It still carries
        # the final event (activities.event_carry), recorded before the worktree goes. Runs that scheduled the
        # cleanup as an activity replay that.
        local = self._local_cleanup
        retry = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
        timeout = timedelta(seconds=CLEANUP_TIMEOUT_S)
        while True:
            try:
                if local:
                    await workflow.execute_local_activity_method(
                        RepoActivities.cleanup_worktree,
                        self._repo,
                        start_to_close_timeout=timeout,
                        retry_policy=retry,
                        summary="Remove the run's worktree",
                    )
                else:
                    await workflow.execute_activity_method(
                        RepoActivities.cleanup_worktree,
                        self._repo,
                        start_to_close_timeout=timeout,
                        retry_policy=retry,
                        summary="Remove the run's worktree",
                    )
            except (ActivityError, ApplicationError) as err:
                # A local activity that failed for good raises its ApplicationError itself, not an ActivityError.
                if events_not_recorded(err):
                    # The final event it carried could not be recorded, nor was the worktree removed: record, retry.
                    await self._events.flush()
                    continue
                cause = err.cause if isinstance(err, ActivityError) else err
                workflow.logger.warning("worktree cleanup failed: %s", cause, extra=self._log_context())
            return

    def _status(self) -> RunStatus:
        return RunStatus(
            **self._base_status(),
            repo_url=self._inp.repo_url,
            branch=self._inp.branch,
            milestones=[m.model_copy() for m in self._milestones],
            pull_requests=list(self._pull_requests),
            docs_branch=self._docs_branch,
            usage=self._usage_copy(),
            model_calls=self._run_model_calls(),
        )

    def _details_extra(self) -> list[str]:
        lines = [f"Repository `{self._inp.repo_url}` at `{self._inp.branch}`."]
        if self._milestones:
            done = sum(m.status == MilestoneStatus.COMPLETED for m in self._milestones)
            lines += ["", f"Milestones: {done}/{len(self._milestones)} completed."]
            lines += [f"- {m.id} {m.title}: **{m.status}**" for m in self._milestones]
        if self._pull_requests:
            lines += [
                "",
                "Pull requests: " + ", ".join(f"#{p.number} {p.purpose} ({p.state})" for p in self._pull_requests),
            ]
        return lines + self._usage_lines()

    # ----- the pipeline ------------------------------------------------------------------------------------

    async def _pipeline(self) -> None:
        if self._inp.carry is not None:
            config, start = self._restore(self._inp.carry), self._inp.carry.next_milestone
        else:
            config, start = await self._documented_and_anchored(), 0
        gates = effective_gates(config)
        for index in range(start, len(config.milestones)):
            if index > start and self._should_continue_as_new(index - start):
                # Long runs stay far below Temporal's history limits: the next execution starts from here, with
                # every event of this one recorded (it carries the sequence number on, not the events).
                await self._events.flush()
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._inp.model_copy(update={"carry": self._carry(config, index)}))
            try:
                await self._milestone(index, config.milestones[index], config, gates)
            except RunFailure:
                # A rejected or timed-out gate, a failed step: the run ends here, and so does this milestone.
                self._milestones[index].status = MilestoneStatus.FAILED
                self._touch()
                raise

        known = {ANCHOR_GATE, FIRST_MERGE_GATE, *(m.id for m in config.milestones)}
        for optional in (g for g in gates if g not in known):
            await self._decide(optional, gate_settings(config, optional).description or f"Optional gate {optional}")
        self._current_step = None

    async def _documented_and_anchored(self) -> QuantapilotConfig:
        """Clone, read the config, document, open the docs PR, pass the anchor gate and merge the docs."""
        inp = self._inp
        await self._emit(
            "run.started",
            {
                "run_id": inp.run_id,
                "repo_url": inp.repo_url,
                "branch": inp.branch,
                "correlation_id": inp.correlation_id,
            },
        )
        clone = await self._step(
            "clone",
            RepoActivities.clone_repository,
            self._repo,
            timeout_s=CLONE_TIMEOUT_S,
            attempts=3,
            summary=f"Clone {inp.repo_url} at {inp.branch}",
        )
        self._repo = self._repo.model_copy(update={"commit_sha": clone.commit_sha})
        config = await self._step(
            "read_config",
            RepoActivities.load_run_config,
            LoadConfigInput(
                repo=self._repo, path=inp.quantapilot_yaml_path, allow_self_approval=inp.allow_self_approval_default
            ),
            timeout_s=CONFIG_TIMEOUT_S,
            attempts=3,
            summary=f"Read {inp.quantapilot_yaml_path}",
        )
        self._config = config
        self._time_budget_s = config.run.time_budget_s
        self._milestones = [
            MilestoneRecord(id=m.id, title=m.title, gate=m.id if self._milestone_has_gate(i, m) else None)
            for i, m in enumerate(config.milestones)
        ]
        self._touch()
        gates = effective_gates(config)

        docs_pr = await self._documentation(config)
        if ANCHOR_GATE in gates:
            await self._decide(ANCHOR_GATE, "Accept the anchor documentation (its approval merges the docs PR).")
        await self._merge(docs_pr, config)
        return config

    def _should_continue_as_new(self, done_here: int) -> bool:
        every = self._inp.continue_as_new_every
        return workflow.info().is_continue_as_new_suggested() or (every is not None and done_here >= every)

    def _carry(self, config: QuantapilotConfig, next_milestone: int) -> RepoRunCarry:
        assert self._repo.commit_sha is not None
        return RepoRunCarry(
            config=config,
            commit_sha=self._repo.commit_sha,
            next_milestone=next_milestone,
            milestones=[m.model_copy() for m in self._milestones],
            pull_requests=list(self._pull_requests),
            gates=[g.model_copy() for g in self._gates.values()],
            docs_branch=self._docs_branch,
            event_seq=self._events.seq,
            created_at=self._created_at,
            time_budget_s=self._time_budget_s,
            extra_attempts=self._extra_attempts,
            merged_once=self._merged_once,
            usage=self._usage,
            model_calls=self._run_model_calls(),
        )

    def _restore(self, carry: RepoRunCarry) -> QuantapilotConfig:
        self._config = carry.config
        self._repo = self._repo.model_copy(update={"commit_sha": carry.commit_sha})
        self._milestones = [m.model_copy() for m in carry.milestones]
        self._pull_requests = list(carry.pull_requests)
        self._gates = {g.name: g.model_copy() for g in carry.gates}
        self._docs_branch = carry.docs_branch
        self._events.restore(carry.event_seq)
        self._created_at = carry.created_at
        self._time_budget_s = carry.time_budget_s
        self._extra_attempts = carry.extra_attempts
        self._merged_once = carry.merged_once
        self._usage = carry.usage
        self._run_calls = list(carry.model_calls) or None
        self._touch()
        return carry.config

    def _milestone_has_gate(self, index: int, milestone: MilestoneConfig) -> bool:
        assert self._config is not None
        return milestone.id in effective_gates(self._config)

    async def _decide(self, name: str, default_description: str, *, note: str | None = None) -> None:
        assert self._config is not None
        settings = gate_settings(self._config, name)
        description = settings.description or default_description
        await self._gate(
            name,
            # A note (the QA model's verdict) only where there is one: other gates read as they always did.
            f"{description} {note}" if note else description,
            timeout_s=settings.timeout_s,
            approvers=list(settings.approvers),
            allow_self_approval=settings.allow_self_approval,
            required_approvals=settings.required_approvals,
        )

    async def _documentation(self, config: QuantapilotConfig) -> PullRequestResult:
        timeout_s, attempts = step_policy(_named_step(config, "doc"), config)
        project = project_name(self._inp.repo_url)
        docs_input = DocsInput(
            repo=self._repo,
            project=project,
            output_folder=config.docs.output_folder,
            docs_branch=config.docs.branch or f"{run_branch_namespace(self._inp.run_id)}docs",
            owners=list(config.docs.owners) or ["quantapilot"],
            lint=config.gates.docs_lint,
            run_started_at=self._created_at,
        )
        # Asked only with models.arch: a run without it records no marker and replays as before.
        if config.models is not None and config.models.arch is not None and workflow.patched(PATCH_MODEL_DOCS):
            docs = await self._documented_by_models(config, docs_input, timeout_s=timeout_s, attempts=attempts)
        else:
            docs = await self._step(
                "generate_docs",
                RepoActivities.generate_documentation,
                docs_input,
                timeout_s=timeout_s,
                attempts=attempts,
                summary=f"Generate the documentation into {config.docs.output_folder}",
            )
        self._docs_branch = docs.docs_branch
        pr = await self._open_pr(
            docs.docs_branch,
            "docs",
            f"docs: generated documentation for {project}",
            f"Documentation generated by QuantaPilot run {self._inp.run_id} ({docs.pages} pages, {docs.version}).",
            config,
        )
        await self._emit(
            "documentation.generated",
            {"run_id": self._inp.run_id, "docs_branch": docs.docs_branch, "pr_number": pr.number},
        )
        return pr

    async def _open_pr(
        self, head: str, purpose: str, title: str, body: str, config: QuantapilotConfig
    ) -> PullRequestResult:
        timeout_s, attempts = step_policy(_named_step(config, "pr"), config)
        pr = await self._step(
            f"open_pr:{purpose}",
            RepoActivities.open_pull_request,
            OpenPullRequestInput(repo=self._repo, head=head, base=self._inp.branch, title=title, body=body),
            timeout_s=timeout_s,
            attempts=attempts,
            summary=f"Open a pull request for {purpose}: {head} into {self._inp.branch}",
        )
        self._record_pr(pr, purpose)
        return pr

    def _record_pr(self, pr: PullRequestResult, purpose: str) -> None:
        ref = PullRequestRef(number=pr.number, head=pr.head, base=pr.base, state=pr.state, url=pr.url, purpose=purpose)
        self._pull_requests = [p for p in self._pull_requests if p.number != pr.number] + [ref]
        self._touch()

    async def _merge(self, pr: PullRequestResult, config: QuantapilotConfig) -> None:
        timeout_s, attempts = step_policy(_named_step(config, "pr"), config)
        purpose = next((p.purpose for p in self._pull_requests if p.number == pr.number), "merge")
        merged = await self._step(
            f"merge:{purpose}",
            RepoActivities.merge_pull_request,
            MergePullRequestInput(repo=self._repo, number=pr.number, strategy=config.policies.merge),
            timeout_s=timeout_s,
            attempts=attempts,
            # A conflict needs a person: the run pauses and retries the merge when resumed.
            pause_on=frozenset({ErrorCode.MERGE_CONFLICT}),
            summary=f"Merge pull request #{pr.number} ({purpose}, {config.policies.merge})",
        )
        self._record_pr(merged, purpose)

    async def _milestone(
        self, index: int, milestone: MilestoneConfig, config: QuantapilotConfig, gates: list[str]
    ) -> None:
        record = self._milestones[index]
        record.status = MilestoneStatus.ACTIVE
        record.started_at = workflow.now()
        record.branch = f"{run_branch_namespace(self._inp.run_id)}{milestone.id.lower()}"
        self._touch()
        # Each command's timeout and retries follow command_policy: the step, the top-level step of that name,
        # limits, then run.commands_timeout_s and no retry. The activity's own attempts (a worker lost, git failing)
        # follow the step policy as every other step's do.
        steps = []
        for s in milestone.steps:
            command_timeout_s, command_attempts = command_policy(s, config)
            steps.append(MilestoneStep(name=s.name, run=s.run, timeout_s=command_timeout_s, attempts=command_attempts))
        attempts = max((step_policy(s, config)[1] for s in milestone.steps), default=1)
        work = MilestoneInput(
            repo=self._repo,
            milestone_id=milestone.id,
            title=milestone.title,
            criteria=list(milestone.criteria),
            branch=record.branch,
            steps=steps,
            run_started_at=self._created_at,
        )
        timeout_s = sum(s.timeout_s * s.attempts for s in steps) + 120.0
        if any(s.prompt for s in milestone.steps) and workflow.patched(PATCH_MODEL_STEPS):
            result = await self._model_milestone(
                milestone, config, record, work, timeout_s=timeout_s, attempts=attempts
            )
        else:
            result = await self._step(
                f"milestone:{milestone.id}",
                RepoActivities.run_milestone,
                work,
                timeout_s=timeout_s,
                attempts=attempts,
                summary=f"Milestone {milestone.id}: {milestone.title} ({len(steps)} steps)",
            )
        record.steps = list(result.steps)
        if result.failed_step is not None:
            record.status = MilestoneStatus.FAILED
            self._touch()
            raise RunFailure(ErrorCode.STEP_FAILED, f"milestone {milestone.id} step {result.failed_step} failed")
        pr = await self._open_pr(
            result.branch,
            f"milestone:{milestone.id}",
            f"{milestone.id}: {milestone.title}",
            "\n".join(["Milestone deliverables.", "", *(f"- [ ] {c}" for c in milestone.criteria)]),
            config,
        )
        record.pr_number = pr.number
        if record.gate:
            await self._decide(
                record.gate,
                f"Accept the deliverables of milestone {milestone.id}: {milestone.title}",
                note=qa_note(record),
            )
        if not self._merged_once and FIRST_MERGE_GATE in gates:
            await self._decide(
                FIRST_MERGE_GATE, "Approve the first merge of milestone changes into the default branch."
            )
        await self._merge(pr, config)
        self._merged_once = True
        record.status = MilestoneStatus.COMPLETED
        record.completed_at = workflow.now()
        self._touch()
        await self._emit("milestone.completed", {"run_id": self._inp.run_id, "milestone_id": milestone.id})
