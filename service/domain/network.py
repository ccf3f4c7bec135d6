"""Which network addresses image downloads may reach.

By default only globally routable unicast addresses: loopback, private, link-local (with the
cloud metadata address 169.254.169.254), shared (CGNAT), multicast, reserved and documentation
ranges are refused, so a Create cannot be turned against the network the workers run in.
Networks can be allowed explicitly (a local setup, the tests).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from service.domain.errors import FieldViolation, InvalidArgument

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ForbiddenAddress(InvalidArgument):
    def __init__(self, what: str) -> None:
        super().__init__(
            [FieldViolation("uri", f"{what} is not a public address; downloads may not reach it")]
        )


def parse_networks(text: str) -> list[IPNetwork]:
    """Comma-separated CIDRs (``10.0.0.0/8, ::1/128``); raises ``ValueError`` on a bad one."""
    return [
        ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()
    ]


class NetworkPolicy:
    def __init__(self, allowed: Iterable[IPNetwork] = ()) -> None:
        self._allowed = list(allowed)

    def allows(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self._allowed):
            return True
        return address.is_global and not address.is_multicast

    def check_address(self, address: IPAddress, shown_as: str) -> None:
        if not self.allows(address):
            raise ForbiddenAddress(shown_as)

    def check_url_host(self, url: str) -> None:
        """Refuse a URL whose host is an IP literal this policy forbids.

        Host names are checked when they are resolved, on every connection.
        """
        host = urlsplit(url).hostname
        if host is None:
            return
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return
        self.check_address(address, host)
