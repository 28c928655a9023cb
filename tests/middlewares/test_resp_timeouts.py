"""Our RESP client's bounded waits: the watchdog that ends them without a cancel scope each."""

from __future__ import annotations

import ssl

import pytest
import trio
import trio.testing
import trustme

from middlewares._resp import CallTimeout, RespClient


class SilentRedis:
    """A server that reads commands and answers each PING with PONG once `answer` is set."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.answer = trio.Event()
        self.port = 0
        self.tls = tls

    async def serve(self, nursery: trio.Nursery) -> None:
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
        for listener in await trio.open_tcp_listeners(0, host="127.0.0.1"):
            self.port = listener.socket.getsockname()[1]
            tls = self.tls
            listeners.append(listener if tls is None else trio.SSLListener(listener, tls))
        nursery.start_soon(trio.serve_listeners, self._handle, listeners)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        unanswered = 0
        async with stream:
            while True:
                with trio.move_on_after(0.01 if not self.answer.is_set() else 1):
                    data = await stream.receive_some()
                    if not data:
                        return
                    unanswered += data.count(b"PING")
                if self.answer.is_set() and unanswered:
                    await stream.send_all(b"+PONG\r\n" * unanswered)
                    unanswered = 0


async def test_every_waiting_call_of_a_silent_redis_times_out_on_the_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The reading caller and a parked one (shielded or not) each get CallTimeout."""
    redis = SilentRedis()
    async with trio.open_nursery() as nursery:
        await redis.serve(nursery)
        async with RespClient(f"redis://127.0.0.1:{redis.port}/0") as client:
            outcomes: list[str] = []

            async def call(shield: bool) -> None:
                try:
                    await client.ping().within(2.0, shield)
                except CallTimeout:
                    outcomes.append("timed out")

            with trio.fail_after(60):
                async with trio.open_nursery() as calls:
                    calls.start_soon(call, False)
                    calls.start_soon(call, True)
                    calls.start_soon(call, False)
            assert outcomes == ["timed out"] * 3
            assert client._deadlines == {}
        nursery.cancel_scope.cancel()


async def test_after_a_timeout_the_connection_stays_in_step() -> None:
    """The late reply is dropped; a shielded wait outlives its caller's cancellation."""
    redis = SilentRedis()
    async with trio.open_nursery() as nursery:
        await redis.serve(nursery)
        async with RespClient(f"redis://127.0.0.1:{redis.port}/0") as client:
            with trio.fail_after(30), pytest.raises(CallTimeout):
                await client.ping().within(0.2, False)
            redis.answer.set()
            # The late reply is read and dropped; the next one is this call's.
            assert await client.ping().within(10.0, False) == b"PONG"
            with trio.CancelScope() as scope:
                reply = client.ping()
                scope.cancel()
                # Shielded: the wait ends with the reply, not Cancelled.
                assert await reply.within(10.0, True) == b"PONG"
                await trio.lowlevel.checkpoint()  # ... and the next checkpoint is cancelled
                pytest.fail("not cancelled")  # pragma: no cover
            assert scope.cancelled_caught
            with trio.CancelScope() as scope:
                reply = client.ping()
                scope.cancel()
                await reply.within(10.0, False)
            assert scope.cancelled_caught
            assert await client.ping().within(10.0, False) == b"PONG"
        nursery.cancel_scope.cancel()


async def test_over_tls_a_silent_redis_times_out_too() -> None:
    """TLS streams cannot be woken by the watchdog: their waits use a cancel scope."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    redis = SilentRedis(server)
    async with trio.open_nursery() as nursery:
        await redis.serve(nursery)
        url = f"rediss://127.0.0.1:{redis.port}/0?ssl_cert_reqs=none"
        async with RespClient(url) as client:
            timed_out: list[bool] = []

            async def call(shield: bool) -> None:
                with pytest.raises(CallTimeout):
                    await client.ping().within(0.2, shield)
                timed_out.append(shield)

            with trio.fail_after(30):
                async with trio.open_nursery() as calls:  # one reads, the other is parked
                    calls.start_soon(call, True)
                    calls.start_soon(call, True)
            assert timed_out == [True, True]
            redis.answer.set()
            assert await client.ping().within(10.0, False) == b"PONG"
        nursery.cancel_scope.cancel()
