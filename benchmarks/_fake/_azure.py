"""Azure OpenAI (`POST /openai/deployments/{deployment}/chat/completions`), wire-exact.

Bodies and streams are OpenAI's, under the deployment's name; the key comes in the
`api-key` header (or an Entra ID token as `Authorization: Bearer`), `api-version` is
required, and a prompt containing `CONTENT_FILTER_TRIGGER` is refused the way Azure's
content filter refuses one: a 400 with code `content_filter`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ._answer import BadRequest, Call, Reply, encoder
from ._config import FakeConfig
from ._openai import OPENAI, openai_error

__all__ = ["CONTENT_FILTER_TRIGGER", "AzureChat", "azure_content_filter"]

CONTENT_FILTER_TRIGGER = "FILTER_ME"
"""A prompt containing this is refused by the fake's content filter."""


def azure_content_filter() -> bytes:
    """Azure's refusal of a filtered prompt."""
    message = (
        "The response was filtered due to the prompt triggering Azure OpenAI's content "
        "management policy."
    )
    return encoder.encode(
        {
            "error": {
                "message": message,
                "type": None,
                "param": "prompt",
                "code": "content_filter",
                "status": 400,
                "innererror": {
                    "code": "ResponsibleAIPolicyViolation",
                    "content_filter_result": {"hate": {"filtered": True, "severity": "high"}},
                },
            }
        }
    )


@dataclass(frozen=True)
class AzureChat:
    """One deployment's chat completions: the model is the deployment's name."""

    deployment: str

    def check_key(self, headers: Mapping[str, str], key: str) -> BadRequest | None:
        if headers.get("api-key") == key or headers.get("authorization") == f"Bearer {key}":
            return None
        message = (
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
            "to provide a valid key for an active subscription."
        )
        return BadRequest(401, encoder.encode({"error": {"code": "401", "message": message}}))

    def decode(self, body: bytes, config: FakeConfig) -> Call:
        if CONTENT_FILTER_TRIGGER.encode() in body:
            raise BadRequest(400, azure_content_filter())
        return OPENAI.decode(body, config)._replace(model=self.deployment)

    def error(self, status: int, message: str) -> bytes:
        return openai_error(status, message)

    def render(self, call: Call, config: FakeConfig) -> Reply:
        return OPENAI.render(call, config)
