"""Model providers: the interface, the OpenAI-compatible implementation, prices and the provider registry."""

from quantapilot.llm.prices import ModelPrice, cost_of, unpriced
from quantapilot.llm.provider import ChatMessage, ModelError, ModelProvider, ModelReply, ModelRequest

__all__ = [
    "ChatMessage",
    "ModelError",
    "ModelPrice",
    "ModelProvider",
    "ModelReply",
    "ModelRequest",
    "cost_of",
    "unpriced",
]
