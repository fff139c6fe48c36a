"""Where a webhook may be sent: no server-side request forgery. Framework-free.

A receiver's URL is checked when an endpoint is registered and again before each send (what a
name resolves to can change): ``https`` only (``http`` too where allowed: the local default), and
every address the host resolves to must be public. Loopback, private, shared (100.64/10),
link-local (with the cloud metadata address 169.254.169.254), multicast, reserved and unspecified
addresses are refused unless the allow-list names the host or a network holding the address.
Names are resolved once per check and the send connects to an address that was checked, so a
name cannot resolve to a public address for the check and a private one for the connection.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

Resolver = Callable[[str, int], list[str]]
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
# NAT64 prefixes (RFC 6052, 8215): a NAT64 gateway connects to the IPv4 address in the last 32 bits,
# so 64:ff9b::a9fe:a9fe reaches 169.254.169.254; the local-use one is never globally reachable.
NAT64 = ipaddress.ip_network("64:ff9b::/96")
LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")


class UnsafeUrl(ValueError):
    """A receiver URL that is refused; the message says why."""


@dataclass(frozen=True)
class Target:
    """A checked receiver: where to connect (``address``) and what to name in Host and TLS SNI."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6), as the system resolver gives them; an
    IP literal in any form the C library accepts (decimal ``2130706433``, octal ``0177.0.0.1``)
    comes back as the address it means."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"the host {host!r} does not resolve: {exc}") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address in LOCAL_NAT64:
            return False
        # An IPv4 address written as IPv6 (mapped, NAT64, 6to4) is judged as the IPv4 address.
        if address in NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        else:
            address = address.ipv4_mapped or address.sixtofour or address
    return address.is_global and address not in SHARED_ADDRESS_SPACE and not address.is_multicast


def _allowed(host: str, address, allow: Sequence[str]) -> bool:
    for entry in allow:
        if entry.lower() == host.lower():
            return True
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def check_url(
    url: str,
    *,
    allow_http: bool = False,
    allow_loopback: bool = False,
    allow: Sequence[str] = (),
    resolver: Resolver = resolve,
) -> Target:
    """The receiver ``url`` names, checked; ``UnsafeUrl`` saying why if it may not be sent to.

    ``allow_http``: plain ``http`` accepted too; ``allow_loopback``: loopback addresses too (the
    local default, for a receiver on the developer's machine); ``allow``: host names and networks
    (CIDR) accepted whatever they resolve to.
    """
    if not isinstance(url, str) or len(url) > 2000:
        raise UnsafeUrl("the URL must be text of at most 2000 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"the URL cannot be parsed: {exc}") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        raise UnsafeUrl(f"the URL must be {' or '.join(schemes)}, not {parts.scheme or 'without a scheme'}")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("the URL must not carry a user name or password")
    host = parts.hostname
    if not host:
        raise UnsafeUrl("the URL has no host")
    port = port or (443 if parts.scheme == "https" else 80)
    addresses = resolver(host, port)
    if not addresses:
        raise UnsafeUrl(f"the host {host!r} resolves to no address")
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if _is_public(address) or _allowed(host, address, allow):
            continue
        if allow_loopback and address.is_loopback:
            continue
        raise UnsafeUrl(f"the host {host!r} resolves to {address}, which is not a public address")
    path = parts.path or "/"
    return Target(
        scheme=parts.scheme,
        host=host,
        port=port,
        path=path + (f"?{parts.query}" if parts.query else ""),
        address=addresses[0],
    )
