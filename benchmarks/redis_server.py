"""A real `redis-server` on a free loopback port, for the Redis tests and benchmarks.

    server = RedisServer("redis-server", Path("/tmp/some-dir"))
    server.start()        # waits until it answers
    ...                   # talk to server.url
    server.stop()         # and start() again on the same port; pause()/resume() freeze it

No persistence (`--save ''`, `--appendonly no`), bound to 127.0.0.1 only.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["STARTUP", "RedisServer", "command", "free_port"]

STARTUP = 10.0
"""Seconds a server may take to answer PING; only a failure waits that long."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def command(port: int, *words: str, timeout: float = 1.0) -> bytes:
    """Send one command over RESP and return the raw reply (for checks outside a store)."""
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"".join(parts))
        reply = b""
        sock.settimeout(timeout)
        # Replies to the few commands the tests send fit in one read once complete.
        while not reply.endswith(b"\r\n"):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
        return reply


class RedisServer:
    """One `redis-server` process: no persistence, bound to 127.0.0.1, in its own directory.

    `stop()` and `start()` again keep the port, so clients can reconnect to the same URL;
    `pause()` and `resume()` freeze it (SIGSTOP), to play a Redis that stopped answering.
    """

    def __init__(self, binary: str, directory: Path, *extra: str) -> None:
        self.binary = binary
        self.directory = directory
        self.extra = extra
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "save": "",
            "appendonly": "no",
            "dir": str(self.directory),
        }
        arguments = [part for name, value in options.items() for part in (f"--{name}", value)]
        self.process = subprocess.Popen(
            [self.binary, *arguments, *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        give_up = time.monotonic() + STARTUP
        while True:
            try:
                # Any answer will do: a server with a password answers NOAUTH.
                if command(self.port, "PING"):
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > give_up:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused server cannot die otherwise
            process.kill()
            process.wait(timeout=STARTUP)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def key_names(self) -> list[str]:
        """Every key in the server (a RESP array of bulk strings, decoded)."""
        lines = command(self.port, "KEYS", "*").split(b"\r\n")
        return sorted(line.decode() for line in lines[2::2] if line)
