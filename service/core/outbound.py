"""Which addresses longdoc may connect to on a user's behalf (webhooks, uploads by URL).

A URL is parsed strictly (http(s), an IDNA host, a valid port, no credentials). An address may
be contacted when it is globally routable, or inside a network the deployment allows
(``LONGDOC_WEBHOOK_ALLOWED_NETWORKS``). IPv6 forms that carry an IPv4 address (IPv4-mapped and
-compatible, 6to4, Teredo, NAT64) are judged by that address too: Python's ``is_global`` alone
calls ``::127.0.0.1`` and ``2002:7f00:1::1`` global. The check is made when the socket connects
(``GuardedBackend``), so a DNS answer that changes to a private address is still refused.
Messages never say what a name resolved to.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpcore
import idna

from schemas.errors import ErrorCode, LongdocError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

# Never reachable unless allowed, even where Python calls them global.
BLOCKED_NETWORKS = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64",
    "2001:db8::/32", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
)]
_NAT64 = [ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48")]
MAX_URL = 2000
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


class TargetRefused(LongdocError):
    """The URL is malformed, or its host is not one longdoc may contact."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.WEBHOOK_URL_NOT_ALLOWED) -> None:
        super().__init__(code, message)


@dataclass(frozen=True)
class Target:
    url: str  # normalised: the ASCII (IDNA) host, no credentials
    scheme: str
    host: str
    port: int


def parse_url(url: str, what: str = "webhook_url",
              code: ErrorCode = ErrorCode.INVALID_WEBHOOK_URL) -> Target:
    """The URL with its host in ASCII, or raises ``TargetRefused`` (422)."""
    def refuse(reason: str) -> TargetRefused:
        return TargetRefused(f"{what} {reason}", code)

    if len(url) > MAX_URL or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise refuse(f"must be an absolute http(s) URL of at most {MAX_URL} characters, "
                     "without spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise refuse("has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refuse("must be an absolute http(s) URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise refuse("must not carry credentials (user:password@)")
    if port == 0:
        raise refuse("has an invalid port")
    raw_host = parts.hostname
    literal: IPAddress | None
    try:
        literal = ipaddress.ip_address(raw_host)
    except ValueError:
        literal = None
    if literal is not None:
        host = str(literal)
        netloc_host = f"[{host}]" if literal.version == 6 else host
    else:
        try:
            host = idna.encode(raw_host, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            raise refuse("has a host name that is not a valid (IDNA) domain name") from None
        if len(host) > 253 or any(not label or len(label) > 63 for label in host.split(".")):
            raise refuse("has a host name that is not a valid domain name")
        netloc_host = host
    port = port or (443 if parts.scheme == "https" else 80)
    netloc = netloc_host if parts.port is None else f"{netloc_host}:{port}"
    # Non-ASCII in the path or query is sent percent-encoded (RFC 3986); escapes already there
    # stay as they are.
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    query = quote(parts.query, safe=_PATH_SAFE + "?")
    normalised = urlunsplit((parts.scheme, netloc, path, query, ""))
    if len(normalised) > MAX_URL:
        raise refuse(f"is longer than {MAX_URL} characters once its host and path are encoded")
    return Target(normalised, parts.scheme, host, port)


def embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, compatible, 6to4, Teredo, NAT64)."""
    if ip.version == 4:
        return []
    assert isinstance(ip, ipaddress.IPv6Address)
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    value = int(ip)
    if value >> 32 == 0 and value > 1:  # IPv4-compatible ::a.b.c.d (deprecated, still routed)
        found.append(ipaddress.IPv4Address(value))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if any(ip in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    return found


def _in(ip: IPAddress, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def address_allowed(ip: IPAddress, allowed: list[str]) -> bool:
    allowed_nets = [ipaddress.ip_network(cidr, strict=False) for cidr in allowed]
    carried = embedded_ipv4(ip)
    if _in(ip, allowed_nets) or (carried and all(_in(v4, allowed_nets) for v4 in carried)):
        return True
    return all(address.is_global and not _in(address, BLOCKED_NETWORKS)
               for address in (ip, *carried))


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def resolve_checked(host: str, port: int, allowed: list[str],
                    resolve: Resolver = system_resolver) -> str:
    """An address of ``host`` that may be contacted, or raises; every address the name has must
    pass, so a round-robin name cannot smuggle a private one in."""
    refused = TargetRefused(f"the host {host[:100]} cannot be reached or is not allowed (only "
                            "globally routable addresses, or LONGDOC_WEBHOOK_ALLOWED_NETWORKS)")
    try:
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolve(host, port)]
    except (OSError, UnicodeError, ValueError):
        raise refused from None
    if not addresses or not all(address_allowed(ip, allowed) for ip in addresses):
        raise refused
    return str(addresses[0])


def check_target(url: str, allowed: list[str], resolve: Resolver = system_resolver,
                 what: str = "webhook_url") -> Target:
    """The parsed target, once its host resolves to addresses that may be contacted."""
    target = parse_url(url, what)
    resolve_checked(target.host, target.port, allowed, resolve)
    return target


class GuardedBackend(httpcore.SyncBackend):
    """Connects only to addresses that pass the check, made at connect time."""

    def __init__(self, allowed: list[str]) -> None:
        self.allowed = allowed

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        address = resolve_checked(host, port, self.allowed)
        return super().connect_tcp(address, port, timeout, local_address, socket_options)


class AsyncGuardedBackend(httpcore.AsyncNetworkBackend):
    """The same check for asyncio (uploads by URL in the API)."""

    def __init__(self, allowed: list[str]) -> None:
        self.allowed = allowed
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        import anyio.to_thread

        address = await anyio.to_thread.run_sync(resolve_checked, host, port, self.allowed)
        return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        raise TargetRefused("unix sockets are never contacted")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)
