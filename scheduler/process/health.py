"""The HTTP endpoint of worker and beat processes: /metrics, /healthz and /readyz.

Celery processes have no HTTP server of their own; this one runs in a daemon thread on
``XSD_METRICS_PORT`` so Kubernetes can probe them and Prometheus can scrape them. It binds
``XSD_METRICS_HOST``, else where the API binds (``XSD_HOST``). Each
process serves its own registry, so there is no multiprocess aggregation to configure:
GPU workers run the solo pool and CPU workers a thread pool, both single-process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

__all__ = ["ready", "problems", "serve"]

# Set once the process takes work (for GPU workers: once their models are loaded).
ready = threading.Event()
# Why a started process is not ready now (e.g. a full upload spool), by name.
problems: dict[str, str] = {}

_metrics_app = make_wsgi_app()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:  # probes every few seconds would flood logs
        pass


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/metrics":
        return _metrics_app(environ, start_response)
    if path == "/healthz":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]
    if path == "/readyz":
        if ready.is_set() and not problems:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ready\n"]
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        why = "; ".join(problems.values()) if ready.is_set() else "starting"
        return [f"{why}\n".encode()]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found\n"]


def serve(port: int, *, host: str) -> ThreadingWSGIServer:
    """Serve the endpoints on ``host`` in a daemon thread; returns the server
    (``.server_port``)."""
    server = make_server(host, port, _app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
