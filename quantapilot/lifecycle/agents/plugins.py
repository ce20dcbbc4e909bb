"""Which agent serves each stage: the built-ins, overridden by entry points of the ``quantapilot.agents`` group.

A team replaces a built-in by publishing an entry point in that group whose name is the stage and whose value
is an agent class or factory (e.g. an LLM-backed agent) implementing
:class:`~quantapilot.lifecycle.agents.base.StageAgent`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint
from importlib.metadata import entry_points as installed_entry_points

from quantapilot.lifecycle.agents.base import AgentError, StageAgent
from quantapilot.lifecycle.agents.expansion import ExpansionAgent
from quantapilot.lifecycle.agents.opportunity import OpportunityAgent
from quantapilot.lifecycle.agents.realization import RealizationAgent
from quantapilot.lifecycle.agents.target import TargetAgent
from quantapilot.lifecycle.models import STAGES

ENTRY_POINT_GROUP = "quantapilot.agents"


BUILTIN_AGENTS: dict[str, Callable[[], StageAgent]] = {
    "opportunity": OpportunityAgent,
    "target": TargetAgent,
    "realization": RealizationAgent,
    "expansion": ExpansionAgent,
}


def load_agents(
    group: str = ENTRY_POINT_GROUP, *, entry_points: Iterable[EntryPoint] | None = None
) -> dict[str, StageAgent]:
    """Return one agent per stage: the built-ins, overridden by entry points of ``group``.

    An entry point's name is the stage it serves; its value is an agent class or a zero-argument factory
    (anything callable that returns an agent), or an agent instance. Entry points are applied in name order,
    so the result does not depend on installation order.

    Args:
        group: Entry point group to read from the installed distributions.
        entry_points: Entry points to use instead of the installed ones (tests); only those of ``group`` count.

    Returns:
        Agents keyed by stage, one for each of :data:`~quantapilot.lifecycle.models.STAGES`.

    Raises:
        AgentError: When an entry point names no stage, fails to load, or yields something that is not an
            agent for that stage. Loading fails loudly at worker start rather than at the first run.
    """
    agents: dict[str, StageAgent] = {stage: factory() for stage, factory in BUILTIN_AGENTS.items()}
    eps = list(installed_entry_points(group=group)) if entry_points is None else list(entry_points)
    # ``provider.<name>`` entries of the group register model providers (quantapilot.llm.registry), not agents.
    mine = (e for e in eps if e.group == group and not e.name.startswith("provider."))
    for ep in sorted(mine, key=lambda e: (e.name, e.value)):
        if ep.name not in STAGES:
            raise AgentError(f"entry point {ep.name!r} in {group} names no stage (expected one of {STAGES})")
        try:
            obj = ep.load()
            # A class also passes the runtime protocol check (it has ``stage`` and ``run``), so test for it first.
            is_factory = isinstance(obj, type) or (callable(obj) and not isinstance(obj, StageAgent))
            agent = obj() if is_factory else obj
        except Exception as exc:
            raise AgentError(f"entry point {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        if isinstance(agent, type) or not isinstance(agent, StageAgent):
            raise AgentError(f"entry point {ep.name!r} ({ep.value}) is not a stage agent")
        if agent.stage != ep.name:
            raise AgentError(f"entry point {ep.name!r} ({ep.value}) serves stage {agent.stage!r}")
        agents[ep.name] = agent
    return agents
