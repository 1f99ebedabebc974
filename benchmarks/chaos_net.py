"""The chaos suite's loopback network edges, each of which the harness can break.

- :class:`TcpProxy` sits in front of moto's S3 server: it can refuse connections (stop
  listening, reset open ones) or hang them (accept, forward nothing), and recover, while
  moto keeps its objects in memory.
- :class:`WebhookReceiver` verifies every delivery's signature and can be stopped and
  started again on the same port.
- :class:`ImageHost` serves the reference images jobs point at.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from PIL import Image

from api_shim.client import SignatureError, verify_webhook
from scheduler.redis.embedded import free_port

__all__ = ["ProxyMode", "TcpProxy", "Delivery", "WebhookReceiver", "ImageHost"]

_CHUNK = 65536


class ProxyMode(StrEnum):
    """What the proxy does with connections."""

    FORWARD = "forward"
    # Nothing listens on the port: connecting fails at once, open connections are reset.
    REFUSE = "refuse"
    # Connections are accepted and kept open, but no byte goes through either way.
    HANG = "hang"


class TcpProxy:
    """Forwards a loopback port to ``target``; see :class:`ProxyMode`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.mode = ProxyMode.FORWARD
        self._flowing = threading.Event()
        self._flowing.set()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    @property
    def url(self) -> str:
        """``http://`` base URL of the proxied service."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        """Listen (again) on the proxy's port."""
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def set_mode(self, mode: ProxyMode) -> None:
        """Switch to ``mode``; FORWARD lets everything through again."""
        if mode is ProxyMode.HANG:
            self._flowing.clear()
        if mode is ProxyMode.REFUSE:
            self._stop_listening()
            with self._lock:
                open_sockets, self._sockets = list(self._sockets), set()
            for sock in open_sockets:
                _reset(sock)
        if mode is ProxyMode.FORWARD:
            if self._listener is None:
                self.start()
            self._flowing.set()
        self.mode = mode

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self.set_mode(ProxyMode.REFUSE)
        self._flowing.set()  # lets blocked pumps notice their sockets are gone

    def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            self._track(client)
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _connect(self, client: socket.socket) -> None:
        self._flowing.wait()
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        self._track(upstream)
        back = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
        back.start()
        self._pump(client, upstream)
        back.join()
        with self._lock:
            self._sockets.difference_update((client, upstream))
        client.close()
        upstream.close()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(_CHUNK):
                self._flowing.wait()
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            _reset(sink)
            _reset(source)


def _reset(sock: socket.socket) -> None:
    # SO_LINGER 0: close with a RST, as a dead peer's kernel would answer.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


@dataclass(frozen=True)
class Delivery:
    """One webhook POST as received."""

    account: str
    request_id: str
    status: str
    delivery_id: str
    received_at: float
    verified: bool


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, content_type, payload = self.server.respond(self, body)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _serve

    def log_message(self, *args: object) -> None:
        pass


Responder = Callable[[BaseHTTPRequestHandler, bytes], tuple[int, str, bytes]]


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, respond: Responder) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.respond = respond


class _Restartable:
    """An HTTP server on a fixed loopback port that can be stopped and started again."""

    def __init__(self) -> None:
        self.port = free_port()
        self._httpd: _HttpServer | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def respond(self, request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, str, bytes]:
        raise NotImplementedError

    def start(self) -> Self:
        """Serve on the port (again)."""
        self._httpd = _HttpServer(self.port, self.respond)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving: connections to the port are refused until :meth:`start`."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()


class WebhookReceiver(_Restartable):
    """Receives at ``/hooks/<account>`` and verifies each delivery against that account's
    webhook secret (registered with :meth:`add_account`)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[str, str] = {}
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()

    def add_account(self, account: str, secret: str) -> str:
        """Register an account; returns the webhook URL its jobs use."""
        self.secrets[account] = secret
        return f"{self.base}/hooks/{account}"

    def respond(self, request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, str, bytes]:
        account = request.path.rsplit("/", 1)[-1]
        try:
            verify_webhook(self.secrets.get(account, ""), body, dict(request.headers.items()))
            verified = True
        except SignatureError:
            verified = False
        try:
            record = json.loads(body)
            request_id, status = str(record["requestId"]), str(record["status"])
        except (ValueError, KeyError, TypeError):
            request_id, status = "", ""
        delivery = Delivery(
            account=account,
            request_id=request_id,
            status=status,
            delivery_id=request.headers.get("X-XMode-Delivery", ""),
            received_at=time.time(),
            verified=verified,
        )
        with self._lock:
            self.deliveries.append(delivery)
        return 200, "text/plain", b"ok"

    def received(self) -> list[Delivery]:
        """Every delivery so far."""
        with self._lock:
            return list(self.deliveries)


def _png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


class ImageHost(_Restartable):
    """Serves a few reference PNGs of different aspect ratios."""

    def __init__(self) -> None:
        super().__init__()
        self.images = {
            "/ref/portrait.png": _png(300, 400, (200, 40, 40)),
            "/ref/landscape.png": _png(480, 270, (40, 120, 200)),
            "/ref/square.png": _png(256, 256, (30, 160, 60)),
        }

    def urls(self) -> list[str]:
        """The URL of every image."""
        return [f"{self.base}{path}" for path in self.images]

    def respond(self, request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, str, bytes]:
        data = self.images.get(request.path)
        if data is None:
            return 404, "text/plain", b"no such image"
        return 200, "image/png", data
