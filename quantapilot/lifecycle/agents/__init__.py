"""Stage agents: one small interface, four deterministic built-ins, and entry-point overrides.

Modules: :mod:`~quantapilot.lifecycle.agents.base` (the :class:`StageAgent` protocol, :func:`make_result`,
:func:`run_agent`), :mod:`~quantapilot.lifecycle.agents.heuristics` (what the built-ins share),
:mod:`~quantapilot.lifecycle.agents.personas` (the buyer persona table), one module per built-in
(:mod:`~quantapilot.lifecycle.agents.opportunity`, :mod:`~quantapilot.lifecycle.agents.target`,
:mod:`~quantapilot.lifecycle.agents.realization`, :mod:`~quantapilot.lifecycle.agents.expansion`) and
:mod:`~quantapilot.lifecycle.agents.plugins` (:func:`load_agents` over the ``quantapilot.agents`` entry points).

The names below are the plug-in API: plug-ins import them from this package (docs/LIFECYCLE.md, "Plug-in
agents"), so they stay here whatever module defines them.
"""

from quantapilot.lifecycle.agents.base import AgentError, StageAgent, make_result, run_agent
from quantapilot.lifecycle.agents.expansion import ExpansionAgent
from quantapilot.lifecycle.agents.opportunity import OpportunityAgent
from quantapilot.lifecycle.agents.plugins import BUILTIN_AGENTS, ENTRY_POINT_GROUP, load_agents
from quantapilot.lifecycle.agents.realization import RealizationAgent
from quantapilot.lifecycle.agents.target import TargetAgent

__all__ = [
    "BUILTIN_AGENTS",
    "ENTRY_POINT_GROUP",
    "AgentError",
    "ExpansionAgent",
    "OpportunityAgent",
    "RealizationAgent",
    "StageAgent",
    "TargetAgent",
    "load_agents",
    "make_result",
    "run_agent",
]
