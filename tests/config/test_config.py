"""quantapilot.yml: schema, safe loading, error paths, gates and step policies."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from quantapilot.repos.config import DocsConfig, GateConfig, QuantapilotConfig, StepConfig
from quantapilot.repos.config_loader import MAX_CONFIG_BYTES, SCHEMA_PATH, ConfigError, ConfigIssue, load_config
from quantapilot.repos.policy import (
    command_policy,
    docs_branch_problem,
    effective_gates,
    gate_settings,
    step_policy,
    with_self_approval_floor,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "quantapilot.yml"


def yml(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def errors_of(text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load_config(text)
    return caught.value.errors


def paths_of(text: str) -> list[str]:
    return [issue.path for issue in errors_of(text)]


def milestones(*specs: str) -> str:
    """A config with one milestone per spec: "M-001" or "M-001:gate=false"."""
    lines = ["version: 1", "milestones:" if specs else "milestones: []"]
    for spec in specs:
        milestone_id, _, gate = spec.partition(":gate=")
        lines.append(f"  - {{id: {milestone_id}, title: t{milestone_id}}}")
        if gate:
            lines[-1] = f"  - {{id: {milestone_id}, title: t, gate: {gate}}}"
    return "\n".join(lines) + "\n"


# --- schema and example


def test_schema_is_valid_2020_12() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_schema_example_validates_with_every_section() -> None:
    config = load_config(EXAMPLE.read_text(encoding="utf-8"), source="examples/quantapilot.yml")
    # Every top-level property of the schema is used by the example.
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    example_keys = set(config.model_dump(exclude_unset=True))
    assert example_keys == set(schema["properties"])
    assert config.policies.merge == "squash"
    assert config.milestones[0].due_date == "2025-03-31"
    assert config.docs.branch == "quantapilot/docs"


def test_schema_and_models_agree_on_defaults() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    defaults = QuantapilotConfig()
    props = schema["properties"]
    assert props["docs"]["properties"]["output_folder"]["default"] == defaults.docs.output_folder
    # No fixed docs branch: unset means one per run (quantapilot/<run_id>/docs), in the schema and the model.
    assert "default" not in props["docs"]["properties"]["branch"]
    assert defaults.docs.branch is None
    assert props["run"]["properties"]["commands_timeout_s"]["default"] == defaults.run.commands_timeout_s
    assert props["policies"]["properties"]["merge"]["default"] == defaults.policies.merge
    assert props["gates"]["properties"]["docs_lint"]["default"] is defaults.gates.docs_lint
    assert props["gates"]["properties"]["tests_required"]["default"] is defaults.gates.tests_required


# --- defaults


def test_load_none_gives_documented_defaults() -> None:
    config = load_config(None)
    assert config == QuantapilotConfig()
    assert config.version == 1
    assert config.stack == {}
    assert config.models is None
    assert config.budgets is None
    assert config.limits is None
    assert config.steps == []
    assert config.milestones == []
    assert config.gate_definitions == {}
    assert config.gates.docs_lint is True
    assert config.gates.tests_required is False
    assert config.policies.merge == "merge"
    assert config.policies.gates == []
    assert config.policies.data_retention_days is None
    assert config.policies.model_change_requires_gate is False
    assert (config.docs.output_folder, config.docs.branch, config.docs.owners) == (
        "docs",
        None,
        [],
    )
    assert config.run.time_budget_s is None
    assert config.run.commands_timeout_s == 600
    assert effective_gates(config) == ["anchor"]
    assert step_policy(None, config) == (600.0, 3)


def test_load_minimal_file_fills_defaults_and_is_frozen() -> None:
    config = load_config("version: 1\n")
    assert config == QuantapilotConfig()
    with pytest.raises(ValidationError):
        config.version = 2  # type: ignore[misc]


def test_load_seed_fields_keep_their_meaning() -> None:
    config = load_config(
        yml("""
        version: 1
        stack: {language: python, nested: {anything: [1, 2]}}
        models:
          arch: {model: m1, temperature: 0, max_output_tokens: 100}
          qa: {model: m2, temperature: 1}
        budgets: {tokens: 60000, usd: 10.5}
        steps: [{name: plan, timeout_s: 300, retries: 1, tokens_budget: 10}]
        gates: {docs_lint: false, tests_required: true}
        limits: {tokens_per_run: 5, tokens_per_day: 50, timeout_seconds: 1500, max_retries: 2}
        policies: {merge: rebase, gates: [-anchor], data_retention_days: 30, model_change_requires_gate: true}
        """)
    )
    assert config.stack["nested"] == {"anything": [1, 2]}
    assert config.models is not None
    assert config.models.arch is not None
    assert config.models.qa is not None
    assert (config.models.arch.model, config.models.qa.temperature, config.models.dev) == ("m1", 1, None)
    assert config.budgets is not None
    assert (config.budgets.tokens, config.budgets.usd) == (60000, 10.5)
    assert config.gates.docs_lint is False
    assert config.gates.tests_required is True
    assert config.policies.merge == "rebase"
    assert config.policies.data_retention_days == 30
    assert effective_gates(config) == []


def test_load_unquoted_date_stays_a_string() -> None:
    config = load_config(milestones("M-001").replace("title: tM-001", "title: t, due_date: 2025-01-31"))
    assert config.milestones[0].due_date == "2025-01-31"


# --- errors


def test_errors_name_nested_paths() -> None:
    errors = errors_of(
        yml("""
        version: 1
        milestones:
          - id: M-001
            title: first
            steps: [{name: impl, run: make}]
          - id: M-002
            title: second
            steps:
              - {name: test, run: make test, timeout_s: -5}
        """)
    )
    assert [issue.path for issue in errors] == ["milestones[1].steps[0].timeout_s"]
    assert "-5" in errors[0].message


def test_errors_collect_all_problems_sorted_by_path() -> None:
    text = yml("""
        version: 1
        zzz: 1
        budgets: {usd: -1}
        milestones:
    """) + "".join(
        f"  - {{id: M-{index:03d}, title: t, steps: [{{name: impl, run: x, retries: -1}}]}}\n" for index in range(12)
    )
    paths = paths_of(text)
    # Numeric order (milestones[2] before milestones[10]), all errors reported, not just the first.
    assert paths == [
        "budgets",
        "budgets.usd",
        *[f"milestones[{index}].steps[0].retries" for index in range(12)],
        "zzz",
    ]


def test_errors_unknown_keys_named_at_the_key() -> None:
    text = yml("""
        version: 1
        docs: {output_folder: docs, colour: blue}
        milestones: [{id: M-001, title: t, steps: [{name: impl, run: x, timeut_s: 3}]}]
        gate_definitions: {anchor: {timeout: 5}}
        unknown_top: true
    """)
    errors = errors_of(text)
    assert [issue.path for issue in errors] == [
        "docs.colour",
        "gate_definitions.anchor.timeout",
        "milestones[0].steps[0].timeut_s",
        "unknown_top",
    ]
    assert {issue.message for issue in errors} == {"unknown key"}


def test_errors_duplicate_milestone_ids() -> None:
    errors = errors_of(milestones("M-001", "M-002", "M-001"))
    assert [issue.path for issue in errors] == ["milestones[2].id"]
    assert "M-001" in errors[0].message
    assert "milestones[0]" in errors[0].message


def test_errors_bad_merge_strategy() -> None:
    errors = errors_of("version: 1\npolicies: {merge: fast-forward}\n")
    assert [issue.path for issue in errors] == ["policies.merge"]
    assert "squash" in errors[0].message


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("stack: {}\n", "<root>"),  # version is required once the file exists
        ("version: 2\n", "version"),
        ("version: 1\nmilestones: [{id: M-1, title: t}]\n", "milestones[0].id"),
        ("version: 1\nmilestones: [{id: M-001}]\n", "milestones[0]"),
        ("version: 1\nmilestones: [{id: M-001, title: t, due_date: 2025-02-30}]\n", "milestones[0].due_date"),
        (
            "version: 1\nmilestones: [{id: M-001, title: t, steps: [{name: impl}]}]\n",
            "milestones[0].steps[0]",
        ),
        (
            "version: 1\nmilestones: [{id: M-001, title: t, steps: [{name: lint, run: x}]}]\n",
            "milestones[0].steps[0].name",
        ),
        ("version: 1\nsteps: [{name: impl, run: make}]\n", "steps[0].run"),
        ("version: 1\nsteps: [{name: impl}, {name: impl}]\n", "steps[1].name"),
        ("version: 1\nmodels: {dev: {model: m, temperature: 1.5}}\n", "models.dev.temperature"),
        ("version: 1\nbudgets: {usd: 3}\n", "budgets"),
        ("version: 1\nbudgets: {tokens: true}\n", "budgets.tokens"),
        ("version: 1\ngates: {docs_lint: maybe}\n", "gates.docs_lint"),
        ("version: 1\npolicies: {gates: [Bad Name]}\n", "policies.gates[0]"),
        ("version: 1\npolicies: {gates: [-M-009]}\n", "policies.gates[0]"),
        ("version: 1\ngate_definitions: {Bad: {}}\n", "gate_definitions.Bad"),
        ("version: 1\ngate_definitions: {M-001: {}}\n", "gate_definitions.M-001"),
        ("version: 1\ngate_definitions: {anchor: {timeout_s: 0}}\n", "gate_definitions.anchor.timeout_s"),
        (
            "version: 1\ngate_definitions: {anchor: {approvers: ['a b']}}\n",
            "gate_definitions.anchor.approvers[0]",
        ),
        ("version: 1\ndocs: {output_folder: ../outside}\n", "docs.output_folder"),
        ("version: 1\ndocs: {output_folder: /abs}\n", "docs.output_folder"),
        ("version: 1\ndocs: {output_folder: a/./b}\n", "docs.output_folder"),
        ("version: 1\ndocs: {output_folder: x/.GIT/hooks}\n", "docs.output_folder"),
        ("version: 1\ndocs: {branch: --upload-pack=x}\n", "docs.branch"),
        ("version: 1\ndocs: {branch: a..b}\n", "docs.branch"),
        ("version: 1\ndocs: {branch: a.lock}\n", "docs.branch"),
        ("version: 1\nrun: {time_budget_s: 0}\n", "run.time_budget_s"),
        ("version: 1\nrun: {commands_timeout_s: -1}\n", "run.commands_timeout_s"),
    ],
)
def test_errors_invalid_values_name_their_path(text: str, path: str) -> None:
    assert path in paths_of(text)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty document"),
        ("# only a comment\n", "empty document"),
        ("- a\n- b\n", "list"),
        ("just a string\n", "str"),
        ("version: [1\n", "invalid YAML"),
        ("version: 1\n---\nversion: 1\n", "invalid YAML"),
        ("version: 1\nversion: 1\n", "duplicate key"),
        ("version: !!python/object:os.system 1\n", "invalid YAML"),
    ],
)
def test_errors_unusable_documents_at_root(text: str, fragment: str) -> None:
    errors = errors_of(text)
    assert [issue.path for issue in errors] == ["<root>"]
    assert fragment in errors[0].message


def test_errors_yaml_message_does_not_quote_the_source_line() -> None:
    errors = errors_of("version: 1\nsecretish: 'ghp_abcdefghijklmnopqrstuvwxyz0123456789\n")
    assert "ghp_" not in errors[0].message
    assert "line" in errors[0].message


def test_errors_error_message_and_details() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("version: 1\npolicies: {merge: nope}\n", source="repo/quantapilot.yml")
    error = caught.value
    assert str(error).startswith("repo/quantapilot.yml is invalid (1 error): policies.merge: ")
    assert error.details() == [{"path": "policies.merge", "message": error.errors[0].message}]


# --- YAML safety


@pytest.mark.timeout(30)  # expanded, the bomb would take minutes and gigabytes: the per-test timeout catches that
def test_yaml_alias_bomb_refused_quickly() -> None:
    # Nine levels of nine aliases: 9**9 (387 million) leaves once expanded, a few hundred bytes written.
    lines = ['a0: &a0 ["lol"]']
    for level in range(1, 10):
        refs = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    bomb = "version: 1\nstack:\n" + "\n".join("  " + line for line in lines) + "\n"
    errors = errors_of(bomb)
    assert errors[0].path == "<root>"
    assert "alias" in errors[0].message


def test_yaml_expansion_limit_with_few_aliases() -> None:
    # Few aliases, but each points at a large list: the expanded size is what validators walk.
    big = "[" + ", ".join(["1"] * 10_000) + "]"
    text = f"version: 1\nstack:\n  base: &b {big}\n  copies: [*b, *b, *b, *b, *b, *b]\n"
    errors = errors_of(text)
    assert "nodes" in errors[0].message


def test_yaml_recursive_alias_refused() -> None:
    errors = errors_of("version: 1\nstack: &s {self: *s}\n")
    assert "recursive" in errors[0].message


def test_yaml_deep_nesting_refused() -> None:
    errors = errors_of("version: 1\nstack: " + "[" * 500 + "]" * 500 + "\n")
    assert "nesting" in errors[0].message


def test_yaml_size_limit() -> None:
    text = "version: 1\nstack:\n  blob: '" + "x" * MAX_CONFIG_BYTES + "'\n"
    errors = errors_of(text)
    assert "larger than" in errors[0].message


def test_yaml_few_merge_aliases_allowed() -> None:
    config = load_config(
        yml("""
        version: 1
        gate_definitions:
          anchor: &slow {timeout_s: 60, approvers: ["scope:gates"]}
          first_merge:
            <<: *slow
            timeout_s: 30
        """)
    )
    assert gate_settings(config, "first_merge") == GateConfig(timeout_s=30, approvers=["scope:gates"])
    assert gate_settings(config, "anchor").timeout_s == 60


# --- gates


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (milestones(), ["anchor"]),
        (milestones("M-001"), ["anchor", "M-001", "first_merge"]),
        (milestones("M-001", "M-002", "M-003"), ["anchor", "M-001", "first_merge"]),
        (milestones("M-001:gate=false", "M-002"), ["anchor", "first_merge"]),
        (milestones("M-001", "M-002:gate=true", "M-003"), ["anchor", "M-001", "first_merge", "M-002"]),
        (
            milestones("M-001", "M-002") + "policies: {gates: [M-002]}\n",
            ["anchor", "M-001", "first_merge", "M-002"],
        ),
        (milestones("M-001", "M-002") + "policies: {gates: [-first_merge, -anchor]}\n", ["M-001"]),
        (milestones("M-001", "M-002") + "policies: {gates: [-M-001]}\n", ["anchor", "first_merge"]),
        (
            milestones("M-001") + "policies: {gates: [security, cost, security, anchor]}\n",
            ["anchor", "M-001", "first_merge", "security", "cost"],
        ),
        (milestones() + "policies: {gates: [review, -review]}\n", ["anchor"]),
        (milestones() + "policies: {gates: [first_merge]}\n", ["anchor"]),
    ],
)
def test_gates_effective_order(text: str, expected: list[str]) -> None:
    assert effective_gates(load_config(text)) == expected


def test_gates_settings_default_when_undefined() -> None:
    config = load_config(
        yml("""
        version: 1
        milestones: [{id: M-001, title: t}]
        gate_definitions:
          M-001: {description: d, timeout_s: 1.5, approvers: [bot, "scope:admin"], allow_self_approval: true}
        """)
    )
    assert gate_settings(config, "M-001") == GateConfig(
        description="d", timeout_s=1.5, approvers=["bot", "scope:admin"], allow_self_approval=True
    )
    default = gate_settings(config, "anchor")
    assert default == GateConfig()
    # None: the deployment default (QP_ALLOW_SELF_APPROVAL) decides.
    assert (default.timeout_s, default.approvers, default.allow_self_approval) == (None, [], None)


def test_gates_self_approval_floor_narrows_and_never_lifts() -> None:
    config = load_config(
        yml("""
        version: 1
        gate_definitions:
          anchor: {allow_self_approval: true, approvers: [bot]}
          first_merge: {allow_self_approval: false}
          extra: {description: d}
        """)
    )
    floored = with_self_approval_floor(config, allowed=False)
    assert [gate_settings(floored, g).allow_self_approval for g in ("anchor", "first_merge", "extra")] == [
        False,
        False,
        None,  # unset stays unset: the deployment's default (false here) applies
    ]
    assert gate_settings(floored, "anchor").approvers == ["bot"]
    assert with_self_approval_floor(config, allowed=True) is config


@pytest.mark.parametrize(
    ("branch", "refused"),
    [
        (None, False),
        ("quantapilot/rr_mine/docs", False),
        ("quantapilot/rr_mine/x/y", False),
        ("release", False),  # outside every namespace: only ever created (enforced at the push)
        ("quantapilot/docs", False),
        ("quantapilot/rr_other/docs", True),
        ("quantapilot/rr_mine", False),
        ("quantapilot/rr_mine_not/docs", True),
    ],
)
def test_docs_branch_of_another_runs_namespace_is_refused(branch: str | None, refused: bool) -> None:
    config = QuantapilotConfig(docs=DocsConfig(branch=branch))
    assert (docs_branch_problem(config, "rr_mine") is not None) is refused


# --- step policy


def test_step_policy_fallback_chain() -> None:
    config = load_config(
        yml("""
        version: 1
        steps: [{name: impl, timeout_s: 1500, retries: 1}, {name: test, retries: 4}]
        limits: {timeout_seconds: 120, max_retries: 0}
        milestones:
          - id: M-001
            title: t
            steps:
              - {name: impl, run: a, timeout_s: 30, retries: 3}
              - {name: impl, run: b}
              - {name: test, run: c}
              - {name: doc, run: d}
        """)
    )
    own, named, mixed, limits = config.milestones[0].steps
    assert step_policy(own, config) == (30.0, 4)
    assert step_policy(named, config) == (1500.0, 2)
    assert step_policy(mixed, config) == (120.0, 5)
    assert step_policy(limits, config) == (120.0, 1)
    assert step_policy(None, config) == (120.0, 1)


def test_command_policy_fallback_chain_ends_at_commands_timeout_and_no_retry() -> None:
    config = load_config(
        yml("""
        version: 1
        steps: [{name: impl, timeout_s: 1500, retries: 1}]
        run: {commands_timeout_s: 45}
        milestones:
          - id: M-001
            title: t
            steps:
              - {name: impl, run: a, timeout_s: 30, retries: 3}
              - {name: impl, run: b}
              - {name: test, run: c}
        """)
    )
    own, named, bare = config.milestones[0].steps
    assert command_policy(own, config) == (30.0, 4)
    assert command_policy(named, config) == (1500.0, 2)
    # Nothing set: run.commands_timeout_s, and a failing command is not run again.
    assert command_policy(bare, config) == (45.0, 1)
    with_limits = load_config(
        yml("""
        version: 1
        limits: {timeout_seconds: 120, max_retries: 2}
        milestones: [{id: M-001, title: t, steps: [{name: test, run: c}]}]
        """)
    )
    assert command_policy(with_limits.milestones[0].steps[0], with_limits) == (120.0, 3)


def test_step_policy_builtin_defaults() -> None:
    config = load_config("version: 1\n")
    assert step_policy(StepConfig(name="impl", run="make"), config) == (600.0, 3)
    assert step_policy(StepConfig(name="impl", retries=0), config) == (600.0, 1)
    assert step_policy(StepConfig(name="pr", timeout_s=2.5), config) == (2.5, 3)


# --- models


def test_models_reject_unknown_fields_and_escaping_paths() -> None:
    with pytest.raises(ValidationError):
        StepConfig.model_validate({"name": "impl", "command": "x"})
    with pytest.raises(ValidationError):
        DocsConfig(output_folder="docs/../../etc")
    with pytest.raises(ValidationError):
        QuantapilotConfig.model_validate({"milestones": [{"id": "M-001", "title": "a"}, {"id": "M-001", "title": "b"}]})
