"""Test doubles shared by the stateful middlewares' tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from middlewares import Bucket, MemoryStore, Reservation, StoreError


class FlakyStore(MemoryStore):
    """A memory store that raises `StoreError` from every operation while `failing` is set.

    The middlewares' `on_error` policy is what the tests check; this double plays the
    store that went away (and, when `failing` is cleared, the store that came back).
    """

    def __init__(self, failing: bool = True) -> None:
        super().__init__()
        self.failing = failing
        self.failures = 0

    def _check(self) -> None:
        if self.failing:
            self.failures += 1
            raise StoreError("connection refused")

    async def reserve(self, buckets: Sequence[Bucket]) -> Reservation:
        self._check()
        return await super().reserve(buckets)

    async def settle(self, buckets: Sequence[Bucket]) -> None:
        self._check()
        await super().settle(buckets)

    async def acquire_slots(self, limits: Mapping[str, int], lease: float) -> str | None:
        self._check()
        return await super().acquire_slots(limits, lease)

    async def release_slots(self, keys: Sequence[str], slot: str) -> None:
        self._check()
        await super().release_slots(keys, slot)

    async def cache_get(self, key: str) -> bytes | None:
        self._check()
        return await super().cache_get(key)

    async def cache_set(self, key: str, value: bytes, ttl: float) -> None:
        self._check()
        await super().cache_set(key, value, ttl)

    async def try_lock(self, key: str, ttl: float) -> str | None:
        self._check()
        return await super().try_lock(key, ttl)

    async def unlock(self, key: str, token: str) -> None:
        self._check()
        await super().unlock(key, token)
