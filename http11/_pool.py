"""A LIFO connection pool per origin, with at most `size` connections per origin.

A request holds a *lease* from acquiring a slot until its response is closed. The lease
reuses the most recently returned idle connection (warm, and likely still open), or
leaves the caller to open a new one. A connection idle for more than `FRESH_SECONDS` is
first probed (is it readable, that is, closed by the peer?); one returned less than that
ago is reused without the probe (a system call per request under load): a peer that did
close it meanwhile is caught by the client's retry of a request that got no answer.
Releasing a lease is synchronous, so it is safe on every path, cancellation included; a
slot wait that is cancelled takes nothing.
"""

from __future__ import annotations

import select
from dataclasses import dataclass
from typing import Protocol

import trio

__all__ = ["Lease", "Pool", "PoolStatistics"]

Origin = tuple[str, str, int]

FRESH_SECONDS = 0.5


class Pooled(Protocol):
    """What the pool needs from a connection."""

    def fileno(self) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of a pool (or of one origin's share of it).

    Attributes:
        connections: open connections, idle or leased.
        idle: open connections waiting in the pool for a request.
        in_use: leases held by requests (each has, or is opening, one connection).
        waiting: requests waiting for a free slot.
    """

    connections: int
    idle: int
    in_use: int
    waiting: int


def _looks_closed(conn: Pooled) -> bool:
    """An idle connection is readable only if the peer closed it (or misbehaved)."""
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _Origin:
    __slots__ = ("closed", "idle", "leased", "slots")

    def __init__(self, size: int) -> None:
        self.closed = False
        self.idle: list[tuple[Pooled, float]] = []  # (connection, when it went idle)
        self.slots = trio.Semaphore(size)
        self.leased = 0  # leases holding a connection


class Lease:
    """The right to use one connection of an origin until `release`."""

    __slots__ = ("_origin", "_released", "conn", "reused")

    def __init__(self, origin: _Origin) -> None:
        self._origin = origin
        self._released = False
        self.conn: Pooled | None = None
        self.reused = False

    def take_idle(self) -> Pooled | None:
        """The most recently used idle connection that still looks open, or None."""
        idle = self._origin.idle
        if not idle:
            return None
        fresh_since = trio.current_time() - FRESH_SECONDS
        while idle:
            conn, since = idle.pop()
            if since > fresh_since or not _looks_closed(conn):
                self.attach(conn)
                self.reused = True
                return conn
            conn.close()
        return None

    def attach(self, conn: Pooled) -> None:
        if self.conn is None:
            self._origin.leased += 1
        self.conn = conn
        self.reused = False

    def discard(self) -> None:
        """Close the leased connection (if any) but keep the slot."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
            self._origin.leased -= 1

    def release(self, reusable: bool) -> None:
        """Give the slot back; the connection goes idle if `reusable`, else it is closed."""
        if self._released:
            return
        self._released = True
        conn = self.conn
        if conn is not None:
            self.conn = None
            self._origin.leased -= 1
            if reusable and not self._origin.closed:
                self._origin.idle.append((conn, trio.current_time()))
            else:
                conn.close()
        self._origin.slots.release()


class Pool:
    """Connection slots and idle connections, per origin."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("the pool size must be at least 1")
        self.size = size
        self._origins: dict[Origin, _Origin] = {}

    async def acquire(self, origin: Origin) -> Lease:
        """Wait for a free slot of `origin` (LIFO reuse is up to the lease)."""
        state = self._origins.get(origin)
        if state is None:
            state = self._origins[origin] = _Origin(self.size)
        # A free slot is taken without yielding to the scheduler (Semaphore.acquire always
        # does): one scheduler pass less per request; only a full pool waits.
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            state.slots.acquire_nowait()
        except trio.WouldBlock:
            await state.slots.acquire()
        return Lease(state)

    def statistics(self, origin: Origin | None = None) -> PoolStatistics:
        """A snapshot of one origin, or of all of them added up."""
        states = list(self._origins.values())
        if origin is not None:
            states = [self._origins[origin]] if origin in self._origins else []
        idle = sum(len(s.idle) for s in states)
        leased = sum(s.leased for s in states)
        in_use = sum(self.size - s.slots.value for s in states)
        waiting = sum(s.slots.statistics().tasks_waiting for s in states)
        return PoolStatistics(idle + leased, idle, in_use, waiting)

    def close(self) -> None:
        """Close every idle connection (leased ones close when their lease ends)."""
        for state in self._origins.values():
            state.closed = True
            while state.idle:
                state.idle.pop()[0].close()
