"""Fixtures for the provider tests: the private CA of the http11 tests, for TLS upstreams."""

from ..http11.conftest import ca, ca_file, server_cert_files

__all__ = ["ca", "ca_file", "server_cert_files"]
