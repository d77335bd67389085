"""Every HTTP client of this program, and the guard on the requests whose URL content chose.

A feed names image URLs and links; its server names redirect targets. None of them may
make us reach this machine, the local network or a cloud's metadata service. A *guarded*
client refuses loopback, private, link-local, shared (CGNAT), multicast, unspecified and
reserved addresses, and IPv4 addresses wrapped in IPv6 forms of those, unless the
``fetch_allow_private`` setting opens their network.

The check is made on the address actually connected to. For each request, redirect hops
included (each is a request of its own), :class:`GuardedTransport` resolves the host name
once, checks every address it resolves to, and sends the request to the first of those
addresses by IP: the URL given to httpx's own transport names the IP, the ``Host`` header
keeps the name, and the ``sni_hostname`` extension makes TLS send the name and verify the
server's certificate against it. Nothing resolves the name again after the check, so a
DNS answer that changes between the check and the connection (rebinding) changes
nothing. Each host name has a connection pool of its own, so a connection opened and
verified for one name is never reused for another name that resolves to the same IP.

The operator's own URLs (the feeds added by hand) are *trusted*: reached as given, with
the environment's proxy settings, by a plain client (:func:`client` with no policy).
Guarded requests never go through a proxy, which would resolve the name again.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from digest.errors import ConfigError, DigestError
from digest.services.feeds import tls

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
SETTING = "fetch_allow_private"

_SHARED = ipaddress.ip_network("100.64.0.0/10")          # RFC 6598, carrier-grade NAT
_PRIVATE = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",      # RFC 1918
    "fc00::/7", "fec0::/10"))                              # unique local, old site-local
_NAT64 = ipaddress.ip_network("64:ff9b::/96")             # RFC 6052: an IPv4 address inside
_METADATA = ipaddress.ip_address("169.254.169.254")      # AWS, GCP, Azure, OpenStack…
_BROADCAST = ipaddress.ip_address("255.255.255.255")


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for, if any: IPv4-mapped (``::ffff:a.b.c.d``),
    6to4 (``2002:…``) or NAT64 (``64:ff9b::a.b.c.d``): a packet to it reaches that IPv4
    address, so that is the one to judge."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def kind_of(address: IPAddress) -> str | None:
    """What kind of non-public address ``address`` is ("a loopback address"), or None
    for a public one."""
    judged: IPAddress = embedded_ipv4(address) or address
    if judged.is_unspecified:
        return "an unspecified address"
    if judged.is_loopback:
        return "a loopback address"
    if judged.is_link_local:
        return ("a link-local address (a cloud's metadata service)" if judged == _METADATA
                else "a link-local address")
    if judged.is_multicast:
        return "a multicast address"
    if judged in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if any(judged in network for network in _PRIVATE):
        return "a private address"
    if judged == _BROADCAST:
        return "a broadcast address"
    if judged.is_reserved:
        return "a reserved address"
    if not judged.is_global:  # documentation, benchmarking, "this network", protocol use…
        return "a special-purpose address"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses a guarded request may reach: public ones, and those in the
    networks ``fetch_allow_private`` names."""

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def allowing(cls, networks: Iterable[str]) -> AddressPolicy:
        """The policy that opens ``networks`` (CIDR, or one address); a
        :class:`ConfigError` naming the setting for anything else."""
        allowed = []
        for text in networks:
            try:
                allowed.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError as e:
                raise ConfigError(f"{text!r} is not a network ({e})", key=SETTING,
                                  hint='give CIDR networks, e.g. ["127.0.0.1/32"]') from e
        return cls(tuple(allowed))

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be reached ("a loopback address"), or None if it may."""
        kind = kind_of(address)
        if kind is None:
            return None
        judged = (address, embedded_ipv4(address))
        if any(a in network for a in judged if a is not None for network in self.allowed):
            return None
        return kind


class Refused(DigestError):
    """A guarded request named a host whose address it may not reach."""

    def __init__(self, url: str, host: str, address: IPAddress, kind: str) -> None:
        # An IP literal is named as the URL wrote it (::ffff:127.0.0.1, not ::ffff:7f00:1).
        literal = _literal(host) == address
        named = f"{host} is" if literal else f"{host} resolves to {address},"
        self.reason = f"refused: {named} {kind}; {SETTING} opens exceptions"
        super().__init__(f"{url}: {self.reason}")
        self.url = url
        self.host = host
        self.address = address
        self.kind = kind


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` resolves to, each once, in the resolver's order (an IP
    literal is its own answer, without asking the resolver)."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    import anyio  # httpx's own transports run on it; loaded with them
    answers = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: dict[IPAddress, None] = {}
    for *_, sockaddr in answers:
        found.setdefault(ipaddress.ip_address(str(sockaddr[0]).partition("%")[0]), None)
    return list(found)


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends each request to an address it has checked."""

    def __init__(self, policy: AddressPolicy, *, limits: httpx.Limits) -> None:
        self.policy = policy
        self.limits = limits
        # One pool per host name: a TLS connection verified for one name must not carry
        # a request for another name that happens to resolve to the same address.
        self._pools: dict[str, httpx.AsyncHTTPTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Resolve the request's host once, refuse it unless every address is allowed,
        and send it to the first address that accepts a connection."""
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"not an http(s) URL: {url}", request=request)
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = await self._addresses(request, host, port)
        for address in addresses:
            kind = self.policy.refusal(address)
            if kind is not None:
                raise Refused(str(url), host, address, kind)
        pool = self._pools.get(host)
        if pool is None:
            pool = self._pools[host] = httpx.AsyncHTTPTransport(
                verify=tls.context(), limits=self.limits, trust_env=False)
        failed: httpx.ConnectError | None = None
        for address in addresses:
            pinned = httpx.Request(
                request.method, url.copy_with(host=str(address)), headers=request.headers,
                stream=request.stream, extensions={**request.extensions, "sni_hostname": host})
            try:
                return await pool.handle_async_request(pinned)
            except httpx.ConnectError as e:  # nothing was sent: the next address may answer
                failed = e
        assert failed is not None
        raise failed

    async def _addresses(self, request: httpx.Request, host: str,
                         port: int) -> list[IPAddress]:
        import anyio
        timeout = request.extensions.get("timeout", {}).get("connect")
        try:
            with anyio.fail_after(timeout):
                addresses = await resolve(host, port)
        except TimeoutError as e:
            raise httpx.ConnectTimeout(f"{host} not resolved within {timeout:g} s",
                                       request=request) from e
        except (OSError, UnicodeError) as e:
            raise httpx.ConnectError(f"cannot resolve {host}: {getattr(e, 'strerror', e)}",
                                     request=request) from e
        if not addresses:
            raise httpx.ConnectError(f"{host} resolves to no address", request=request)
        return addresses

    async def aclose(self) -> None:
        """Close every host's connections."""
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()


def client(policy: AddressPolicy | None, *, timeout: float | httpx.Timeout,  # noqa: PLR0913 - keyword-only: httpx's own options
           headers: Mapping[str, str], concurrency: int = 10,
           follow_redirects: bool = False, max_redirects: int = 5) -> httpx.AsyncClient:
    """An httpx client verifying servers with :func:`tls.context`: guarded by ``policy``
    (every request and redirect hop checked), or, with None, for the operator's own URLs,
    reached as given."""
    limits = httpx.Limits(max_connections=max(1, concurrency))
    options: dict[str, Any] = {"timeout": timeout, "headers": dict(headers),
                               "follow_redirects": follow_redirects,
                               "max_redirects": max_redirects}
    if policy is None:
        return httpx.AsyncClient(verify=tls.context(), limits=limits, **options)
    return httpx.AsyncClient(transport=GuardedTransport(policy, limits=limits),
                             trust_env=False, **options)
