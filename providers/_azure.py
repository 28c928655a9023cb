"""Azure OpenAI: OpenAI's chat-completions API behind per-deployment URLs.

Azure names a model by its *deployment*: a request for `gpt-4o` goes to
`{base_url}/openai/deployments/gpt-4o/chat/completions?api-version=...`, where `base_url`
is the resource's endpoint (`https://NAME.openai.azure.com`). The key travels in the
`api-key` header, or an Entra ID token in `Authorization: Bearer` (`auth = "entra"`).
Bodies and streams are OpenAI's (Azure adds content-filter results, which pass through);
a prompt Azure's content filter refuses comes back as a 400 whose message says so.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal
from urllib.parse import quote

import msgspec

from pipeline import Context, ProviderError, Request, ResponseStream

from ._openai import OpenAIProvider

__all__ = ["AzureOptions", "AzureProvider"]

DEFAULT_API_VERSION = "2024-10-21"


class AzureOptions(msgspec.Struct, forbid_unknown_fields=True):
    """The `options` an `azure` provider understands."""

    api_version: str = DEFAULT_API_VERSION
    """The `api-version` query parameter of every request."""
    auth: Literal["api-key", "entra"] = "api-key"
    """How the secret in `api_key_env` is sent: the `api-key` header, or (`entra`) as an
    Entra ID bearer token."""


class AzureProvider(OpenAIProvider):
    """Azure OpenAI deployments behind the OpenAI chat-completions shape.

    The upstream model name (a model's `upstream_model`, or a deployment's) is the Azure
    deployment's name. `validate()` lists the resource's models.

    Args:
      base_url: the resource's endpoint, without `/openai`.
      api_version: the `api-version` query parameter.
      auth: `api-key` (the header) or `entra` (an Entra ID token as a bearer token).
      **kwargs: as for `HTTPProvider`.
    """

    kind = "azure"
    validate_path = "/openai/models"
    Options: ClassVar[type[msgspec.Struct]] = AzureOptions

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_version: str = DEFAULT_API_VERSION,
        auth: Literal["api-key", "entra"] = "api-key",
        **kwargs: Any,
    ) -> None:
        self.api_version = api_version
        self.auth = auth
        super().__init__(base_url, **kwargs)
        self._query = "?api-version=" + quote(api_version, safe="")
        self._validate_url += self._query

    def auth_headers(self, api_key: str) -> dict[str, str]:
        if self.auth == "entra":
            return {"authorization": f"Bearer {api_key}"}
        return {"api-key": api_key}

    def chat_url(self, request: Request) -> str:
        deployment = quote(request.model, safe="")
        return f"{self.base_url}/openai/deployments/{deployment}/chat/completions{self._query}"

    async def execute(self, request: Request, ctx: Context) -> ResponseStream:
        try:
            return await super().execute(request, ctx)
        except ProviderError as exc:
            if exc.code != "content_filter":
                raise
            raise ProviderError(
                f"Azure's content filter refused the request: {exc.message}",
                upstream_status=400,
                provider=self.name,
                code="content_filter",
                param=exc.param,
                status=400,
            ) from None
