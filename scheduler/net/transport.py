"""The SSRF guard's transport: one HTTP/1.1 exchange over a socket pinned to checked addresses.

``scheduler.net.policy`` decides what may be reached; this module only carries out a request
to a ``CheckedURL`` without ever resolving its host again. It is built on ``http.client``
over sockets it opens itself, which keeps every step in view: no connection pool, no
retries, no proxies from the environment, no automatic decompression.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..errors import FetchFailed, FetchTooLarge

if TYPE_CHECKING:
    from .policy import CheckedURL

__all__ = ["Deadline", "exchange", "read_body", "discard_body", "USER_AGENT"]

USER_AGENT = "xsd-worker-pool"
_CHUNK_BYTES = 64 * 1024
# Set by the transport itself: Host must name the checked host, a compressed body would
# slip past the size cap, and framing headers from a caller could desynchronise the exchange.
_OWN_HEADERS = frozenset(
    {"host", "accept-encoding", "connection", "content-length", "transfer-encoding"}
)


class Deadline:
    """One wall-clock budget for a whole call, every hop and byte included."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left; zero or less once the deadline has passed."""
        return self._end - time.monotonic()


@contextlib.contextmanager
def exchange(
    checked: CheckedURL,
    method: str,
    *,
    headers: Mapping[str, str],
    body: bytes | None,
    ca_certs: str | None,
    deadline: Deadline,
) -> Iterator[http.client.HTTPResponse]:
    """Send one request to ``checked`` over a connection to one of its checked addresses and
    yield the response, body unread; the connection is closed on the way out.

    Connection, TLS and protocol errors, raised here or while the caller reads the body,
    become ``FetchFailed``."""
    sock = _connect(checked, deadline)
    watchdog = _Watchdog(sock, deadline)
    connection = _PinnedConnection(checked.host, checked.port)
    response: http.client.HTTPResponse | None = None
    try:
        if checked.scheme == "https":
            # The certificate is verified against the host name, not the address we dialled:
            # pinning the address must not weaken TLS.
            sock = _tls_context(ca_certs).wrap_socket(sock, server_hostname=checked.host)
        connection.sock = sock
        connection.request(method, checked.target, body=body, headers=_headers(checked, headers))
        response = connection.getresponse()
        _check_in_time(checked, watchdog, deadline)
        yield response
        _check_in_time(checked, watchdog, deadline)
    except (OSError, http.client.HTTPException) as exc:
        if watchdog.fired or isinstance(exc, TimeoutError):
            raise _late(checked, deadline) from exc
        raise FetchFailed(f"Requesting {checked.url} failed: {_describe(exc)}.") from exc
    finally:
        watchdog.stop()
        if response is not None:
            response.close()
        connection.close()
        sock.close()


def read_body(response: http.client.HTTPResponse, *, limit: int, url: str) -> bytes:
    """The whole body, raw; ``FetchTooLarge`` as soon as it is known to exceed ``limit``."""
    if response.length is not None and response.length > limit:
        raise FetchTooLarge(f"{url} declares {response.length} bytes; the limit is {limit}.")
    chunks: list[bytes] = []
    size = 0
    # read1 returns what has arrived, chunked or not, so the cap is checked as bytes come
    # in and an endless body is abandoned after ``limit`` bytes.
    while chunk := response.read1(_CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise FetchTooLarge(f"{url} sent more than the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def discard_body(response: http.client.HTTPResponse, *, limit: int) -> None:
    """Read and drop up to ``limit`` bytes of the body, ignoring failures to do so."""
    left = limit
    with contextlib.suppress(OSError, http.client.HTTPException):
        while left > 0 and (chunk := response.read1(min(left, _CHUNK_BYTES))):
            left -= len(chunk)


def _check_in_time(checked: CheckedURL, watchdog: _Watchdog, deadline: Deadline) -> None:
    # Cut off by the watchdog, the server looks to http.client as if it had closed the
    # connection: a header block or close-delimited body would read as complete.
    if watchdog.fired:
        raise _late(checked, deadline)


def _late(checked: CheckedURL, deadline: Deadline) -> FetchFailed:
    return FetchFailed(f"{checked.url} did not answer within {deadline.seconds:g} seconds.")


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a socket this module opened to a checked address."""

    def connect(self) -> None:
        # http.client reopens a closed connection by itself, resolving the host name again:
        # that would undo the pinning, so it may never open one.
        raise http.client.NotConnected(f"The connection to {self.host} is closed.")


class _Watchdog:
    """Shuts a connection down when the deadline passes, whatever call is blocked on it.

    Socket timeouts bound each read, not their sum: a server that trickles a header or a
    chunk-size line a byte at a time would otherwise hold a worker thread for hours."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        # A duplicate descriptor reaches the same connection and stays usable after the TLS
        # layer has taken over the original socket object.
        self._sock = sock.dup()
        self.fired = False
        self._timer = threading.Timer(deadline.left(), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._timer.cancel()
        # Joined before closing, so the timer can never act on a descriptor number that the
        # process has already reused for something else.
        self._timer.join()
        self._sock.close()


def _connect(checked: CheckedURL, deadline: Deadline) -> socket.socket:
    """A TCP connection to the first checked address that accepts one: one attempt each."""
    failures: list[str] = []
    for index, address in enumerate(checked.addresses):
        left = deadline.left()
        if left <= 0:
            break
        # AI_NUMERICHOST: the address is already checked; this only builds the socket
        # address (with an IPv6 scope, if any) and can never query DNS.
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            address, checked.port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            # Share the time left among the addresses still to try, so that one address
            # that swallows packets cannot use up the whole budget.
            sock.settimeout(left / (len(checked.addresses) - index))
            sock.connect(sockaddr)
            sock.settimeout(max(deadline.left(), 0.001))
        except OSError as exc:
            sock.close()
            failures.append(f"{address}: {_describe(exc)}")
            continue
        return sock
    if not failures:
        raise _late(checked, deadline)
    raise FetchFailed(f"Could not connect to {checked.host} ({'; '.join(failures)}).")


def _headers(checked: CheckedURL, extra: Mapping[str, str]) -> dict[str, str]:
    names = {name.lower() for name in extra}
    headers = {} if "user-agent" in names else {"User-Agent": USER_AGENT}
    headers.update(
        (name, value) for name, value in extra.items() if name.lower() not in _OWN_HEADERS
    )
    headers["Host"] = urlsplit(checked.url).netloc
    headers["Accept-Encoding"] = "identity"
    headers["Connection"] = "close"
    return headers


@functools.lru_cache(maxsize=8)
def _tls_context(ca_certs: str | None) -> ssl.SSLContext:
    """System trust plus ``ca_certs``; certificate and host name verification required.
    Cached: loading the system store costs milliseconds, and contexts are thread-safe."""
    context = ssl.create_default_context()
    if ca_certs:
        context.load_verify_locations(cafile=ca_certs)
    return context


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its TLS certificate does not verify ({exc.verify_message})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__
