"""Value lifecycle of customer accounts: stage models, deterministic stage agents, realization arithmetic.

Modules: :mod:`~quantapilot.lifecycle.models` (requests, stage outputs, ``StageInput``/``StageResult``, JSON
Schema checks), :mod:`~quantapilot.lifecycle.agents` (``StageAgent``, built-ins, ``load_agents``),
:mod:`~quantapilot.lifecycle.realization` (pure arithmetic) and :mod:`~quantapilot.lifecycle.render`
(Markdown reports). Nothing here does I/O, so workflows may import the models through the sandbox.
"""
