"""Authentication: API keys, each with an id, the models it may use, and its limits.

A key arrives as `Authorization: Bearer <key>` or `x-api-key: <key>`. The middleware
hashes it with SHA-256 and looks the digest up in a dict, so no secret is ever compared
character by character (the time a lookup takes tells nothing about the key), and only
digests are kept: the raw key is dropped as soon as it is hashed, and only the key's *id*
reaches the context, the logs and the metrics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Annotated

import msgspec

from pipeline import (
    ApiKey,
    AuthenticationError,
    ConfigError,
    Context,
    Handler,
    PermissionDeniedError,
    PositiveInt,
    Request,
    ResponseStream,
    Section,
    read_secret,
)

__all__ = ["Auth", "KeyConfig"]

Sha256Hex = Annotated[str, msgspec.Meta(pattern="^[0-9a-fA-F]{64}$")]


class KeyConfig(Section):
    """A client API key: its id, where its secret is, and what it may do."""

    id: str
    """The key's public name, in logs, metrics and limits (never the secret)."""
    key_env: str | None = None
    """The environment variable that holds the secret (give this or `key_sha256`)."""
    key_sha256: Sha256Hex | None = None
    """The SHA-256 of the secret, in hex, so the secret itself is kept nowhere."""
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    """Glob patterns (`gpt-4o*`, `*`) of the model names the key may use."""
    requests_per_minute: PositiveInt | None = None
    """This key's requests per minute (unset: `[ratelimit]`'s)."""
    tokens_per_minute: PositiveInt | None = None
    """This key's tokens per minute (unset: `[ratelimit]`'s)."""
    max_concurrency: PositiveInt | None = None
    """This key's requests in flight (unset: `[concurrency] per_key`)."""
    admin: bool = False
    """The key may read `/metrics` (which names key ids, models and their counts)."""

    def api_key(self) -> ApiKey:
        """The key's settings as the context carries them (its secret is handled by `Auth`)."""
        return ApiKey(
            id=self.id,
            models=tuple(self.models),
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            max_concurrency=self.max_concurrency,
            admin=self.admin,
        )


ANONYMOUS = "anonymous"
"""The key id the limiters use for requests no auth middleware identified (they share it)."""


# RFC 6750: a 401 tells the client which scheme to use.
_CHALLENGE = {"www-authenticate": "Bearer"}


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _same_secret(first: ApiKey, second: ApiKey) -> ConfigError:
    return ConfigError(f"the keys `{first.id}` and `{second.id}` have the same secret")


class Auth:
    """Reject requests without a known API key, or for a model the key may not use.

    On success sets `ctx.key_id` and `ctx.key` (the `ApiKey`), which the rate and
    concurrency limiters read. With no keys configured every request is rejected.

    Args:
      keys: raw key -> its settings; the keys are hashed here and not kept.
      hashed: SHA-256 hex digest of a key -> its settings (as in the configuration file,
        so the file never holds a secret; `Auth.hash_key` computes one).

    Raises:
      ConfigError: a digest is malformed, or two entries have the same key or the same id.
    """

    def __init__(
        self,
        keys: Mapping[str, ApiKey] | None = None,
        *,
        hashed: Mapping[str, ApiKey] | None = None,
    ) -> None:
        by_digest: dict[bytes, ApiKey] = {}
        entries = [(_digest(secret), key) for secret, key in (keys or {}).items()]
        for hex_digest, key in (hashed or {}).items():
            try:
                digest = bytes.fromhex(hex_digest)
            except ValueError:
                digest = b""
            if len(digest) != hashlib.sha256().digest_size:
                raise ConfigError(f"the key digest for `{key.id}` is not 64 hex digits")
            entries.append((digest, key))
        ids: set[str] = set()
        for digest, key in entries:
            if digest in by_digest:
                raise _same_secret(by_digest[digest], key)
            if key.id in ids:
                raise ConfigError(f"duplicate key id `{key.id}`")
            by_digest[digest] = key
            ids.add(key.id)
        self._keys = by_digest

    @classmethod
    def from_config(cls, keys: Sequence[KeyConfig]) -> Auth:
        """Build from the `[[keys]]` entries, reading each `key_env` from the environment.

        Raises:
          ConfigError: naming the variable, when a `key_env` variable is unset or empty.
        """
        raw: dict[str, ApiKey] = {}
        hashed: dict[str, ApiKey] = {}
        for entry in keys:
            key = entry.api_key()
            if entry.key_env is not None:
                secret = read_secret(entry.key_env, what=f"key `{entry.id}`")
                if secret in raw:
                    raise _same_secret(raw[secret], key)
                raw[secret] = key
            elif entry.key_sha256 is not None:
                hashed[entry.key_sha256] = key
            else:
                raise ConfigError(f"key `{entry.id}` needs `key_env` or `key_sha256`")
        return cls(raw, hashed=hashed)

    @staticmethod
    def hash_key(secret: str) -> str:
        """The SHA-256 hex digest of a key, as the configuration's `key_sha256` wants it."""
        return hashlib.sha256(secret.encode()).hexdigest()

    @property
    def key_ids(self) -> list[str]:
        """The ids of the keys this middleware accepts."""
        return [key.id for key in self._keys.values()]

    def __repr__(self) -> str:
        return f"Auth(key_ids={self.key_ids!r})"

    def authenticate(self, headers: Mapping[str, str]) -> ApiKey:
        """The key the request's headers carry (names lowercased).

        The server uses this for endpoints outside the pipeline (`GET /v1/models`).

        Raises:
          AuthenticationError: no key, a malformed `Authorization` header, or an unknown key.
        """
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, secret = authorization.strip().partition(" ")
            if scheme.lower() != "bearer":
                raise AuthenticationError(
                    "The Authorization header must be `Bearer <API key>`.", headers=_CHALLENGE
                )
            secret = secret.strip()
        else:
            secret = headers.get("x-api-key", "").strip()
        if not secret:
            raise AuthenticationError(
                "No API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`.",
                code="missing_api_key",
                headers=_CHALLENGE,
            )
        key = self._keys.get(_digest(secret))
        if key is None:
            raise AuthenticationError("Invalid API key.", headers=_CHALLENGE)
        return key

    async def __call__(self, request: Request, ctx: Context, call_next: Handler) -> ResponseStream:
        key = self.authenticate(ctx.headers)
        ctx.key_id = key.id
        ctx.key = key
        if not key.allows(request.model):
            raise PermissionDeniedError(
                f"This API key may not use the model `{request.model}`.", param="model"
            )
        return await call_next(request, ctx)
