"""Cheap token estimates for requests, used before the upstream reports real usage."""

from __future__ import annotations

from ._types import Request

__all__ = ["estimate_prompt_tokens", "estimate_tokens"]

# About four characters per token for English text with common tokenizers; an estimate is
# only used to reserve budget before the call and is settled with real usage afterwards.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def estimate_tokens(text: str | int) -> int:
    """Estimate the tokens in `text`, or in a text of `text` characters (at least one for
    non-empty text). A stream counts its characters as they pass instead of keeping them."""
    chars = text if isinstance(text, int) else len(text)
    return (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def estimate_prompt_tokens(request: Request) -> int:
    """Estimate the prompt tokens of a request: its messages' text plus a per-message
    overhead, and an embeddings call's input (each text estimated, each token array
    counted exactly)."""
    total = 0
    for message in request.messages:
        total += TOKENS_PER_MESSAGE + estimate_tokens(message.text)
        if message.reasoning_content:
            total += estimate_tokens(message.reasoning_content)
        for call in message.tool_calls or ():
            total += estimate_tokens(call.function.name) + estimate_tokens(call.function.arguments)
    if request.input is not None:
        total += _input_tokens(request.input)
    return total


def _input_tokens(value: object) -> int:
    """Tokens of an embeddings input: a text, a token array, or a list of either."""
    if isinstance(value, str):
        return estimate_tokens(value)
    if isinstance(value, int):
        return 1
    if isinstance(value, list):
        return sum(_input_tokens(item) for item in value)
    return 0
