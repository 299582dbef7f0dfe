"""Which address a request comes from, when trusted proxies stand in front.

Behind HAProxy every request's peer is the proxy; the client is named in
``X-Forwarded-For``. That header is only believed when the peer is one of
``PODIUM_TRUSTED_PROXIES``, and then read from the right: each hop appends
the address it received from, so the first address (from the right) that is
not a trusted proxy is the client. Anything a client wrote further left is
ignored, so it cannot pick its own address.
"""

from __future__ import annotations

import ipaddress
from typing import Final

_MAX_HOPS: Final = 16

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("["):  # [v6]:port
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class TrustedProxies:
    """Resolves client addresses; ``spec`` is PODIUM_TRUSTED_PROXIES (comma-separated networks)."""

    def __init__(self, spec: str) -> None:
        self._networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(part.strip(), strict=False)
            for part in spec.split(",")
            if part.strip()
        )

    def _trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in self._networks)

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address: ``peer``, or what trusted proxies say it is."""
        if not self._networks or not peer or not forwarded_for:
            return peer
        peer_address = _address(peer)
        if peer_address is None or not self._trusted(peer_address):
            return peer
        client = peer_address
        for hop in reversed(forwarded_for.split(",")[-_MAX_HOPS:]):
            address = _address(hop)
            if address is None:
                break  # garbage from here on: keep the last address a proxy vouched for
            client = address
            if not self._trusted(address):
                break
        return str(client)
