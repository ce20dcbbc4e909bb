"""Run policy: what a run derives from its ``quantapilot.yml``.

The gates it stops at and their settings, step and command timeouts and attempts, the self-approval floor and
the branch namespace the run owns. The file's models are :mod:`quantapilot.repos.config`, its loading
:mod:`quantapilot.repos.config_loader`; everything here is a pure function of a validated
:class:`~quantapilot.repos.config.QuantapilotConfig`, safe to call from workflow code.
"""

from __future__ import annotations

from typing import Final, TypeVar

from quantapilot.repos.config import GateConfig, LimitsConfig, QuantapilotConfig, StepConfig

__all__ = [
    "ANCHOR_GATE",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_STEP_TIMEOUT_S",
    "FIRST_MERGE_GATE",
    "RUN_BRANCH_ROOT",
    "command_policy",
    "docs_branch_problem",
    "effective_gates",
    "gate_settings",
    "in_run_namespace",
    "run_branch_namespace",
    "step_policy",
    "with_self_approval_floor",
]

DEFAULT_STEP_TIMEOUT_S: Final = 600.0
DEFAULT_MAX_ATTEMPTS: Final = 3
ANCHOR_GATE: Final = "anchor"
FIRST_MERGE_GATE: Final = "first_merge"

_T = TypeVar("_T")


def _milestone_gate_on(config: QuantapilotConfig, index: int) -> bool:
    milestone = config.milestones[index]
    return milestone.gate if milestone.gate is not None else index == 0


def effective_gates(config: QuantapilotConfig) -> list[str]:
    """The gates a run stops at, in the order it reaches them.

    The rule:

    1. ``anchor`` (acceptance of the generated documentation) comes first.
    2. Each milestone with a gate contributes its id, in milestone order. A milestone has a gate when its
       ``gate`` says so; left unset, the first milestone has one and later ones do not.
    3. ``first_merge`` is on whenever there are milestones. It is reached after the first milestone's own gate
       and before that milestone's changes merge into the default branch, so it sits right after the first
       milestone's position (``anchor, M-001, first_merge, M-002, ...``).
    4. ``policies.gates`` edits this list: ``"-name"`` removes a gate (``-anchor``, ``-first_merge``,
       ``-M-001``); a milestone id turns that milestone's gate on; any other name is an optional gate,
       appended at the end in the order given (the run stops there before completion). A removal wins over an
       addition of the same name; ``anchor``/``first_merge`` listed as additions change nothing.

    Args:
        config: A validated configuration.

    Returns:
        Gate names without duplicates.
    """
    removed = {entry[1:] for entry in config.policies.gates if entry.startswith("-")}
    added = [entry for entry in config.policies.gates if not entry.startswith("-")]
    milestone_ids = {milestone.id for milestone in config.milestones}
    gates: list[str] = [ANCHOR_GATE]
    for index, milestone in enumerate(config.milestones):
        if _milestone_gate_on(config, index) or milestone.id in added:
            gates.append(milestone.id)
        if index == 0:
            gates.append(FIRST_MERGE_GATE)
    for name in added:
        if name not in milestone_ids and name not in {ANCHOR_GATE, FIRST_MERGE_GATE} and name not in gates:
            gates.append(name)
    return [name for name in gates if name not in removed]


def gate_settings(config: QuantapilotConfig, name: str) -> GateConfig:
    """Settings of the gate ``name``.

    Its ``gate_definitions`` entry, or the defaults: wait forever, anyone allowed to decide gates may decide,
    no self-approval.

    Args:
        config: A validated configuration.
        name: Gate name (``anchor``, ``first_merge``, a milestone id or an optional gate).

    Returns:
        The gate's settings.
    """
    settings = config.gate_definitions.get(name)
    return settings if settings is not None else GateConfig()


def with_self_approval_floor(config: QuantapilotConfig, *, allowed: bool) -> QuantapilotConfig:
    """The configuration as the deployment permits it: no gate allows self-approval where the deployment does not.

    ``QP_ALLOW_SELF_APPROVAL=false`` is a floor. A repository's ``gate_definitions`` may narrow who decides
    (``allow_self_approval: false`` under a permissive deployment), never lift it.

    Args:
        config: A validated configuration.
        allowed: Whether the deployment allows self-approval (the run's recorded ``QP_ALLOW_SELF_APPROVAL``).

    Returns:
        ``config`` itself when ``allowed``, else a copy whose gates all have ``allow_self_approval`` false or unset.
    """
    if allowed:
        return config
    narrowed = {
        name: gate.model_copy(update={"allow_self_approval": False}) if gate.allow_self_approval else gate
        for name, gate in config.gate_definitions.items()
    }
    return config.model_copy(update={"gate_definitions": narrowed})


#: Branches ``quantapilot/<x>/...`` are run namespaces: each run force-pushes only inside its own.
RUN_BRANCH_ROOT: Final = "quantapilot/"


def run_branch_namespace(run_id: str) -> str:
    """The branch prefix a run owns (``quantapilot/<run_id>/``): its docs and milestone branches live there."""
    return f"{RUN_BRANCH_ROOT}{run_id}/"


def in_run_namespace(branch: str, run_id: str) -> bool:
    """Tell whether ``branch`` lies in the run's own namespace, where the run may rewrite history."""
    return branch.startswith(run_branch_namespace(run_id))


def docs_branch_problem(config: QuantapilotConfig, run_id: str) -> str | None:
    """Why ``docs.branch`` cannot be used by the run ``run_id``, or None when it can.

    A branch in another run's namespace (``quantapilot/<other>/...``) is refused outright. Any other branch
    outside the run's own namespace is only ever created, never rewritten; that is enforced when it is pushed.
    """
    branch = config.docs.branch
    if branch is None or in_run_namespace(branch, run_id):
        return None
    if branch.startswith(RUN_BRANCH_ROOT) and "/" in branch.removeprefix(RUN_BRANCH_ROOT):
        own = run_branch_namespace(run_id)
        return f"docs.branch {branch} lies in another run's namespace; a run writes only below {own}"
    return None


def step_policy(step: StepConfig | None, config: QuantapilotConfig) -> tuple[float, int]:
    """Activity timeout and attempts for a step.

    Each value comes from the first source that sets it: the step itself, the top-level ``steps`` entry with
    the same name (per-name defaults), ``limits.timeout_seconds`` / ``limits.max_retries``, then the defaults
    (600 s, 2 retries).

    Args:
        step: The step (a milestone step or a top-level one), or None for a step without settings.
        config: A validated configuration.

    Returns:
        ``(start_to_close_timeout_seconds, maximum_attempts)`` where attempts = retries + 1.
    """
    return _policy(step, config, default_timeout_s=DEFAULT_STEP_TIMEOUT_S, default_retries=DEFAULT_MAX_ATTEMPTS - 1)


def command_policy(step: StepConfig, config: QuantapilotConfig) -> tuple[float, int]:
    """Timeout and attempts of one milestone command.

    The same sources as :func:`step_policy` (the step, the top-level ``steps`` entry with the same name,
    ``limits``), then ``run.commands_timeout_s`` and no retry. Unlike a step, a command is not retried unless
    asked: a failing test is a result, not a fault.

    Args:
        step: A milestone step.
        config: A validated configuration.

    Returns:
        ``(timeout_seconds, attempts)`` where attempts = retries + 1.
    """
    return _policy(step, config, default_timeout_s=config.run.commands_timeout_s, default_retries=0)


def _policy(
    step: StepConfig | None, config: QuantapilotConfig, *, default_timeout_s: float, default_retries: int
) -> tuple[float, int]:
    named = None
    if step is not None:
        named = next((candidate for candidate in config.steps if candidate.name == step.name), None)
    limits = config.limits or LimitsConfig()
    timeout = _first(
        step.timeout_s if step else None,
        named.timeout_s if named else None,
        limits.timeout_seconds,
        default=default_timeout_s,
    )
    retries = _first(
        step.retries if step else None,
        named.retries if named else None,
        limits.max_retries,
        default=default_retries,
    )
    return float(timeout), int(retries) + 1


def _first(*values: _T | None, default: _T) -> _T:
    return next((value for value in values if value is not None), default)
