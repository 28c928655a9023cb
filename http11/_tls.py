"""TLS contexts: the server's from a certificate file, the client's from the system store.

The client trusts what the operating system trusts (through `truststore` when it is
installed, else OpenSSL's default paths), plus an optional PEM file of private CAs.
"""

from __future__ import annotations

import ssl

try:
    import truststore
except ImportError:  # pragma: no cover - truststore is a dependency; this is a fallback
    truststore = None  # type: ignore[assignment]

__all__ = ["client_ssl_context", "server_ssl_context"]


def server_ssl_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    """A server context for `certfile` (PEM chain) and `keyfile`, speaking HTTP/1.1 only."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    context.set_alpn_protocols(["http/1.1"])
    return context


def client_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A verifying client context: the system trust store, plus `ca_file` when given."""
    context: ssl.SSLContext
    if truststore is not None:
        context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    else:  # pragma: no cover
        context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    context.set_alpn_protocols(["http/1.1"])
    return context
