"""The server speaks TLS when given a certificate and key."""

from __future__ import annotations

import ssl

import trio
import trustme

from http11 import ServerConfig

from .helpers import echo, start_server


async def test_tls_server_answers_over_https(
    nursery: trio.Nursery, ca: trustme.CA, server_cert_files: tuple[str, str]
) -> None:
    certfile, keyfile = server_cert_files
    server, port = await start_server(
        nursery, echo, ServerConfig(certfile=certfile, keyfile=keyfile)
    )
    assert server.urls == [f"https://127.0.0.1:{port}"]
    context = ssl.create_default_context()
    ca.configure_trust(context)
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
    await stream.send_all(b"GET /tls HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    data = b""
    with trio.fail_after(20):
        while True:
            try:
                piece = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not piece:
                break
            data += piece
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"GET|")
