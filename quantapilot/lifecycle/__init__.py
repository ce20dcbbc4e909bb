"""Value lifecycle of customer accounts: stage models, stage agents, realization, results and telemetry.

Pure (workflows may import them through the sandbox): :mod:`~quantapilot.lifecycle.models` (requests, stage
outputs, ``StageInput``/``StageResult``), :mod:`~quantapilot.lifecycle.contracts` (Temporal names and payloads),
:mod:`~quantapilot.lifecycle.rfc3339`, :mod:`~quantapilot.lifecycle.realization` (arithmetic),
:mod:`~quantapilot.lifecycle.render` (Markdown reports) and :mod:`~quantapilot.lifecycle.agents` (``StageAgent``,
the built-ins, ``load_agents``).

Not for workflows: :mod:`~quantapilot.lifecycle.validation` (request bodies parsed by their models),
:mod:`~quantapilot.lifecycle.store` (the ``lifecycle_results`` table), :mod:`~quantapilot.lifecycle.telemetry`
(the telemetry tables, ingestion, aggregates), :mod:`~quantapilot.lifecycle.telemetry_body` (the telemetry request
body and its parsing), and :mod:`~quantapilot.lifecycle.service` and
:mod:`~quantapilot.lifecycle.pages` (the steps the activities of :mod:`activities.lifecycle` run). This file
imports none of them, so importing the package is free of I/O.
"""
