"""Providers: the upstream end of a pipeline."""

from ._mock import MockProvider

__all__ = ["MockProvider"]
