"""Old home of the ``quantapilot.yml`` module, kept only for ``workflows/repo_run.py``.

The models and loading moved to :mod:`quantapilot.repos.config`, the run policy to :mod:`quantapilot.repos.policy`.
``workflows/`` is rewritten on another branch of issue 14; once its imports name the new modules this file goes.
Nothing else imports it.
"""

from quantapilot.repos.config import MilestoneConfig, QuantapilotConfig, StepConfig
from quantapilot.repos.policy import command_policy, effective_gates, gate_settings, run_branch_namespace, step_policy

__all__ = [
    "MilestoneConfig",
    "QuantapilotConfig",
    "StepConfig",
    "command_policy",
    "effective_gates",
    "gate_settings",
    "run_branch_namespace",
    "step_policy",
]
