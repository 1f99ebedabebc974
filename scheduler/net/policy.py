"""The SSRF guard's policy: which URLs outbound requests may reach.

Reference images (GET) and webhooks (POST) go to URLs that users choose, from machines that
can see the cluster's private network and the cloud metadata service. Every such request
goes through this module:

1. ``check_url`` (here) parses the URL strictly, resolves its host once, and refuses it
   unless every address is public (``NetPolicy`` relaxes this for tests and development).
2. :mod:`scheduler.net.transport` connects to exactly the addresses that were checked and
   never resolves again, so a DNS answer that changes between check and connect
   (rebinding) gains nothing; TLS still verifies the certificate against the host name.
3. :mod:`scheduler.net.guard`'s ``fetch`` and ``post`` follow redirects by hand, checking
   every hop again; bodies are capped while they stream; one deadline bounds the whole call.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from ..errors import FetchFailed, UnsafeURL

__all__ = ["NetPolicy", "CheckedURL", "check_url", "check_request_url", "MAX_URL_LENGTH"]

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}

# Characters left as they are in the request target; everything else (spaces, non-ASCII,
# quotes) is percent-encoded, as browsers do, so the request line stays valid HTTP.
_TARGET_SAFE = "/?:@!$&'()*+,;=%[]~"
_NAME = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
# A host whose last label is a number is an IPv4 address to getaddrinfo and to browsers
# (WHATWG "ends in a number"): it may never pass as a name.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_PORT = re.compile(r"[0-9]{1,5}")
# Names that only mean something inside a network; refused before any DNS query.
_LOCAL_SUFFIXES = ("localhost", "local", "internal", "localdomain", "home.arpa")


# Non-public ranges, named so a refusal can say why. Listed explicitly rather than trusting
# ``is_global`` alone: its tables differ between Python releases, and 3.11 calls the NAT64
# and 6to4 prefixes global whatever they wrap.
_NON_PUBLIC: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), reason)
    for cidr, reason in (
        ("0.0.0.0/8", "an unspecified ('this network') address"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a carrier-grade NAT (shared) address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address (where cloud metadata services live)"),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "an IETF protocol address"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a 6to4 relay address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved or broadcast address"),
        ("::/128", "the unspecified address"),
        ("::1/128", "a loopback address"),
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("100::/64", "a discard-only address"),
        ("2001::/23", "an IETF protocol address"),
        ("2001:db8::/32", "a documentation address"),
        ("3fff::/20", "a documentation address"),
        ("5f00::/16", "a segment-routing address"),
        ("fc00::/7", "a unique-local (private) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    )
)
_IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host``, once each, in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True, kw_only=True)
class NetPolicy:
    """What outbound requests may reach. The defaults are production's: https to public
    addresses only, verified against the system's trust store."""

    allow_private: bool = False
    """``XSD_ALLOW_PRIVATE_URLS=1``: http, every address and local names (tests, dev only)."""
    allow_http: bool = False
    """http is allowed, without opening private addresses (tests of the guard itself)."""
    exempt_networks: tuple[IPNetwork, ...] = ()
    """Addresses allowed although they are not public (tests)."""
    resolver: Callable[[str, int], list[str]] = _system_resolver
    """``(host, port) -> address strings``; raises ``OSError`` when the name does not resolve."""
    ca_certs: str | None = None
    """A CA bundle trusted in addition to the system's when verifying HTTPS (tests)."""


@dataclass(frozen=True)
class CheckedURL:
    """A URL that passed ``check_url``, normalised: lower-case host (IDNA-encoded, or the
    canonical form of an address), explicit port, percent-encoded target, no fragment."""

    url: str
    scheme: str
    host: str
    port: int
    target: str
    """Path and query, as sent in the request line."""
    addresses: tuple[str, ...]
    """Every address the host stands for, all allowed; ``()`` for a name not resolved."""


class _Unresolvable(Exception):
    """The host name did not resolve: unsafe when validating, a failed fetch when fetching."""


def check_url(url: str, policy: NetPolicy, *, resolve: bool = True) -> CheckedURL:
    """Check that ``url`` may be requested under ``policy``; raise ``UnsafeURL`` if not.

    With ``resolve`` the host name is resolved and every address must be allowed: one bad
    address is enough to refuse, since whoever controls the DNS picks which one is used.
    Literal addresses are checked without DNS either way."""
    try:
        return _check(url, policy, resolve=resolve)
    except _Unresolvable as exc:
        raise UnsafeURL(str(exc)) from exc


def check_request_url(url: str, policy: NetPolicy) -> CheckedURL:
    """``check_url`` at the moment of a request: a name that does not resolve is a failed
    fetch (``FetchFailed``), not an unsafe URL."""
    try:
        return _check(url, policy, resolve=True)
    except _Unresolvable as exc:
        # Unlike at validation time, a name that fails to resolve now may be a passing DNS
        # failure: report it as a failed fetch, which webhook delivery retries.
        raise FetchFailed(str(exc)) from exc


def _check(url: str, policy: NetPolicy, *, resolve: bool) -> CheckedURL:
    if policy.allow_private:
        _warn_allow_private()
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"The URL is longer than {MAX_URL_LENGTH} characters.")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        raise UnsafeURL("The URL contains control characters.")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UnsafeURL(f"The URL cannot be parsed ({exc}).") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UnsafeURL("Only https URLs are accepted.")
    if scheme == "http" and not (policy.allow_http or policy.allow_private):
        raise UnsafeURL("Only https URLs are accepted; http is not.")
    if "@" in parts.netloc:
        # ``https://trusted@evil/`` reads as the trusted host to people and some parsers.
        raise UnsafeURL("The URL must not carry a user name or password ('user@host').")
    host, address, port_text = _split_netloc(parts.netloc)
    if not port_text:
        port = _DEFAULT_PORTS[scheme]
    elif _PORT.fullmatch(port_text) and 1 <= int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise UnsafeURL(f"The URL's port {port_text!r} is not a number from 1 to 65535.")

    if address is not None:
        addresses: tuple[str, ...] = (str(address),)
        reason = _refusal(address, policy)
        if reason:
            raise UnsafeURL(f"The address {host} is {reason}; only public addresses are allowed.")
    else:
        reason = None if policy.allow_private else _name_refusal(host)
        if reason:
            raise UnsafeURL(f"The host {host!r} {reason}; only public hosts are allowed.")
        addresses = _resolve(host, port, policy) if resolve else ()

    authority = f"[{host}]" if ":" in host else host
    if port != _DEFAULT_PORTS[scheme]:
        authority = f"{authority}:{port}"
    target = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        target = f"{target}?{quote(parts.query, safe=_TARGET_SAFE)}"
    return CheckedURL(
        url=f"{scheme}://{authority}{target}",
        scheme=scheme,
        host=host,
        port=port,
        target=target,
        addresses=addresses,
    )


def _split_netloc(netloc: str) -> tuple[str, IPAddress | None, str]:
    """``(host, its address when the host is a literal, port text)``; hosts come back
    lower-case and ASCII, addresses in their canonical form."""
    if netloc.startswith("["):
        inside, bracket, port_text = netloc[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise UnsafeURL("The URL's host is not a valid bracketed IPv6 address.")
        if "%" in inside:
            raise UnsafeURL("IPv6 zone identifiers ('%') are not allowed in URLs.")
        try:
            address = ipaddress.IPv6Address(inside)
        except ValueError as exc:
            raise UnsafeURL(f"The URL's host [{inside}] is not a valid IPv6 address.") from exc
        return str(address), address, port_text[1:]
    if netloc.count(":") > 1:
        raise UnsafeURL("An IPv6 address in a URL must be written in brackets.")
    host, _, port_text = netloc.partition(":")
    if not host.isascii():
        # Encode before any other check: IDNA maps full-width digits and dots to ASCII,
        # so '１２７．０．０．１' would otherwise slip past as a name.
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise UnsafeURL("The URL's host is not a valid international name.") from exc
    host = host.lower().removesuffix(".")
    if not host:
        raise UnsafeURL("The URL has no host.")
    if not _NAME.fullmatch(host) or len(host) > 253:
        raise UnsafeURL(f"The URL's host {host!r} is not a valid host name.")
    if _NUMERIC_LABEL.fullmatch(host.rpartition(".")[2]):
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            # Octal, hex, short or decimal forms (0177.0.0.1, 0x7f.1, 127.1, 2130706433) serve
            # only to get past filters; a real URL writes the dotted quad.
            raise UnsafeURL(
                f"The host {host!r} is an IPv4 address in a non-standard form; "
                "write it as four decimal numbers (a.b.c.d)."
            ) from None
        return host, address, port_text
    return host, None, port_text


def _name_refusal(host: str) -> str | None:
    if "." not in host:
        return "has no dot, so it can only name a machine on a local network"
    if any(host == suffix or host.endswith(f".{suffix}") for suffix in _LOCAL_SUFFIXES):
        return "names a machine on a local network"
    return None


def _resolve(host: str, port: int, policy: NetPolicy) -> tuple[str, ...]:
    try:
        answers = policy.resolver(host, port)
    except (OSError, UnicodeError) as exc:
        raise _Unresolvable(f"The host {host!r} could not be resolved.") from exc
    if not answers:
        raise _Unresolvable(f"The host {host!r} could not be resolved.")
    try:
        # Canonical text from here on: the string connected to is the one checked.
        found = list(dict.fromkeys(ipaddress.ip_address(text) for text in answers))
    except ValueError:
        raise UnsafeURL(f"The host {host!r} resolves to something not an address.") from None
    for address in found:
        reason = _refusal(address, policy)
        if reason:
            # The address itself stays out of the message: it would tell the caller how
            # our internal DNS names map onto the private network.
            raise UnsafeURL(
                f"The host {host!r} resolves to {reason}; only public addresses are allowed."
            )
    return tuple(str(address) for address in found)


def _refusal(address: IPAddress, policy: NetPolicy) -> str | None:
    """Why ``address`` may not be reached under ``policy``, or None when it may."""
    if policy.allow_private or any(address in net for net in policy.exempt_networks):
        return None
    embedded = _embedded_ipv4(address)
    if embedded:
        # The wrapper prefix is only a way to reach the IPv4 address: judge that.
        for inner in embedded:
            reason = _public_refusal(inner)
            if reason:
                return f"an IPv6 address that wraps {reason}"
        return None
    return _public_refusal(address)


def _public_refusal(address: IPAddress) -> str | None:
    for network, reason in _NON_PUBLIC:
        if address in network:
            return reason
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved or address.is_unspecified or not address.is_global:
        return "a reserved address"
    return None


def _embedded_ipv4(address: IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo
    server and client), or ``()``."""
    if not isinstance(address, ipaddress.IPv6Address):
        return ()
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_MAPPED or address in _NAT64:
        return (low32,)
    # :: and ::1 sit inside the compatible range but are themselves, not wrappers.
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return (low32,)
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:
        return address.teredo
    return ()


@functools.cache
def _warn_allow_private() -> None:
    # functools.cache makes this run once per process, however many requests use the policy.
    log.warning(
        "XSD_ALLOW_PRIVATE_URLS is on: outbound requests may use http and reach private and "
        "loopback addresses. Never run a public deployment like this."
    )
