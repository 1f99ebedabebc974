"""The SSRF guard against real local HTTP and HTTPS servers (no mocks of the HTTP layer).

The real guard refuses loopback, so requests to the local servers use ``_local()``: http
allowed and 127.0.0.1 exempt, and nothing else. Made-up host names reach the servers through
an injected resolver, which is also how DNS rebinding is staged.
"""

from __future__ import annotations

import datetime
import gzip
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_network
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from scheduler.errors import FetchFailed, FetchTooLarge, UnsafeURL
from scheduler.net import policy as netpolicy
from scheduler.net.guard import fetch, post
from scheduler.net.policy import CheckedURL, NetPolicy, check_url

LOOPBACK = ip_network("127.0.0.1/32")
CDN = "images.example-cdn.test"
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
# Headers of a response that never ends: bodies are pushed until the client goes away.
ENDLESS_SECONDS = 10.0


def _local(**kwargs: object) -> NetPolicy:
    return NetPolicy(allow_http=True, exempt_networks=(LOOPBACK,), **kwargs)  # type: ignore[arg-type]


def _resolver(answers: dict[str, list[str]]) -> Callable[[str, int], list[str]]:
    def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    return resolve


def _no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"the resolver must not be called (for {host})")


# -- servers ---------------------------------------------------------------------------


@dataclass
class Seen:
    """One request a server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def log_message(self, *args: object) -> None:
        pass

    def _route(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.server.seen.append(Seen(self.command, parts.path, headers, body))
        query = {name: values[0] for name, values in parse_qs(parts.query).items()}
        getattr(self, "route_" + parts.path.strip("/").replace("-", "_"), self.route_missing)(query)

    def _send(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        if "Content_Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def route_missing(self, query: dict[str, str]) -> None:
        self._send(404, b"not here")

    def route_image(self, query: dict[str, str]) -> None:
        self._send(200, IMAGE, Content_Type="image/png")

    def route_host(self, query: dict[str, str]) -> None:
        self._send(200, self.headers["Host"].encode(), Content_Type="text/plain")

    def route_declared_big(self, query: dict[str, str]) -> None:
        # Declares far more than it sends: the client must give up on the header alone.
        self._send(200, b"x" * 10, Content_Length=str(50_000_000))

    def route_endless(self, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"%x\r\n%s\r\n" % (65536, b"z" * 65536)
        stop = time.monotonic() + ENDLESS_SECONDS
        try:
            while time.monotonic() < stop:
                self.wfile.write(chunk)
                self.server.endless_bytes += 65536
        except OSError:
            pass
        self.close_connection = True

    def route_gzip(self, query: dict[str, str]) -> None:
        self._send(200, gzip.compress(b"a" * 1_000_000), Content_Encoding="gzip")

    def route_redirect(self, query: dict[str, str]) -> None:
        self._send(int(query.get("status", "302")), Location=query["to"])

    def route_loop(self, query: dict[str, str]) -> None:
        self._send(302, Location="/loop")

    def route_slow(self, query: dict[str, str]) -> None:
        time.sleep(2)
        self._send(200, b"late")

    def route_trickle(self, query: dict[str, str]) -> None:
        # Slowloris: a byte of header every 50 ms, each well inside any socket timeout.
        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        stop = time.monotonic() + ENDLESS_SECONDS
        try:
            while time.monotonic() < stop:
                self.wfile.write(b"a")
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass
        self.close_connection = True

    def route_hook(self, query: dict[str, str]) -> None:
        self._send(int(query.get("status", "200")), b"thanks")

    def route_hook_redirect(self, query: dict[str, str]) -> None:
        self._send(302, Location="/target")

    def route_target(self, query: dict[str, str]) -> None:
        self._send(200, b"target")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True)
        self.seen: list[Seen] = []
        self.endless_bytes = 0
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hanging up mid-body is what half of these tests are about.
        pass

    def paths(self) -> list[str]:
        return [seen.path for seen in self.seen]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server()
    yield httpd
    httpd.stop()


@dataclass(frozen=True)
class _TLS:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> _TLS:
    """A throwaway CA and a certificate it signed for ``CDN``."""
    directory = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "netguard test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CDN)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(CDN)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = _TLS(ca=directory / "ca.pem", cert=directory / "cert.pem", key=directory / "key.pem")
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


@pytest.fixture
def https_server(tls: _TLS) -> Iterator[_Server]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    httpd = _Server(context)
    yield httpd
    httpd.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- check_url ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/a.png",
        "ftp://example.com/a.png",
        "file:///etc/passwd",
        "gopher://example.com/",
        "javascript:alert(1)",
        "data:image/png;base64,AAAA",
        "example.com/a.png",
        "https://user@example.com/",
        "https://user:pass@example.com/",
        "https://example.com\\@evil.example.org/",
        "https:///a.png",
        "https://:443/",
        "https://example.com/" + "a" * 2048,
        "https://example.com:0/",
        "https://example.com:65536/",
        "https://example.com:+443/",
        "https://example.com:https/",
        "https://exa mple.com/",
        "https://example.com/\r\nX-Injected: 1",
        "https://%31%32%37.0.0.1/",
    ],
)
def test_malformed_or_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeURL):
        check_url(url, NetPolicy(resolver=_no_dns))


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LOCALHOST.",
        "api.localhost",
        "metadata.google.internal",
        "printer.local",
        "router.home.arpa",
        "intranet",
    ],
)
def test_local_names_are_refused_before_resolving(host: str) -> None:
    with pytest.raises(UnsafeURL):
        check_url(f"https://{host}/", NetPolicy(resolver=_no_dns))


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0177.0.0.1",
        "0x7f000001",
        "0x7f.0.0.1",
        "127.000.000.001",
        "１２７．０．０．１",  # full-width digits and dots: IDNA maps them to 127.0.0.1
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "[::1]",
        "[::]",
        "[fe80::1]",
        "[fe80::1%25eth0]",
        "[fc00::1]",
        "[fd12:3456::1]",
        "[ff02::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:169.254.169.254]",
        "[::ffff:10.0.0.1]",
        "[::127.0.0.1]",
        "[64:ff9b::a9fe:a9fe]",
        "[64:ff9b:1::1]",
        "[2002:7f00:1::]",
        "[2002:a00:1::]",
        "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo, client 127.0.0.1
        "[2001:db8::1]",
    ],
)
def test_non_public_literals_are_refused_without_dns(host: str) -> None:
    with pytest.raises(UnsafeURL):
        check_url(f"https://{host}/a.png", NetPolicy(resolver=_no_dns))


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("https://93.184.216.34/a.png", "93.184.216.34"),
        ("https://[2606:4700:4700::1111]/a.png", "2606:4700:4700::1111"),
        ("https://[::ffff:93.184.216.34]/a.png", "::ffff:5db8:d822"),
        ("https://[64:ff9b::5db8:d822]/a.png", "64:ff9b::5db8:d822"),
    ],
)
def test_public_literals_pass_without_dns(url: str, address: str) -> None:
    checked = check_url(url, NetPolicy(resolver=_no_dns), resolve=True)
    assert checked.addresses == (address,)


def test_checked_url_is_normalised() -> None:
    checked = check_url(
        "HTTPS://Images.Example.COM.:8443/a b/é.png?size=1 2#frag",
        NetPolicy(resolver=_resolver({"images.example.com": ["93.184.216.34"]})),
    )
    assert checked == CheckedURL(
        url="https://images.example.com:8443/a%20b/%C3%A9.png?size=1%202",
        scheme="https",
        host="images.example.com",
        port=8443,
        target="/a%20b/%C3%A9.png?size=1%202",
        addresses=("93.184.216.34",),
    )
    assert check_url("https://[2606:4700::1]/", NetPolicy()).url == "https://[2606:4700::1]/"
    assert check_url("https://bücher.example/", NetPolicy(), resolve=False).host == (
        "xn--bcher-kva.example"
    )


def test_unresolved_name_has_no_addresses() -> None:
    checked = check_url(
        "https://images.example.com/a.png", NetPolicy(resolver=_no_dns), resolve=False
    )
    assert checked.addresses == ()
    assert checked.port == 443 and checked.target == "/a.png"


def test_name_resolving_to_a_private_address_is_refused() -> None:
    policy = NetPolicy(resolver=_resolver({"evil.example.com": ["169.254.169.254"]}))
    with pytest.raises(UnsafeURL) as caught:
        check_url("https://evil.example.com/", policy)
    # The refusal says what kind of address, never which one.
    assert "link-local" in caught.value.message
    assert "169.254" not in caught.value.message


def test_one_private_address_among_public_ones_refuses_the_name() -> None:
    answers = {"mixed.example.com": ["93.184.216.34", "2606:4700::1", "10.0.0.1"]}
    with pytest.raises(UnsafeURL):
        check_url("https://mixed.example.com/", NetPolicy(resolver=_resolver(answers)))


def test_name_resolving_to_public_addresses_keeps_them_all_once() -> None:
    answers = {"cdn.example.com": ["93.184.216.34", "2606:4700::1", "93.184.216.34"]}
    checked = check_url("https://cdn.example.com/", NetPolicy(resolver=_resolver(answers)))
    assert checked.addresses == ("93.184.216.34", "2606:4700::1")


def test_unresolvable_name_is_unsafe_when_checking() -> None:
    with pytest.raises(UnsafeURL, match="could not be resolved"):
        check_url("https://nowhere.example.com/", NetPolicy(resolver=_resolver({})))


def test_allow_http_opens_only_the_scheme() -> None:
    policy = NetPolicy(allow_http=True, resolver=_no_dns)
    assert check_url("http://93.184.216.34/", policy).port == 80
    with pytest.raises(UnsafeURL):
        check_url("http://127.0.0.1/", policy)


def test_exempt_networks_open_only_those_addresses() -> None:
    policy = _local(resolver=_no_dns)
    assert check_url("http://127.0.0.1:8080/", policy).addresses == ("127.0.0.1",)
    for url in ("http://127.0.0.2/", "http://[::1]/", "http://[::ffff:127.0.0.1]/"):
        with pytest.raises(UnsafeURL):
            check_url(url, policy)
    with pytest.raises(UnsafeURL):
        check_url("http://localhost/", policy)


def test_allow_private_lets_everything_through_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    netpolicy._warn_allow_private.cache_clear()
    policy = NetPolicy(
        allow_private=True, resolver=_resolver({"db.internal": ["10.0.0.5"], "hooks": ["::1"]})
    )
    with caplog.at_level(logging.WARNING, logger="scheduler.net.policy"):
        assert check_url("http://127.0.0.1:9/", policy).addresses == ("127.0.0.1",)
        assert check_url("http://[::ffff:169.254.169.254]/", policy).host == "::ffff:a9fe:a9fe"
        assert check_url("https://db.internal/", policy).addresses == ("10.0.0.5",)
        assert check_url("http://hooks:8080/", policy).addresses == ("::1",)
    warnings = [r for r in caplog.records if "XSD_ALLOW_PRIVATE_URLS" in r.getMessage()]
    assert len(warnings) == 1
    # The URL's form is still checked: these are not addresses but disguises.
    with pytest.raises(UnsafeURL):
        check_url("http://user@127.0.0.1/", policy)
    with pytest.raises(UnsafeURL):
        check_url("http://0x7f.1/", policy)


def test_default_resolver_returns_unique_address_strings() -> None:
    assert NetPolicy().resolver("127.0.0.1", 443) == ["127.0.0.1"]


# -- fetch -------------------------------------------------------------------------------


def test_fetch_returns_body_and_content_type(server: _Server) -> None:
    fetched = fetch(f"http://127.0.0.1:{server.port}/image", _local(), max_bytes=10_000, timeout=5)
    assert fetched.data == IMAGE
    assert fetched.content_type == "image/png"
    assert fetched.url == f"http://127.0.0.1:{server.port}/image"
    assert server.seen[0].headers["accept-encoding"] == "identity"


def test_body_of_exactly_max_bytes_is_accepted(server: _Server) -> None:
    url = f"http://127.0.0.1:{server.port}/image"
    assert fetch(url, _local(), max_bytes=len(IMAGE), timeout=5).data == IMAGE
    with pytest.raises(FetchTooLarge):
        fetch(url, _local(), max_bytes=len(IMAGE) - 1, timeout=5)


def test_error_status_fails(server: _Server) -> None:
    with pytest.raises(FetchFailed, match="404") as caught:
        fetch(f"http://127.0.0.1:{server.port}/missing", _local(), max_bytes=1000, timeout=5)
    assert not isinstance(caught.value, FetchTooLarge)


def test_declared_length_over_the_cap_fails_at_once(server: _Server) -> None:
    with pytest.raises(FetchTooLarge, match="50000000"):
        fetch(f"http://127.0.0.1:{server.port}/declared-big", _local(), max_bytes=1000, timeout=5)


def test_endless_chunked_body_is_cut_off_at_the_cap(server: _Server) -> None:
    started = time.monotonic()
    with pytest.raises(FetchTooLarge):
        fetch(f"http://127.0.0.1:{server.port}/endless", _local(), max_bytes=200_000, timeout=5)
    assert time.monotonic() - started < 2
    # The client hung up: the server stops soon after, far short of its 10 seconds.
    time.sleep(0.2)
    sent = server.endless_bytes
    time.sleep(0.2)
    assert server.endless_bytes == sent


def test_compressed_body_is_returned_raw(server: _Server) -> None:
    # Inflated it would be 1 MB, a hundred times the cap: it must not be inflated.
    fetched = fetch(f"http://127.0.0.1:{server.port}/gzip", _local(), max_bytes=10_000, timeout=5)
    assert gzip.decompress(fetched.data) == b"a" * 1_000_000


def _redirect(server: _Server, to: str, status: int = 302) -> str:
    return f"http://127.0.0.1:{server.port}/redirect?status={status}&to={quote(to, safe='')}"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_to_an_allowed_url_is_followed(server: _Server, status: int) -> None:
    fetched = fetch(_redirect(server, "/image", status), _local(), max_bytes=10_000, timeout=5)
    assert fetched.data == IMAGE
    assert fetched.url == f"http://127.0.0.1:{server.port}/image"


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.2:{port}/image",
        "http://[::1]:{port}/image",
        "http://2130706433:{port}/image",
        "http://localhost:{port}/image",
        "https://user@127.0.0.1:{port}/image",
        "file:///etc/passwd",
    ],
)
def test_redirect_to_a_refused_url_raises_unsafe(server: _Server, target: str) -> None:
    url = _redirect(server, target.format(port=server.port))
    with pytest.raises(UnsafeURL):
        fetch(url, _local(), max_bytes=10_000, timeout=5)
    assert server.paths() == ["/redirect"]


def test_redirect_loop_fails_after_max_redirects(server: _Server) -> None:
    url = f"http://127.0.0.1:{server.port}/loop"
    with pytest.raises(FetchFailed, match="redirected more than 3 times"):
        fetch(url, _local(), max_bytes=1000, timeout=5, max_redirects=3)
    assert server.paths() == ["/loop"] * 4


def test_zero_redirects_refuses_any_redirect(server: _Server) -> None:
    with pytest.raises(FetchFailed):
        fetch(_redirect(server, "/image"), _local(), max_bytes=10_000, timeout=5, max_redirects=0)
    assert server.paths() == ["/redirect"]


def test_credentials_do_not_follow_a_redirect_to_another_origin(server: _Server) -> None:
    policy = _local(resolver=_resolver({CDN: ["127.0.0.1"]}))
    headers = {"Authorization": "Bearer secret", "X-Trace": "1"}
    same = _redirect(server, "/host")
    fetch(same, policy, max_bytes=1000, timeout=5, headers=headers)
    other = _redirect(server, f"http://{CDN}:{server.port}/host")
    fetch(other, policy, max_bytes=1000, timeout=5, headers=headers)
    same_hop, other_hop = server.seen[1], server.seen[3]
    assert same_hop.headers["authorization"] == "Bearer secret"
    assert "authorization" not in other_hop.headers
    assert other_hop.headers["x-trace"] == "1"


def test_slow_server_times_out(server: _Server) -> None:
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="within 0.3 seconds"):
        fetch(f"http://127.0.0.1:{server.port}/slow", _local(), max_bytes=1000, timeout=0.3)
    assert time.monotonic() - started < 1


def test_trickling_server_is_cut_off_at_the_deadline(server: _Server) -> None:
    # Every byte arrives well inside a socket timeout; only the overall deadline stops it.
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="within 0.5 seconds"):
        fetch(f"http://127.0.0.1:{server.port}/trickle", _local(), max_bytes=1000, timeout=0.5)
    assert time.monotonic() - started < 1.5


def test_unresolvable_name_fails_the_fetch() -> None:
    with pytest.raises(FetchFailed, match="could not be resolved") as caught:
        fetch(
            "https://nowhere.example.com/", _local(resolver=_resolver({})), max_bytes=1, timeout=1
        )
    assert not isinstance(caught.value, UnsafeURL)


def test_addresses_are_tried_in_order_once_each(server: _Server) -> None:
    # Nothing listens on 127.0.0.3 or .4 (the server is bound to 127.0.0.1 only).
    answers = {CDN: ["127.0.0.3", "127.0.0.1"], "down.example-cdn.test": ["127.0.0.3", "127.0.0.4"]}
    policy = NetPolicy(
        allow_http=True,
        exempt_networks=(ip_network("127.0.0.0/8"),),
        resolver=_resolver(answers),
    )
    fetched = fetch(f"http://{CDN}:{server.port}/image", policy, max_bytes=10_000, timeout=5)
    assert fetched.data == IMAGE
    with pytest.raises(FetchFailed, match=r"127\.0\.0\.3: connection refused; 127\.0\.0\.4"):
        fetch(f"http://down.example-cdn.test:{server.port}/", policy, max_bytes=10, timeout=5)


def test_connection_is_pinned_to_the_checked_address(server: _Server) -> None:
    # DNS rebinding: the first answer passes the check, later ones point elsewhere.
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["10.0.0.1"]

    policy = _local(resolver=rebinding)
    fetched = fetch(f"http://{CDN}:{server.port}/host", policy, max_bytes=1000, timeout=5)
    assert calls == [CDN]
    assert fetched.data == f"{CDN}:{server.port}".encode()
    assert fetched.url == f"http://{CDN}:{server.port}/host"
    # The next call resolves afresh, and the rebound answer is refused.
    with pytest.raises(UnsafeURL):
        fetch(f"http://{CDN}:{server.port}/host", policy, max_bytes=1000, timeout=5)


def test_https_is_verified_against_the_host_name(https_server: _Server, tls: _TLS) -> None:
    policy = NetPolicy(
        exempt_networks=(LOOPBACK,),
        resolver=_resolver({CDN: ["127.0.0.1"], "other.example-cdn.test": ["127.0.0.1"]}),
        ca_certs=str(tls.ca),
    )
    fetched = fetch(f"https://{CDN}:{https_server.port}/host", policy, max_bytes=1000, timeout=5)
    assert fetched.data == f"{CDN}:{https_server.port}".encode()
    with pytest.raises(FetchFailed, match="certificate"):
        fetch(
            f"https://other.example-cdn.test:{https_server.port}/host",
            policy,
            max_bytes=1000,
            timeout=5,
        )
    with pytest.raises(FetchFailed, match="certificate"):
        fetch(f"https://127.0.0.1:{https_server.port}/host", policy, max_bytes=1000, timeout=5)
    untrusted = NetPolicy(exempt_networks=(LOOPBACK,), resolver=policy.resolver)
    with pytest.raises(FetchFailed, match="certificate"):
        fetch(f"https://{CDN}:{https_server.port}/host", untrusted, max_bytes=1000, timeout=5)
    assert https_server.paths() == ["/host"]


# -- post --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 204, 410, 500])
def test_post_returns_the_status(server: _Server, status: int) -> None:
    url = f"http://127.0.0.1:{server.port}/hook?status={status}"
    assert post(url, b"{}", _local(), headers={}, timeout=5) == status


def test_post_delivers_body_and_headers(server: _Server) -> None:
    policy = _local(resolver=_resolver({CDN: ["127.0.0.1"]}))
    body = b'{"requestId": "req_1"}'
    headers = {
        "Content-Type": "application/json",
        "X-XMode-Signature": "v1=abc",
        "Host": "evil.example.org",
        "Content-Length": "1",
    }
    assert post(f"http://{CDN}:{server.port}/hook", body, policy, headers=headers, timeout=5) == 200
    (seen,) = server.seen
    assert (seen.method, seen.body) == ("POST", body)
    assert seen.headers["x-xmode-signature"] == "v1=abc"
    assert seen.headers["content-type"] == "application/json"
    # The guard owns Host and framing: a caller cannot re-target or desynchronise the request.
    assert seen.headers["host"] == f"{CDN}:{server.port}"
    assert seen.headers["content-length"] == str(len(body))


def test_post_does_not_follow_redirects(server: _Server) -> None:
    url = f"http://127.0.0.1:{server.port}/hook-redirect"
    assert post(url, b"{}", _local(), headers={}, timeout=5) == 302
    assert server.paths() == ["/hook-redirect"]


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.1/hook",
        "https://localhost/hook",
        "https://[::ffff:127.0.0.2]/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://user@hooks.example.com/",
    ],
)
def test_post_refuses_unsafe_urls(url: str) -> None:
    with pytest.raises(UnsafeURL):
        post(url, b"{}", _local(resolver=_no_dns), headers={}, timeout=5)


def test_post_refuses_a_name_resolving_privately(server: _Server) -> None:
    policy = _local(resolver=_resolver({"hooks.example.com": ["127.0.0.1", "10.0.0.1"]}))
    with pytest.raises(UnsafeURL):
        post(f"http://hooks.example.com:{server.port}/hook", b"{}", policy, headers={}, timeout=5)
    assert server.seen == []


def test_post_timeout_and_refused_connection_fail(server: _Server) -> None:
    with pytest.raises(FetchFailed, match="within 0.3 seconds"):
        post(f"http://127.0.0.1:{server.port}/slow", b"{}", _local(), headers={}, timeout=0.3)
    with pytest.raises(FetchFailed, match="connection refused"):
        post(f"http://127.0.0.1:{_free_port()}/hook", b"{}", _local(), headers={}, timeout=5)
