"""A small Redis client on trio sockets: commands from every task share one connection.

The Redis store's hot path is a few commands per request. A general client (coredis) hands
each command and reply between tasks through anyio, which costs several times the round
trip itself. This one keeps to what the store needs:

- one connection (TCP, TLS or a Unix socket), opened on first use and again after it
  breaks, with `AUTH` and `SELECT` first;
- `send()` queues a command and returns its `Reply` at once; the first task that awaits a
  reply writes out every command queued by then in one `send_all` (commands from
  concurrent requests, and the several calls one request starts before it waits, go out
  together);
- there is no reader task: a caller waiting for its reply reads the socket itself when
  nobody else is reading, parses with hiredis (C) and hands every reply it finds to its
  caller, in order; once its own reply is in, it passes the reading on to the next caller
  still waiting. One call thus costs one wait for the socket, not three task switches
  (caller, reader, caller again);
- a caller that stops waiting (cancelled, timed out) leaves its place in the queue: its
  reply is read and dropped when it comes, so the connection stays in step;
- a wait bounded by a timeout (`Pending.within`) costs no cancel scope (about 5 us to
  enter and leave, and an entry in trio's deadline heap): it records its deadline with the
  client, whose watchdog task, running only while such waits are in progress, checks them
  a few times per timeout (at most once a second) and wakes the late ones, which raise
  `CallTimeout`, up to one tick late. A late caller that is reading the socket is woken
  with `notify_closing` (the socket stays open: the next reader waits on it again). Over
  TLS (whose stream cannot be woken that way) the wait uses a cancel scope;
- scripts run with `EVALSHA`, falling back to `EVAL` (which also loads the script) when
  Redis answers `NOSCRIPT` (after a restart or a `SCRIPT FLUSH`).

Errors: a broken or refused connection fails every command waiting on it with
`ConnectionError` (the next command opens a new one); an error reply raises `ReplyError`.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections import deque
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
import trio
from trio._core import _run as _trio_run

# trio's run state (private): its run queue is one attribute away. None if trio moved it.
_RUN_CONTEXT: Any = getattr(_trio_run, "GLOBAL_RUN_CONTEXT", None)

__all__ = ["CallTimeout", "Pending", "ReplyError", "RespClient", "RespStatistics", "Script"]

ReplyError = hiredis.ReplyError
"""An error reply from Redis (`ERR ...`, `NOSCRIPT ...`, `WRONGPASS ...`)."""

Arg = str | bytes | int | float


class CallTimeout(TimeoutError):
    """A wait bounded by `Pending.within` ended without the reply (Redis may still run it)."""


_MIN_TICK = 0.05
_MAX_TICK = 1.0
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")


def _encode(args: Sequence[Arg]) -> bytes:
    """A command in RESP: an array of bulk strings (packed by hiredis, in C)."""
    # hiredis types its argument as a 1-tuple; it takes any length.
    return cast(bytes, hiredis.pack_command(tuple(args)))  # type: ignore[arg-type]


class Pending:
    """What a queued command or script returns: await it for the reply."""

    __slots__ = ()

    @property
    def ready(self) -> bool:
        """Whether the reply is in, so that awaiting it neither waits nor does I/O."""
        raise NotImplementedError

    async def within(self, seconds: float, shield: bool) -> Any:
        """The reply, waited for at most `seconds` (up to one watchdog tick more).

        With `shield`, the caller's cancellation does not end the wait (it takes effect at
        the caller's next checkpoint), as in a shielded cancel scope.

        Raises:
          CallTimeout: no reply within `seconds`.
          ReplyError, ConnectionError: as when awaited.
        """
        raise NotImplementedError


class Reply(Pending):
    """The answer to one queued command; await it for the value.

    Raises (when awaited):
      ReplyError: Redis answered with an error.
      ConnectionError: the connection broke or could not be opened.
    """

    __slots__ = ("_client", "_done", "_late", "_sent", "_task", "_value")

    def __init__(self, client: RespClient) -> None:
        self._client = client
        self._done = False
        self._late = False
        self._sent = False
        self._task: trio.lowlevel.Task | None = None
        self._value: Any = None

    @property
    def ready(self) -> bool:
        return self._done

    def _set(self, value: Any) -> None:
        self._value = value
        self._done = True
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)

    async def result(self) -> Any:
        if not self._done:
            await self._wait(False)
        value = self._value
        if isinstance(value, Exception):
            raise value
        return value

    async def within(self, seconds: float, shield: bool) -> Any:
        if not self._done:
            client = self._client
            if client._tls is not None:
                await self._wait_scoped(seconds, shield)
            else:
                deadline = trio.current_time() + seconds
                client._watch(self, deadline, seconds)
                try:
                    await self._wait(shield)
                except trio.Cancelled:
                    if not shield:
                        raise
                    # Cancelled while reading the socket (a parked shielded caller is not
                    # cancelled): wait on, shielded; the caller's next checkpoint raises.
                    with trio.CancelScope(shield=True):
                        client._watch(self, deadline, seconds)
                        await self._wait(True)
                finally:
                    client._deadlines.pop(self, None)
        value = self._value
        if isinstance(value, Exception):
            raise value
        return value

    async def _wait_scoped(self, seconds: float, shield: bool) -> None:
        with trio.CancelScope(deadline=trio.current_time() + seconds, shield=shield):
            await self._wait(False)  # the scope shields, and must be able to end the wait
            return
        raise CallTimeout(f"no reply within {seconds:g} s")

    async def _wait(self, shield: bool) -> None:
        """Until the reply is in (or the watchdog finds this wait late: `CallTimeout`)."""
        client = self._client
        await client._flush()
        while not self._done:
            if self._late:
                raise CallTimeout("no reply in time")
            if self._sent and not client._reading:
                await client._read_until(self)
                continue
            # Someone else reads (they wake us with our reply, or to read in their place),
            # or is still writing our command out (and reads after it).
            self._task = trio.lowlevel.current_task()

            def abort(_: Any) -> trio.lowlevel.Abort:
                if shield:
                    return trio.lowlevel.Abort.FAILED  # woken as usual; cancelled after
                # The reply is still read when it comes (and dropped): the queue stays in step.
                self._task = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.result().__await__()


class RespClient:
    """A Redis connection shared by every task of the process (see the module's notes).

    Use it inside `async with client:` (the reader task lives in a nursery of its own).

    Args:
      url: `redis://[[user]:password@]host[:port][/db]`, `rediss://...` with the `ssl_*`
        options of the query (`ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`,
        `ssl_cert_reqs=none`, `ssl_check_hostname`), or `unix:///path.sock?db=N`.
      connect_timeout: seconds to open a connection and pass `AUTH` and `SELECT`.

    Raises:
      ValueError: the URL is malformed or its scheme is not one of those.
    """

    def __init__(self, url: str, *, connect_timeout: float = 1.0) -> None:
        parts = urlsplit(url)
        query = {name: values[0] for name, values in parse_qs(parts.query).items()}
        self._scheme = parts.scheme
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unknown scheme `{parts.scheme}`")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._path = parts.path
        db = query.get("db") or (parts.path.strip("/") if parts.scheme != "unix" else "")
        self._db = int(db or 0)
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password is not None else None
        self._tls: ssl.SSLContext | None = None
        if parts.scheme == "rediss":
            self._tls = _tls_context({k: v for k, v in query.items() if k in TLS_OPTIONS})
        self._connect_timeout = connect_timeout
        self._stream: trio.abc.Stream | None = None
        self._reader = hiredis.Reader()
        self._reading = False
        self._commands = 0
        self._writes = 0
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None
        self._queued: list[bytes] = []
        self._queued_replies: list[Reply] = []
        self._waiting: deque[Reply] = deque()
        self._flushing = False
        self._connecting: trio.Lock = trio.Lock()
        self._deadlines: dict[Reply, float] = {}  # bounded waits in progress -> deadline
        self._tick = _MAX_TICK
        self._watching = False
        self._read_for: Reply | None = None  # whose reply the reading task waits for

    async def __aenter__(self) -> RespClient:
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        nursery, self._nursery = self._nursery, None
        if nursery is not None:
            nursery.cancel_scope.cancel()
        stream, self._stream = self._stream, None
        self._drop(ConnectionError("the client is closed"))
        if stream is not None:
            # Wakes a caller still reading it. Shielded: the nursery below must still exit.
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
        await self._nursery_cm.__aexit__(exc_type, exc, tb)

    # -- commands --------------------------------------------------------------------------

    def send(self, *args: Arg) -> Reply:
        """Queue one command; it is written when someone awaits a reply."""
        reply = Reply(self)
        if self._nursery is None:
            reply._set(ConnectionError("the client is not open"))
            return reply
        self._queued.append(_encode(args))
        self._queued_replies.append(reply)
        return reply

    def ping(self) -> Reply:
        return self.send("PING")

    def get(self, name: str) -> Reply:
        """Await the reply for the value (bytes, or None when there is none)."""
        return self.send("GET", name)

    def set(self, name: str, value: bytes | str, *, px: int) -> Reply:
        return self.send("SET", name, value, "PX", px)

    def delete(self, names: Sequence[str]) -> Reply:
        return self.send("DEL", *names)

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    def statistics(self) -> RespStatistics:
        """How many commands this client sent, and in how many writes (round trips)."""
        return RespStatistics(commands=self._commands, writes=self._writes)

    # -- timeouts --------------------------------------------------------------------------

    def _watch(self, reply: Reply, deadline: float, timeout: float) -> None:
        """Record a bounded wait; start the watchdog if it is not running."""
        self._deadlines[reply] = deadline
        if timeout / 4 < self._tick:
            self._tick = max(_MIN_TICK, timeout / 4)
        if not self._watching and self._nursery is not None:
            self._watching = True
            self._nursery.start_soon(self._watchdog)

    async def _watchdog(self) -> None:
        """Every tick, wake the waits past their deadline; end at a tick with none waiting."""
        deadlines = self._deadlines
        try:
            while True:
                await trio.sleep(self._tick)
                if not deadlines:
                    return  # the next bounded wait starts us again
                now = trio.current_time()
                for reply, deadline in list(deadlines.items()):
                    if deadline <= now:
                        del deadlines[reply]
                        self._interrupt(reply)
        finally:
            self._watching = False

    def _interrupt(self, reply: Reply) -> None:
        reply._late = True
        task = reply._task
        if task is not None:
            reply._task = None
            trio.lowlevel.reschedule(task)
        elif self._read_for is reply:
            stream = self._stream
            if isinstance(stream, _RawSocket):
                stream.interrupt()
        # Otherwise it is writing or connecting (bounded by `connect_timeout`), and raises
        # `CallTimeout` when that is done.

    # -- the connection --------------------------------------------------------------------

    async def _flush(self) -> None:
        """Write out every queued command (one `send_all`), opening the connection if need be."""
        if self._flushing or not self._queued:
            return
        self._flushing = True
        try:
            # When other tasks are ready to run, one pass through the scheduler first: they
            # add their commands to this write. Alone, write at once.
            if _others_runnable():
                await trio.lowlevel.cancel_shielded_checkpoint()
            while self._queued:
                if self._stream is None:
                    await self._open()
                stream = self._stream
                if stream is None:
                    return  # `_open` failed every queued command
                data = b"".join(self._queued)
                self._commands += len(self._queued)
                self._writes += 1
                for reply in self._queued_replies:
                    reply._sent = True
                self._waiting.extend(self._queued_replies)
                self._queued.clear()
                self._queued_replies.clear()
                try:
                    if isinstance(stream, _RawSocket):
                        # Nearly always all of it, at once: no scope, no scheduler pass.
                        data = data[stream.send_now(data) :]
                    if data:
                        # Shielded: half a command on the wire would put the connection out
                        # of step. The callers' own timeouts still end their waits.
                        with trio.CancelScope(shield=True):
                            with trio.fail_after(self._connect_timeout):
                                await stream.send_all(data)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._broken(stream, ConnectionError(f"writing to Redis failed: {exc}"))
                except trio.TooSlowError:
                    self._broken(stream, ConnectionError("writing to Redis timed out"))
        finally:
            self._flushing = False

    async def _open(self) -> None:
        """Connect, authenticate, select the database and start the reader."""
        try:
            with trio.CancelScope(shield=True), trio.fail_after(self._connect_timeout):
                stream = await self._connect()
                try:
                    await self._handshake(stream)
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
        except ReplyError as exc:
            self._fail_queued(ConnectionError(f"Redis refused the connection: {exc}"))
            return
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError) as exc:
            what = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
            self._fail_queued(ConnectionError(f"cannot connect to Redis: {what}"))
            return
        if self._nursery is None:
            await trio.aclose_forcefully(stream)
            self._fail_queued(ConnectionError("the client is closed"))
            return
        self._stream = stream
        self._reader = hiredis.Reader()

    async def _connect(self) -> trio.abc.Stream:
        if self._scheme == "unix":
            return _RawSocket.take(await trio.open_unix_socket(self._path))
        tcp = await trio.open_tcp_stream(self._host, self._port)
        tcp.setsockopt(6, 1, 1)  # TCP_NODELAY: our writes are whole batches already
        if self._tls is None:
            return _RawSocket.take(tcp)
        tls = trio.SSLStream(tcp, self._tls, server_hostname=self._host)
        await tls.do_handshake()
        return tls

    async def _handshake(self, stream: trio.abc.Stream) -> None:
        commands: list[list[Arg]] = []
        if self._password is not None:
            if self._username is not None:
                commands.append(["AUTH", self._username, self._password])
            else:
                commands.append(["AUTH", self._password])
        if self._db:
            commands.append(["SELECT", self._db])
        if not commands:
            return
        await stream.send_all(b"".join(_encode(c) for c in commands))
        reader = hiredis.Reader()
        for _ in commands:
            reply = reader.gets()
            while reply is False:
                data = await stream.receive_some(65536)
                if not data:
                    raise OSError("Redis closed the connection")
                reader.feed(bytes(data))
                reply = reader.gets()
            if isinstance(reply, ReplyError):
                raise reply

    async def _read_until(self, reply: Reply) -> None:
        """Read replies and hand them out in order until `reply` has its own.

        Only one task reads at a time (`_reading`); when it stops, for whatever reason,
        the next caller still waiting is woken to read in its place.
        """
        stream = self._stream
        if stream is None:
            # Nothing to read from: the command failed when it was written (and was answered).
            reply._set(ConnectionError("the connection to Redis is closed"))
            return
        self._reading = True
        self._read_for = reply
        reader = self._reader
        waiting = self._waiting
        try:
            while not reply._done:
                if reply._late:
                    return  # the watchdog found it late while this task was not waiting
                try:
                    data = await stream.receive_some(65536)
                except trio.ClosedResourceError:
                    if reply._late and self._stream is stream and _is_open(stream):
                        return  # woken by the watchdog: the connection is fine
                    raise
                if self._stream is not stream:
                    # The connection was given up meanwhile (its waiters were failed) and
                    # another may be serving the queue: late replies are not theirs.
                    return
                if not data:
                    raise ConnectionError("Redis closed the connection")
                reader.feed(cast(bytes, data))  # trio's streams hand out bytes
                value = reader.gets()
                while value is not False:
                    waiting.popleft()._set(value)
                    value = reader.gets()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, IndexError) as exc:
            error = exc if isinstance(exc, ConnectionError) else ConnectionError(str(exc))
            self._broken(stream, error)
        finally:
            self._reading = False
            self._read_for = None
            for other in waiting:
                task = other._task
                if task is not None:
                    other._task = None
                    trio.lowlevel.reschedule(task)
                    break

    def _broken(self, stream: trio.abc.Stream, error: ConnectionError) -> None:
        """The connection is done for: fail what waits on it; the next command reconnects."""
        if self._stream is stream:
            self._stream = None
            self._drop(error)
        if self._nursery is not None:
            self._nursery.start_soon(trio.aclose_forcefully, stream)

    def _drop(self, error: ConnectionError) -> None:
        waiting = self._waiting
        while waiting:
            waiting.popleft()._set(error)

    def _fail_queued(self, error: ConnectionError) -> None:
        replies = list(self._queued_replies)
        self._queued.clear()
        self._queued_replies.clear()
        for reply in replies:
            reply._set(error)


class _RawSocket(trio.abc.Stream):
    """A connected socket used through trio's low-level waits: a stream without checkpoints.

    trio's `SocketStream` makes every call a checkpoint, and a send that succeeds at once
    still passes through the scheduler. Here a send that fits in the socket's buffer (they
    all do: a few commands) is one system call, and a read waits for the socket once, so
    one Redis call is one pass through the scheduler. Whoever calls holds the conditions
    `SocketStream` checks: one writer (`_flushing`) and one reader (`_reading`) at a time.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def is_open(self) -> bool:
        return self._sock.fileno() != -1

    def interrupt(self) -> None:
        """Wake a task waiting on the socket (ClosedResourceError); the socket stays usable."""
        if self._sock.fileno() != -1:
            trio.lowlevel.notify_closing(self._sock)

    @classmethod
    def take(cls, stream: trio.SocketStream) -> _RawSocket:
        """Take over the connected socket of `stream` (which is left closed)."""
        sock = socket.socket(fileno=stream.socket.detach())
        sock.setblocking(False)
        return cls(sock)

    def send_now(self, data: bytes) -> int:
        """Send what the socket takes without waiting; how many bytes it took."""
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_writable(self._sock)
                except trio.ClosedResourceError:
                    if self._sock.fileno() == -1:
                        raise
                    # Woken by `interrupt` (meant for a reader): wait on.
            else:
                view = view[sent:]

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._sock)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while True:
            try:
                return self._sock.recv(max_bytes or 65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._sock)

    async def aclose(self) -> None:
        if self._sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
        await trio.lowlevel.checkpoint()


@dataclass(frozen=True)
class RespStatistics:
    """What `RespClient.statistics()` returns.

    Attributes:
      commands: commands written since the client was made.
      writes: writes that carried them: each one round trip, shared by the commands in it.
    """

    commands: int
    writes: int


class Script:
    """A Lua script run with `EVALSHA`, and with `EVAL` when Redis does not know it yet."""

    __slots__ = ("_client", "_sha", "_source")

    def __init__(self, client: RespClient, source: str) -> None:
        self._client = client
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, keys: Sequence[str], args: Sequence[Arg]) -> _ScriptCall:
        """Queue the script now; await what this returns for its reply."""
        reply = self._client.send("EVALSHA", self._sha, len(keys), *keys, *args)
        return _ScriptCall(self, reply, keys, args)


class _ScriptCall(Pending):
    __slots__ = ("_args", "_keys", "_reply", "_script")

    def __init__(
        self, script: Script, reply: Reply, keys: Sequence[str], args: Sequence[Arg]
    ) -> None:
        self._script = script
        self._reply = reply
        self._keys = keys
        self._args = args

    @property
    def ready(self) -> bool:
        reply = self._reply
        # Not a NOSCRIPT error: that one is answered by sending the script again.
        return reply._done and not isinstance(reply._value, ReplyError)

    async def result(self) -> Any:
        try:
            return await self._reply
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self._again()

    async def within(self, seconds: float, shield: bool) -> Any:
        deadline = trio.current_time() + seconds
        try:
            return await self._reply.within(seconds, shield)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        left = max(0.0, deadline - trio.current_time())
        return await self._again().within(left, shield)

    def _again(self) -> Reply:
        """`EVAL`: runs the script and loads it, for a Redis that forgot it."""
        script = self._script
        keys = self._keys
        return script._client.send("EVAL", script._source, len(keys), *keys, *self._args)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.result().__await__()


def _tls_context(options: dict[str, str]) -> ssl.SSLContext:
    """A TLS context from a `rediss://` URL's `ssl_*` options."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if "ssl_certfile" in options:
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    if options.get("ssl_cert_reqs") == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif "ssl_check_hostname" in options:
        context.check_hostname = options["ssl_check_hostname"].lower() in ("1", "true", "yes")
    return context


def _is_open(stream: trio.abc.Stream) -> bool:
    return isinstance(stream, _RawSocket) and stream.is_open()


def _others_runnable() -> bool:
    """Whether other tasks are ready to run: what `current_statistics().tasks_runnable` says.

    `current_statistics()` builds a whole snapshot (the next deadline, the I/O manager's
    own statistics) and costs ~3.4 us here; the run queue's length is the one number we use.
    """
    try:
        return bool(_RUN_CONTEXT.runner.runq)
    except AttributeError:  # pragma: no cover - a trio without it
        return trio.lowlevel.current_statistics().tasks_runnable > 0
