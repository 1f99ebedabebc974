"""Guarded outbound requests: GET a reference, POST a webhook, to URLs users choose.

Every hop is checked by :mod:`scheduler.net.policy` and carried out by
:mod:`scheduler.net.transport` over sockets pinned to the checked addresses; this module adds
what a whole call needs: redirects followed by hand (each hop checked again, credentials
dropped across origins), status handling and one deadline for the whole call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from ..errors import FetchFailed
from . import transport
from .policy import CheckedURL, NetPolicy, check_request_url

__all__ = ["Fetched", "fetch", "post"]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_POST_RESPONSE_BYTES = 64 * 1024
_CREDENTIALS = frozenset({"authorization", "cookie", "proxy-authorization"})


@dataclass(frozen=True)
class Fetched:
    """A fetched body, exactly as sent (never decompressed)."""

    data: bytes
    content_type: str | None
    url: str
    """The URL the body came from, after redirects."""


def fetch(
    url: str,
    policy: NetPolicy,
    *,
    max_bytes: int,
    timeout: float,
    max_redirects: int = 3,
    headers: Mapping[str, str] | None = None,
) -> Fetched:
    """GET ``url`` through the guard, following at most ``max_redirects`` redirects.

    ``timeout`` bounds the whole call (every hop, connect to last byte). Raises
    ``UnsafeURL`` for a URL or redirect the policy refuses, ``FetchTooLarge`` when the body
    exceeds ``max_bytes`` (declared or while streaming), ``FetchFailed`` otherwise."""
    if max_bytes < 0 or timeout <= 0 or max_redirects < 0:
        raise ValueError("max_bytes and max_redirects must be >= 0 and timeout > 0.")
    deadline = transport.Deadline(timeout)
    extra = dict(headers or {})
    current = url
    for _hop in range(max_redirects + 1):
        checked = check_request_url(current, policy)
        with transport.exchange(
            checked, "GET", headers=extra, body=None, ca_certs=policy.ca_certs, deadline=deadline
        ) as response:
            if response.status in _REDIRECTS:
                current = _redirect_target(checked, response.getheader("Location"))
                if _origin(current) != _origin(checked.url):
                    # As browsers do: credentials meant for one origin never follow a redirect
                    # to another.
                    extra = {k: v for k, v in extra.items() if k.lower() not in _CREDENTIALS}
                continue
            if not 200 <= response.status < 300:
                raise FetchFailed(f"{checked.url} answered with HTTP status {response.status}.")
            data = transport.read_body(response, limit=max_bytes, url=checked.url)
            return Fetched(
                data=data, content_type=response.getheader("Content-Type"), url=checked.url
            )
    raise FetchFailed(f"{url} redirected more than {max_redirects} times.")


def post(
    url: str, body: bytes, policy: NetPolicy, *, headers: Mapping[str, str], timeout: float
) -> int:
    """POST ``body`` to ``url`` through the guard and return the response status.

    Redirects are not followed (a 3xx is returned like any status): a webhook receiver has
    no reason to send one, and following it would re-send the body elsewhere. ``timeout``
    bounds the whole exchange, the first 64 KiB of the answer included. Raises ``UnsafeURL``
    when the policy refuses the URL, ``FetchFailed`` when the exchange fails."""
    if timeout <= 0:
        raise ValueError("timeout must be > 0.")
    deadline = transport.Deadline(timeout)
    checked = check_request_url(url, policy)
    with transport.exchange(
        checked, "POST", headers=headers, body=body, ca_certs=policy.ca_certs, deadline=deadline
    ) as response:
        # Read (and drop) a little of the answer so the receiver can finish writing it. The
        # status is in hand: a receiver that hangs up mid-answer has still been delivered to.
        transport.discard_body(response, limit=_POST_RESPONSE_BYTES)
        return response.status


def _redirect_target(checked: CheckedURL, location: str | None) -> str:
    if not location:
        raise FetchFailed(f"{checked.url} answered with a redirect but no Location header.")
    return urljoin(checked.url, location.strip())


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()
