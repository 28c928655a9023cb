"""Raw-socket helpers for the http11 tests: start a server, speak bytes, parse answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httptools
import trio

from http11 import Request, Responder, Server, ServerConfig

Handler = Callable[[Request, Responder], Awaitable[None]]


async def start_server(
    nursery: trio.Nursery, handler: Handler, config: ServerConfig | None = None
) -> tuple[Server, int]:
    """Start a `Server` on 127.0.0.1 in `nursery`; returns it and its port."""
    server = Server(handler, config)
    urls: list[str] = await nursery.start(server.serve)
    return server, int(urls[0].rsplit(":", 1)[1])


async def echo(request: Request, responder: Responder) -> None:
    """Answer with the request target and body."""
    await responder.respond(
        200, [(b"x-target", request.target)], b"%b|%b" % (request.method, request.body)
    )


class Answer:
    """One parsed response."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class RawClient:
    """A client that sends raw bytes and parses what comes back with llhttp."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.answers: list[Answer] = []
        self.eof = False
        self._current = Answer()
        self._parser = httptools.HttpResponseParser(self)

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    def on_message_begin(self) -> None:
        self._current = Answer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._current.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._current.body += body

    def on_message_complete(self) -> None:
        self.answers.append(self._current)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def answer(self) -> Answer:
        """The next complete response; fails if the connection closes first."""
        with trio.fail_after(20):
            while not self.answers:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("the server closed the connection")
                self._parser.feed_data(data)
        return self.answers.pop(0)

    async def closed(self) -> bool:
        """Read until end of file; True if the server closed without sending more bytes."""
        extra = b""
        with trio.fail_after(20):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return not extra
                if not data:
                    return not extra
                extra += data

    async def aclose(self) -> None:
        await self.stream.aclose()


async def read_all(stream: trio.SocketStream) -> bytes:
    """Every byte until the server closes the connection."""
    data = b""
    with trio.fail_after(20):
        while piece := await stream.receive_some(65536):
            data += piece
    return data
