"""No server-side request forgery: which receiver URLs ``check_url`` refuses, over the address
space (a fake resolver answers what a name resolves to), and with the system's resolver for the
forms an attacker writes (IP literals in decimal and octal, ``localhost``, IPv6 brackets)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhooks.addresses import UnsafeUrl, check_url


def addresses_in(*networks: str) -> st.SearchStrategy[str]:
    """Any address of any of ``networks``, as text."""
    return st.sampled_from([ipaddress.ip_network(n) for n in networks]).flatmap(
        lambda net: st.integers(int(net.network_address), int(net.broadcast_address)).map(
            lambda value: str(ipaddress.ip_address(value) if net.version == 4 else ipaddress.IPv6Address(value))
        )
    )


LOOPBACK = ("127.0.0.0/8", "::1/128")
# Private, shared (carrier-grade NAT), link-local (the cloud metadata address among them),
# unspecified, multicast and reserved addresses: never a receiver's, whatever the settings say.
NOT_PUBLIC = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "0.0.0.0/8",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
    "::/128",
    "64:ff9b:1::/48",  # NAT64, local use
)
PUBLIC = ("8.0.0.0/8", "52.0.0.0/10", "142.250.0.0/15", "2600::/12", "2a00:1450::/32")
refused_v4 = addresses_in(*(n for n in (*LOOPBACK, *NOT_PUBLIC) if ":" not in n))


def written_as_ipv6(text: str) -> list[str]:
    """An IPv4 address as IPv6: mapped (::ffff:a.b.c.d), behind NAT64's well-known prefix
    (64:ff9b::a.b.c.d, which a NAT64 gateway connects to) and 6to4 (2002:aabb:ccdd::)."""
    value = int(ipaddress.IPv4Address(text))
    return [
        f"::ffff:{text}",
        str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) + value)),
        str(ipaddress.IPv6Address((0x2002 << 112) + (value << 80) + 1)),
    ]


embedded_v4 = refused_v4.flatmap(lambda text: st.sampled_from(written_as_ipv6(text)))
refused = st.one_of(addresses_in(*LOOPBACK, *NOT_PUBLIC), embedded_v4)
public = st.one_of(addresses_in(*PUBLIC), addresses_in("8.0.0.0/8").flatmap(lambda text: st.sampled_from(written_as_ipv6(text))))


def resolving_to(*addresses: str):
    """A resolver answering ``addresses`` for any name."""
    return lambda host, port: list(addresses)


def unresolved(host, port):
    raise AssertionError("a URL refused for its form is not resolved")


def host_of(address: str) -> str:
    return f"[{address}]" if ":" in address else address


@given(address=refused, scheme=st.sampled_from(["https", "http"]), name=st.booleans())
def test_a_url_that_leads_to_a_loopback_private_or_other_non_public_address_is_refused(address, scheme, name):
    host = "hooks.example.com" if name else host_of(address)
    with pytest.raises(UnsafeUrl, match="not a public address"):
        check_url(f"{scheme}://{host}/in", allow_http=True, resolver=resolving_to(address))


@given(addresses=st.lists(public, min_size=1, max_size=4), port=st.sampled_from([None, 443, 8443]))
def test_a_name_resolving_to_public_addresses_only_is_accepted_and_sent_to_the_first(addresses, port):
    target = check_url(
        f"https://hooks.example.com{f':{port}' if port else ''}/in?x=1", resolver=resolving_to(*addresses)
    )
    assert (target.scheme, target.host, target.port, target.path) == ("https", "hooks.example.com", port or 443, "/in?x=1")
    assert target.address == addresses[0]


@given(addresses=st.lists(public, min_size=1, max_size=3), bad=refused, at=st.integers(0, 3))
def test_one_non_public_address_among_public_ones_is_enough_to_refuse(addresses, bad, at):
    addresses.insert(at, bad)
    with pytest.raises(UnsafeUrl):
        check_url("https://hooks.example.com/", resolver=resolving_to(*addresses))


@given(address=refused)
def test_an_allow_listed_host_or_network_is_accepted_whatever_it_resolves_to(address):
    network = ipaddress.ip_network(address).supernet(prefixlen_diff=4)
    for allow in (["hooks.internal"], ["HOOKS.internal"], [str(network)]):
        target = check_url("https://hooks.internal/", allow=allow, resolver=resolving_to(address))
        assert target.address == address
    with pytest.raises(UnsafeUrl):
        check_url("https://hooks.internal/", allow=["other.internal", "203.0.113.0/24", "not a network"], resolver=resolving_to(address))


@given(address=addresses_in(*LOOPBACK))
def test_loopback_is_accepted_where_allowed(address):
    assert check_url(f"http://{host_of(address)}:8000/", allow_http=True, allow_loopback=True, resolver=resolving_to(address))


@given(address=addresses_in(*NOT_PUBLIC))
def test_allowing_loopback_still_refuses_private_link_local_and_metadata_addresses(address):
    with pytest.raises(UnsafeUrl, match="not a public address"):
        check_url("https://hooks.example.com/", allow_http=True, allow_loopback=True, resolver=resolving_to(address))


# With the system's resolver: every way of writing a loopback, private or metadata address.
@pytest.mark.parametrize(
    "url, address",
    [
        ("https://127.0.0.1/", "127.0.0.1"),
        ("https://127.1.2.3:8443/", "127.1.2.3"),
        ("https://[::1]/", "::1"),
        ("https://[::ffff:127.0.0.1]/", "::ffff:7f00:1"),
        ("https://10.1.2.3/", "10.1.2.3"),
        ("https://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("https://localhost/", None),
        ("https://2130706433/", "127.0.0.1"),  # decimal
        ("https://0177.0.0.1/", "127.0.0.1"),  # octal
        ("https://0x7f.1/", "127.0.0.1"),  # hexadecimal, short
        ("https://167772161/", "10.0.0.1"),
        ("https://0251.0376.0251.0376/", "169.254.169.254"),
        ("https://0.0.0.0/", "0.0.0.0"),
    ],
)
def test_every_form_of_a_loopback_private_or_metadata_address_is_refused(url, address):
    with pytest.raises(UnsafeUrl, match="not a public address") as refusal:
        check_url(url)
    if address:
        assert f"resolves to {address}," in str(refusal.value)


def test_loopback_forms_are_accepted_where_allowed_and_private_ones_still_refused():
    for url in ("http://127.0.0.1:8000/", "http://localhost:8000/", "http://2130706433/", "http://0177.0.0.1/", "http://[::1]/"):
        assert check_url(url, allow_http=True, allow_loopback=True).port in (80, 8000)
    for url in ("http://10.1.2.3/", "http://169.254.169.254/", "http://0251.0376.0251.0376/"):
        with pytest.raises(UnsafeUrl):
            check_url(url, allow_http=True, allow_loopback=True)


@pytest.mark.parametrize(
    "url, allow_http, reason",
    [
        ("http://hooks.example.com/", False, "must be https, not http"),
        ("ftp://hooks.example.com/", True, "must be https or http, not ftp"),
        ("hooks.example.com/in", False, "without a scheme"),
        ("https://user:pass@hooks.example.com/", False, "user name or password"),
        ("https://user@hooks.example.com/", False, "user name or password"),
        ("https://:pass@hooks.example.com/", False, "user name or password"),
        ("https:///in", False, "no host"),
        ("https://hooks.example.com:99999/", False, "cannot be parsed"),
        ("https://hooks.example.com/" + "a" * 2000, False, "at most 2000"),
    ],
)
def test_urls_refused_for_their_form_before_any_resolution(url, allow_http, reason):
    with pytest.raises(UnsafeUrl, match=reason):
        check_url(url, allow_http=allow_http, resolver=unresolved)


def test_a_name_that_does_not_resolve_or_resolves_to_nothing_is_refused():
    with pytest.raises(UnsafeUrl, match="does not resolve"):
        check_url("https://no-such-host.invalid/")
    with pytest.raises(UnsafeUrl, match="resolves to no address"):
        check_url("https://hooks.example.com/", resolver=resolving_to())
