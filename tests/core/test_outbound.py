"""Which addresses the service may contact for a user (webhooks, uploads by URL)."""

from __future__ import annotations

import ipaddress

import pytest

from service.core.outbound import TargetRefused, address_allowed, check_target, parse_url

LOOPBACK = ["127.0.0.0/8", "::1/128"]


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.0.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1", "::",
    "::ffff:127.0.0.1", "::127.0.0.1", "::ffff:10.0.0.1", "::10.0.0.1",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "64:ff9b::7f00:1", "64:ff9b:1::a00:1",  # NAT64 of 127.0.0.1 / 10.0.0.1
    "fec0::1", "fc00::1", "fe80::1", "ff02::1", "2001:db8::1",
])
def test_private_and_reserved_addresses_are_refused_in_every_form(address: str) -> None:
    assert not address_allowed(ipaddress.ip_address(address), [])


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946",
                                     "2002:5db8:d822::1"])  # 6to4 of a global address
def test_globally_routable_addresses_are_allowed(address: str) -> None:
    assert address_allowed(ipaddress.ip_address(address), [])


def test_an_allowed_network_covers_the_forms_that_carry_its_addresses() -> None:
    assert address_allowed(ipaddress.ip_address("127.0.0.1"), LOOPBACK)
    assert address_allowed(ipaddress.ip_address("::ffff:127.0.0.1"), LOOPBACK)
    assert not address_allowed(ipaddress.ip_address("::ffff:10.0.0.1"), LOOPBACK)


def test_a_name_that_does_not_resolve_gets_one_generic_message() -> None:
    def failing(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(TargetRefused) as err:
        check_target("https://hooks.example.test/x", [], resolve=failing)
    assert err.value.code == "webhook_url_not_allowed"
    assert "cannot be reached or is not allowed" in err.value.message


def test_the_message_never_says_what_a_name_resolved_to() -> None:
    def private(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.9.8.7"]  # one private answer among public ones is enough

    with pytest.raises(TargetRefused) as err:
        check_target("https://hooks.example.test/x", [], resolve=private)
    assert "10.9.8.7" not in err.value.message


@pytest.mark.parametrize("url, normalised", [
    ("http://127.0.0.1:8080/hook?a=1", "http://127.0.0.1:8080/hook?a=1"),
    ("https://BÜCHER.example/x", "https://xn--bcher-kva.example/x"),
    ("http://[::1]:9/x", "http://[::1]:9/x"),
    ("https://example.test", "https://example.test/"),
])
def test_urls_are_normalised_to_an_ascii_host(url: str, normalised: str) -> None:
    assert parse_url(url).url == normalised


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:80:80/", "http://127.0.0.1:99999/", "http://127.0.0.1:-1/", "http://a b/",
    "http://" + "a" * 64 + ".test/", "http://u:p@127.0.0.1/", "file:///etc/passwd",
    "http://127.0.0.1:0/", "http:///x", "javascript:alert(1)", "http://xn--a/",
])
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(TargetRefused) as err:
        parse_url(url)
    assert err.value.code == "invalid_webhook_url"
