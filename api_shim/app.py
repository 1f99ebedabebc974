"""The FastAPI application factory."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import Counter, Histogram

from scheduler import (
    InFlightCollector,
    QueueDepthCollector,
    RateStatus,
    Runtime,
    Service,
    register_once,
)

from . import openapi, ops, routes
from .errors import install_handlers, rate_limit_headers
from .events import StreamSlots

__all__ = ["create_app"]

HTTP_REQUESTS = Counter(
    "xsd_http_requests_total", "HTTP requests answered", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "xsd_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)


def _route_template(request: Request) -> str:
    # The path template the router matched, never the raw path: ids and emails must not
    # become label values.
    return str(getattr(request.scope.get("route"), "path", "unmatched"))


def create_app(runtime: Runtime) -> FastAPI:
    """The API over a process runtime."""
    app = FastAPI(
        title="xSD 4.5",
        version="4.5",
        description="Self-hosted xSD 4.5 image generation. Authenticate with "
        "`Authorization: Bearer xm_live_...`.",
        docs_url="/docs",
        redoc_url=None,
        # Operation ids are the handlers' names (get_generation), as links refer to them.
        generate_unique_id_function=lambda route: route.name,
    )
    service = app.state.service = Service(runtime)
    app.state.streams = StreamSlots()
    register_once("queue_depth", QueueDepthCollector(service.queue_length, service.queue_names))
    register_once("in_flight", InFlightCollector(service.in_flight))
    install_handlers(app)
    app.include_router(routes.router)
    app.include_router(ops.router)
    openapi.install(app, service.model_aliases)

    @app.middleware("http")
    async def observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        rate: RateStatus | None = getattr(request.state, "rate", None)
        if rate is not None:
            # Authenticated and counted: Redis answered this request.
            request.app.state.service.outage.succeeded()
        if rate is not None and "X-RateLimit-Limit" not in response.headers:
            response.headers.update(
                rate_limit_headers(
                    limit=rate.limit, remaining=rate.remaining, reset_seconds=rate.reset_seconds
                )
            )
        route = _route_template(request)
        HTTP_LATENCY.labels(route, request.method).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        return response

    return app
