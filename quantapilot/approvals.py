"""Bounds of N-of-M gates that both gate definitions share: ``quantapilot.yml`` and a lifecycle request's ``gate``."""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import Field

# The most approvals a gate may require: enough for any review board, small enough that no gate waits for ever on
# a number nobody can reach.
MAX_REQUIRED_APPROVALS: Final = 20

#: The ``required_approvals`` field of a gate definition, as both definitions publish it.
RequiredApprovals = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_REQUIRED_APPROVALS,
        description=(
            "Distinct approvals the gate needs (N-of-M, at most 20): it passes once that many subjects approved, one "
            "rejection rejects it, the same subject twice counts once. When approvers names subjects only (no "
            "'scope:' entry), at most their number."
        ),
    ),
]


def required_approvals_issue(required: int, approvers: list[str]) -> str | None:
    """Why a gate's ``required_approvals`` cannot be met by its ``approvers``, or None when it can.

    A list of named subjects only (no ``scope:<scope>`` entry) caps the distinct approvers; a scope entry admits
    any number of token holders, and an empty list anyone allowed to decide gates.

    Args:
        required: The gate's ``required_approvals``.
        approvers: The gate's ``approvers`` (subjects or ``scope:<scope>``).

    Returns:
        A message for the configuration error, or None.
    """
    if not approvers or any(entry.startswith("scope:") for entry in approvers):
        return None
    named = len(set(approvers))
    if required > named:
        return f"required_approvals {required} exceeds the {named} named approver{'' if named == 1 else 's'}"
    return None
