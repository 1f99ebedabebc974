"""Operational endpoints: liveness, readiness, metrics, and local signed files."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scheduler import FILES_PATH, open_signed_file

from .openapi import errors
from .routes import service_of

__all__ = ["router"]

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
def readyz(request: Request) -> JSONResponse:
    """Ready to accept work: Redis answers."""
    ready = service_of(request).ready()
    return JSONResponse(
        {"status": "ok" if ready else "unavailable"}, status_code=200 if ready else 503
    )


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    """Prometheus exposition."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get(
    f"{FILES_PATH}{{key:path}}",
    summary="A signed image URL (local storage)",
    response_class=FileResponse,
    responses={
        200: {
            "description": "The image.",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        },
        **errors(400, 403, 404, 500),
    },
)
def signed_file(
    request: Request,
    key: str,
    expires: Annotated[str, Query()],
    signature: Annotated[str, Query()],
) -> FileResponse:
    """Serves a stored image while its signed URL is valid (local storage only)."""
    store = service_of(request).object_store
    path, content_type = open_signed_file(store, key, expires=expires, signature=signature)
    return FileResponse(
        path, media_type=content_type, headers={"Cache-Control": "private, max-age=3600"}
    )
