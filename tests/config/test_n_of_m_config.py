"""``required_approvals`` in quantapilot.yml: bounds, reachability by the named approvers, and what a run gets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from quantapilot.repos.config import GateConfig, QuantapilotConfig
from quantapilot.repos.config_loader import ConfigError, ConfigIssue, load_config
from quantapilot.repos.policy import gate_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quantapilot.yml"


def errors_of(text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as err:
        load_config(text)
    return err.value.errors


def anchor(body: str) -> str:
    return f"version: 1\ngate_definitions:\n  anchor: {body}\n"


def test_n_of_m_config_two_of_three_is_read() -> None:
    config = load_config(anchor("{required_approvals: 2, approvers: [alice, bob, carol]}"))
    settings = gate_settings(config, "anchor")
    assert (settings.required_approvals, list(settings.approvers)) == (2, ["alice", "bob", "carol"])
    # Gates without the key keep one decision.
    assert gate_settings(config, "first_merge").required_approvals == 1


def test_n_of_m_config_example_has_a_two_of_three_gate() -> None:
    config = load_config(EXAMPLE.read_text(encoding="utf-8"))
    assert gate_settings(config, "security_review").required_approvals == 2


@pytest.mark.parametrize(
    "value",
    ["0", "-1", "21", "1000000000000000000000000000000", "1.5", "true", "'2'", "null", "[2]", ".inf"],
)
def test_n_of_m_config_out_of_range_or_wrong_type_is_refused(value: str) -> None:
    errors = errors_of(anchor(f"{{required_approvals: {value}, approvers: ['scope:gates:decide']}}"))
    assert "gate_definitions.anchor.required_approvals" in [e.path for e in errors], errors


@pytest.mark.parametrize(
    ("approvers", "required"),
    [("[alice, bob]", 3), ("[alice]", 2), ("[alice, alice, bob]", 3), ("[alice, bob, carol]", 20)],
)
def test_n_of_m_config_more_than_the_named_approvers_is_refused(approvers: str, required: int) -> None:
    errors = errors_of(anchor(f"{{required_approvals: {required}, approvers: {approvers}}}"))
    assert [e.path for e in errors] == ["gate_definitions.anchor.required_approvals"]
    assert "exceeds" in errors[0].message


def test_n_of_m_config_a_scope_or_no_list_lifts_the_named_cap() -> None:
    scoped = load_config(anchor("{required_approvals: 20, approvers: [alice, 'scope:gates:decide']}"))
    assert gate_settings(scoped, "anchor").required_approvals == 20
    anyone = load_config(anchor("{required_approvals: 3}"))
    assert gate_settings(anyone, "anchor").required_approvals == 3


def test_n_of_m_config_models_built_in_code_follow_the_same_rules() -> None:
    with pytest.raises(ValidationError):
        GateConfig(required_approvals=0)
    with pytest.raises(ValidationError):
        GateConfig(required_approvals=21)
    with pytest.raises(ValidationError, match="exceeds"):
        QuantapilotConfig(gate_definitions={"anchor": GateConfig(required_approvals=2, approvers=["alice"])})
