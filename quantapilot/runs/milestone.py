"""A milestone's work in the run's worktree: its commands, each retried from where it started, or its record."""

from __future__ import annotations

import asyncio
from pathlib import Path

from quantapilot.errors import ErrorCode
from quantapilot.models import StepOutcome
from quantapilot.repos.worktree import UnsafePathError, write_file
from quantapilot.runs.commands import run_command
from quantapilot.runs.contracts import MilestoneInput
from quantapilot.runs.errors import permanent
from quantapilot.runs.patch import apply_diff, check_diff
from quantapilot.runs.worktree import restore, snapshot
from quantapilot.sandbox import SandboxPolicy, SandboxUnavailable
from quantapilot.settings import Settings


async def run_steps(path: Path, inp: MilestoneInput, policy: SandboxPolicy) -> tuple[list[StepOutcome], str | None]:
    """Run the milestone's commands in order, each up to its attempts, until one fails.

    Returns:
        Every attempt's outcome, and the step that failed (None when all passed).

    Raises:
        StepError: ``COMMANDS_SANDBOX_UNAVAILABLE`` when the sandbox cannot be built.
    """
    outcomes: list[StepOutcome] = []
    for step in inp.steps:
        if not step.run:
            continue
        before = await snapshot(path) if step.attempts > 1 else None
        for attempt in range(1, step.attempts + 1):
            if before is not None and attempt > 1:
                # A retry starts from the worktree as the step found it, so a command that half-wrote
                # files (or appends) does not see its own leftovers.
                await restore(path, before)
            try:
                outcome = await run_command(step.name, step.run, cwd=path, timeout_s=step.timeout_s, sandbox=policy)
            except SandboxUnavailable as exc:
                raise permanent(ErrorCode.COMMANDS_SANDBOX_UNAVAILABLE, str(exc)) from None
            outcomes.append(outcome.model_copy(update={"attempt": attempt}))
            if outcome.exit_code == 0:
                break
        if outcomes[-1].exit_code != 0:
            return outcomes, step.name
    return outcomes, None


async def write_record(path: Path, inp: MilestoneInput) -> None:
    """Write the record of a milestone without commands (its criteria), so it still leaves something to review."""
    criteria = "".join(f"- [ ] {c}\n" for c in inp.criteria) or "- (no criteria)\n"
    record = f"# {inp.milestone_id}: {inp.title}\n\n## Criteria\n\n{criteria}"
    try:
        # Never through a tracked link (.quantapilot/milestones -> /tmp/x): refused, nothing written.
        await asyncio.to_thread(
            write_file, path, f".quantapilot/milestones/{inp.milestone_id}.md", record.encode("utf-8")
        )
    except UnsafePathError as exc:
        raise permanent(ErrorCode.PRECONDITION_FAILED, f"milestone record not written: {exc}") from None


async def apply_model_diff(path: Path, diff: str, settings: Settings) -> list[StepOutcome]:
    """Check and apply a model step's diff; its outcome (exit 1 with git's words when it does not apply).

    Raises:
        StepError: ``MODEL_DIFF_REJECTED`` for an unsafe or oversized diff (:mod:`quantapilot.runs.patch`).
    """
    checked = check_diff(diff, path, max_bytes=settings.model_max_diff_bytes, max_files=settings.model_max_diff_files)
    reason = await apply_diff(checked, path)
    summary = f"applied the model's diff to {len(checked.files)} files: {', '.join(checked.files)}"
    return [StepOutcome(name="impl", command="git apply", exit_code=1 if reason else 0, output_tail=reason or summary)]
