"""X-Forwarded-For is believed from trusted proxies only, and read from the right."""

from __future__ import annotations

from server.proxies import TrustedProxies


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    proxies = TrustedProxies("")
    assert proxies.client_ip("10.0.0.5", "1.2.3.4") == "10.0.0.5"


def test_an_untrusted_peer_cannot_name_another_address() -> None:
    proxies = TrustedProxies("10.0.0.0/8")
    assert proxies.client_ip("203.0.113.9", "1.2.3.4") == "203.0.113.9"


def test_the_first_untrusted_hop_from_the_right_is_the_client() -> None:
    proxies = TrustedProxies("10.0.0.0/8, 127.0.0.1/32")
    # The client claimed 6.6.6.6 itself; the edge proxy 10.0.0.1 saw 198.51.100.7.
    assert proxies.client_ip("127.0.0.1", "6.6.6.6, 198.51.100.7, 10.0.0.1") == "198.51.100.7"
    assert proxies.client_ip("10.1.2.3", "198.51.100.7") == "198.51.100.7"


def test_ports_brackets_and_ipv6() -> None:
    proxies = TrustedProxies("::1/128,127.0.0.0/8")
    assert proxies.client_ip("::1", "[2001:db8::1]:4431") == "2001:db8::1"
    assert proxies.client_ip("127.0.0.1", "198.51.100.7:5000") == "198.51.100.7"


def test_garbage_keeps_the_last_address_a_proxy_vouched_for() -> None:
    proxies = TrustedProxies("127.0.0.1/32,10.0.0.0/8")
    assert proxies.client_ip("127.0.0.1", "not-an-ip, 10.0.0.2") == "10.0.0.2"
    assert proxies.client_ip("127.0.0.1", "") == "127.0.0.1"
    assert proxies.client_ip("127.0.0.1", "x" * 10_000) == "127.0.0.1"
