"""The package exports exactly the names we mean to support."""

import http11


def test_exported_names() -> None:
    assert sorted(http11.__all__) == sorted(
        [
            "Client",
            "ConnectError",
            "PoolStatistics",
            "Response",
            "ConnectTimeout",
            "ErrorPage",
            "HTTPError",
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
    )


def test_every_exported_name_exists() -> None:
    for name in http11.__all__:
        assert getattr(http11, name) is not None
