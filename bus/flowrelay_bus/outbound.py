"""Which URLs a run may make the services call: the guard against server-side request forgery.

A workflow names MCP servers by URL, and the executor connects to them from inside the
deployment's network. Left unchecked, ``http://127.0.0.1:<port>`` or the cloud metadata
address turns the executor into a port scanner of internal services. So a URL is allowed
only if every address its host resolves to is public, unless the operator allowlists it
(``FLOWRELAY_MCP_URL_ALLOWLIST``: hosts, ``host:port`` or CIDR networks). The API checks at
submission (a 422 names the setting) and the executor again right before connecting,
after its own DNS resolution (a name may resolve differently by then).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

#: How long resolving a host may take before the URL is refused.
RESOLVE_TIMEOUT_S = 3.0

#: Where cloud providers serve instance metadata (credentials among it).
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
             ipaddress.ip_address("100.100.100.200")}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Allowlist:
    hosts: frozenset[str]
    networks: tuple[Network, ...]

    @classmethod
    def parse(cls, text: str | Iterable[str]) -> Allowlist:
        items = [i.strip().lower() for i in (text.split(",") if isinstance(text, str) else text) if i.strip()]
        hosts, networks = set(), []
        for item in items:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item)
        return cls(frozenset(hosts), tuple(networks))

    def admits(self, host: str, port: int, addresses: Iterable[Address] = ()) -> bool:
        if host in self.hosts or f"{host}:{port}" in self.hosts:
            return True
        found = list(addresses)
        return bool(found) and all(any(a in n for n in self.networks) for a in found)


def _why_private(address: Address) -> str | None:
    if address in _METADATA:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    if address.is_multicast or address.is_reserved or address.is_unspecified:
        return "a reserved address"
    return None


async def refusal(url: str, allowlist: Allowlist) -> str | None:
    """Why ``url`` may not be called (a sentence naming the setting), or None if it may."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    host = parts.hostname.lower()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "has an invalid port"
    if allowlist.admits(host, port):
        return None
    try:
        addresses = await _resolve(host, port)
    except (OSError, TimeoutError):
        return f"host {host!r} cannot be resolved"
    if allowlist.admits(host, port, addresses):
        return None
    for address in addresses:
        if (why := _why_private(address)) is not None:
            return (f"host {host!r} resolves to {address}, {why}: the executors do not call those on behalf of "
                    "runs unless the operator allows it in FLOWRELAY_MCP_URL_ALLOWLIST")
    return None


async def _resolve(host: str, port: int) -> list[Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S)
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
