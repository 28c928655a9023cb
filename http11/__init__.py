"""An HTTP/1.1 server and client on trio, parsing with llhttp (httptools).

Server: `Server` / `serve` run a `Handler` ``async (Request, Responder) -> None`` per
request. Client: `Client.request` returns a `Response` once the head arrived; its body is
read with `receive_some` / `read` and the connection goes back to a LIFO pool on `aclose`.
"""

from ._client import Client, Response
from ._errors import (
    ConnectError,
    ConnectTimeout,
    HTTPError,
    PoolTimeout,
    ReadTimeout,
    RemoteProtocolError,
    ResponseTooLarge,
    TimeoutException,
    TLSError,
    WriteTimeout,
)
from ._pool import PoolStatistics
from ._server import (
    ErrorPage,
    Handler,
    Request,
    Responder,
    Server,
    ServerConfig,
    plain_error_page,
    serve,
)

__all__ = [
    "Client",
    "PoolStatistics",
    "Response",
    "ConnectError",
    "ConnectTimeout",
    "HTTPError",
    "ErrorPage",
    "Handler",
    "PoolTimeout",
    "ReadTimeout",
    "RemoteProtocolError",
    "Request",
    "Responder",
    "ResponseTooLarge",
    "Server",
    "ServerConfig",
    "TLSError",
    "TimeoutException",
    "WriteTimeout",
    "plain_error_page",
    "serve",
]
