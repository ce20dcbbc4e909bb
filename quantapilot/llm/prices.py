"""What model tokens cost: the per-model price table of the settings (``QP_MODEL_PRICES``).

The table maps a model name to its price in US dollars per million input and output tokens, e.g.::

    QP_MODEL_PRICES='{"gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.60}}'

A model missing from the table has no price: a run with ``budgets.usd`` that would use it is refused at start
(``CONFIG_INVALID``) instead of spending money against a guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import BaseModel, ConfigDict, Field

TOKENS_PER_PRICE_UNIT = 1_000_000


class ModelPrice(BaseModel):
    """The price of one model in US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_mtok: float = Field(ge=0, description="USD per million input (prompt) tokens.")
    output_per_mtok: float = Field(ge=0, description="USD per million output (completion) tokens.")

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """The cost of one call in US dollars."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / TOKENS_PER_PRICE_UNIT


def unpriced(models: Iterable[str], table: Mapping[str, ModelPrice]) -> list[str]:
    """The models of ``models`` the table has no price for, sorted and without repeats."""
    return sorted({m for m in models if m not in table})


def cost_of(model: str, input_tokens: int, output_tokens: int, table: Mapping[str, ModelPrice]) -> float | None:
    """The cost of a call, or None when the model has no price."""
    price = table.get(model)
    return None if price is None else price.cost(input_tokens, output_tokens)
