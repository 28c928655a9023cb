"""Middlewares: auth, rate limiting, caching, logging, retries and more, one module each."""

__all__: list[str] = []
