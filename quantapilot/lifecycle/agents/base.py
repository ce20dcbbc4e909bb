"""What every stage agent implements, and the checks around running one.

An agent turns a :class:`~quantapilot.lifecycle.models.StageInput` into a
:class:`~quantapilot.lifecycle.models.StageResult`. It is synchronous, deterministic and pure: no clock (the
caller passes ``as_of``), no randomness, no I/O, so a Temporal activity can run it and a replay sees the same
result. Built-ins and plug-ins (:mod:`~quantapilot.lifecycle.agents.plugins`) implement the same protocol.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from quantapilot.lifecycle.outputs import StageInput, StageOutput, StageResult
from quantapilot.lifecycle.render import render_report


@runtime_checkable
class StageAgent(Protocol):
    """What every stage agent provides."""

    stage: str

    def run(self, data: StageInput) -> StageResult:
        """Compute the stage's result; deterministic and free of I/O."""
        ...


class AgentError(ValueError):
    """An agent that cannot be loaded, or returned a result that does not fit its input."""


def make_result(data: StageInput, output: StageOutput) -> StageResult:
    """Wrap an agent's output in a :class:`StageResult` with its rendered Markdown report."""
    result = StageResult(stage=data.stage, account_id=data.account_id, output=output, report="")
    return result.model_copy(update={"report": render_report(result)})


def run_agent(agent: StageAgent, data: StageInput) -> StageResult:
    """Run ``agent`` and check that its result belongs to the input's stage and account.

    Raises:
        AgentError: When the result is for another stage or account (a faulty plug-in).
    """
    result = agent.run(data)
    if not isinstance(result, StageResult):
        raise AgentError(f"{type(agent).__name__} returned {type(result).__name__}, not a StageResult")
    if result.stage != data.stage or result.account_id != data.account_id:
        raise AgentError(f"{type(agent).__name__} returned a result for another stage or account")
    return result
