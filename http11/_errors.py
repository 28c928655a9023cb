"""Errors raised by the HTTP client.

Every error the client raises derives from `HTTPError`, so one ``except`` catches them all.
Messages name the origin and the problem; they never contain header values, which may hold
credentials.

```
HTTPError
├── ConnectError          the TCP connection (or proxy tunnel) could not be opened
│   └── TLSError          the TLS handshake failed (certificate not trusted, bad hostname, ...)
├── TimeoutException      (abstract: every timeout below)
│   ├── ConnectTimeout    opening the connection took longer than connect_timeout
│   ├── PoolTimeout       no connection slot became free within the request's timeout
│   ├── WriteTimeout      sending the request took longer than the request's timeout
│   └── ReadTimeout       the response head or a body read took too long
└── RemoteProtocolError   the peer broke HTTP: malformed response, early close mid-body
    └── ResponseTooLarge  `Response.read(limit=...)` saw more than `limit` bytes
```
"""

from __future__ import annotations

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "HTTPError",
    "PoolTimeout",
    "ReadTimeout",
    "RemoteProtocolError",
    "ResponseTooLarge",
    "TLSError",
    "TimeoutException",
    "WriteTimeout",
]


class HTTPError(Exception):
    """Base class of every error the client raises."""


class ConnectError(HTTPError):
    """The connection to the origin (or to the proxy) could not be opened."""


class TLSError(ConnectError):
    """The TLS handshake failed; the message names the TLS problem."""


class TimeoutException(HTTPError):
    """A timeout expired."""


class ConnectTimeout(TimeoutException):
    """Opening the connection took longer than `connect_timeout`."""


class PoolTimeout(TimeoutException):
    """No connection slot for the origin became free before the request's timeout."""


class WriteTimeout(TimeoutException):
    """Sending the request did not finish before the request's timeout."""


class ReadTimeout(TimeoutException):
    """The response head, or one read of the body, took too long."""


class RemoteProtocolError(HTTPError):
    """The peer sent something that is not valid HTTP/1.1, or closed mid-response."""


class ResponseTooLarge(RemoteProtocolError):
    """The response body exceeded the limit given to `Response.read`."""
