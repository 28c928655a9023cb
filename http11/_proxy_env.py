"""Proxies from the environment: HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY.

Like httpx and curl: the lowercase variable wins over the uppercase one (read through
`urllib.request.getproxies_environment`, which also ignores HTTP_PROXY in a CGI request,
where a client could set it). NO_PROXY is a comma-separated list of host names (matching
the host and its subdomains, with or without a leading dot or ``*.``), IP addresses or
networks (``10.0.0.0/8``), or ``*`` for everything. Loopback is not bypassed unless listed.
Proxies are spoken to in plain HTTP (``http://user:pass@host:port``); https URLs go
through a CONNECT tunnel, http URLs in absolute form.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies_environment

__all__ = ["Proxy", "ProxySettings"]


@dataclass(frozen=True, slots=True)
class Proxy:
    """A plain-HTTP proxy and the Proxy-Authorization value for it, if any."""

    host: str
    port: int
    authorization: bytes | None = None

    @classmethod
    def from_url(cls, url: str) -> Proxy:
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"unsupported proxy scheme {parts.scheme!r}: use http://")
        if not parts.hostname:
            raise ValueError("the proxy URL has no host")
        authorization = None
        if parts.username is not None:
            secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = b"Basic " + base64.b64encode(secret.encode())
        return cls(parts.hostname, parts.port or 80, authorization)


class ProxySettings:
    """Which proxy, if any, serves a scheme and host."""

    def __init__(self, proxies: Mapping[str, Proxy], no_proxy: str = "") -> None:
        self.proxies = dict(proxies)
        self.bypass_all = False
        self.names: list[str] = []
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in no_proxy.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                self.bypass_all = True
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            host = entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry
            self.names.append(host.removeprefix("*").removeprefix("."))

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ProxySettings:
        found = _read(environ)
        proxies: dict[str, Proxy] = {}
        for scheme in ("http", "https"):
            url = found.get(scheme) or found.get("all")
            if url:
                proxies[scheme] = Proxy.from_url(url)
        return cls(proxies, found.get("no", ""))

    def proxy_for(self, scheme: str, host: str) -> Proxy | None:
        proxy = self.proxies.get(scheme)
        if proxy is None or self.bypass_all:
            return None
        host = host.lower().strip("[]")
        if self.networks:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                pass
            else:
                if any(address in network for network in self.networks):
                    return None
        for name in self.names:
            if host == name or host.endswith("." + name):
                return None
        return proxy


def _read(environ: Mapping[str, str] | None) -> dict[str, str]:
    if environ is None:
        return getproxies_environment()
    # The same precedence as urllib: lowercase names win.
    found: dict[str, str] = {}
    for key, value in environ.items():
        if key.upper().endswith("_PROXY") and value and key.isupper():
            found[key[:-6].lower()] = value
    for key, value in environ.items():
        if key.lower().endswith("_proxy") and value and key.islower():
            found[key[:-6]] = value
    return found
