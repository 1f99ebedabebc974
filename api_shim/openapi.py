"""The OpenAPI document: response shapes, every status each endpoint answers, and the
request body of ``POST /v1/generations``.

The handlers return plain dicts (built by :mod:`scheduler.jobs.views` and the service), so the
models here document those dicts and are never used to serialise them; the schemathesis
test checks live responses against them. The request body is validated by hand (see
:mod:`api_shim.body`), so FastAPI cannot derive its schema: :func:`install` adds it, with
its nested definitions, under ``components/schemas``, and drops the 422 responses FastAPI
documents for a validation it never performs (this API answers 400).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from scheduler import JobErrorCode, JobStatus

from .exceptions import ErrorCode
from .schemas import GenerationBody

__all__ = [
    "BODY_REF",
    "RECORD_LINKS",
    "Account",
    "DeleteResult",
    "ErasureResult",
    "ErrorBody",
    "GenerationList",
    "GenerationRecord",
    "ModelList",
    "Usage",
    "errors",
    "events_ok",
    "install",
    "ok",
]

_COMPONENTS = "#/components/schemas/"
BODY_REF = {"$ref": f"{_COMPONENTS}{GenerationBody.__name__}"}
# What a client can do with the requestId of a new generation (operation ids are the
# handlers' names).
RECORD_LINKS = {
    name: {"operationId": operation, "parameters": {"request_id": "$response.body#/requestId"}}
    for name, operation in (
        ("GetGeneration", "get_generation"),
        ("CancelGeneration", "cancel_generation"),
        ("DeleteGeneration", "delete_generation"),
    )
}


_API_CODES = [code.value for code in ErrorCode]


class ErrorDetail(BaseModel):
    """What went wrong."""

    code: str = Field(description=f"{', '.join(_API_CODES[:-1])} or {_API_CODES[-1]}.")
    message: str = Field(description="A full sentence for humans.")
    param: str | None = Field(description="The field or header at fault, if one is.")


class ErrorBody(BaseModel):
    """Every error the API answers."""

    error: ErrorDetail


class JobError(BaseModel):
    """Why a generation failed."""

    code: str = Field(description=", ".join(code.value for code in JobErrorCode) + ".")
    message: str | None = None


class ImageError(BaseModel):
    """Why one image of a generation is missing."""

    code: str


class Image(BaseModel):
    """One image of a succeeded generation: ``url`` or ``b64Json``, or ``error``."""

    id: str
    expiresAt: str = Field(description="When the URL stops working (ISO 8601, UTC).")
    url: str | None = None
    b64Json: str | None = Field(None, description="Base64 PNG (responseFormat b64_json).")
    error: ImageError | None = None


class Cost(BaseModel):
    """The net charge."""

    xTokens: int


class QueuePlace(BaseModel):
    """Where a queued generation waits (an addition to the spec's record)."""

    position: int | None = Field(
        description="1-based place in the fair order of the GPU queue it waits in; null "
        "while it is still being prepared."
    )
    estimatedStartAt: str | None = Field(
        description="When a GPU worker should take it, at the queue's recent rate (ISO 8601, "
        "UTC); null while unknown."
    )


class Progress(BaseModel):
    """Denoising steps done of the job's schedule (refinement included; a job of several
    images counts their mean)."""

    fraction: float = Field(ge=0, le=1)
    stepsDone: int
    stepsTotal: int


class GenerationRecord(BaseModel):
    """A generation, as polls return it and webhooks deliver it."""

    requestId: str
    model: str
    status: JobStatus
    prompt: str
    referencesCount: int
    endUserEmail: str
    createdAt: str
    input: dict[str, Any] = Field(description="What reproduces the generation.")
    pollUrl: str | None = Field(None, description="While queued.")
    queue: QueuePlace | None = Field(None, description="While queued.")
    progress: Progress | None = Field(
        None, description="While processing, once its worker has run a step (an addition)."
    )
    images: list[Image] | None = Field(None, description="Once succeeded.")
    cost: Cost | None = Field(None, description="Once succeeded.")
    error: JobError | None = Field(None, description="Once failed.")
    finishedAt: str | None = None


class GenerationList(BaseModel):
    """A page of generations, newest first."""

    data: list[GenerationRecord]
    nextCursor: str | None = Field(description="Pass back as `cursor`; null on the last page.")


class DeleteResult(BaseModel):
    """A deleted generation."""

    requestId: str
    deleted: bool
    refundedXTokens: int | None = None


class ErasureResult(BaseModel):
    """An end user's erased generations."""

    endUserEmail: str
    deleted: int = Field(description="Generations deleted.")
    refundedXTokens: int | None = None


class Usage(BaseModel):
    """An end user's counts and net spend."""

    endUserEmail: str
    requests: int
    succeeded: int
    failed: int
    images: int
    xTokens: int = Field(description="Debited minus refunded.")
    policyViolations: int


class Balance(BaseModel):
    """An amount of xTokens."""

    xTokens: int


class Account(BaseModel):
    """The caller's account."""

    account: str
    balance: Balance
    createdAt: str


class ModelInfo(BaseModel):
    """A public model alias."""

    alias: str
    description: str
    defaultSteps: int


class ModelList(BaseModel):
    """The available model aliases."""

    data: list[ModelInfo]


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "required": True, "schema": {"type": "string"}}


_RATE_HEADERS = {
    "X-RateLimit-Limit": _header("Calls allowed per minute for this key."),
    "X-RateLimit-Remaining": _header("Calls left in this minute."),
    "X-RateLimit-Reset": _header("Seconds until the window rolls over."),
}

_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("validation_error: the request fails a check; `param` names the field.", {}),
    401: (
        "authentication_error: no API key, a malformed or unknown one, or more than one "
        "Authorization header.",
        {"WWW-Authenticate": _header("Bearer.")},
    ),
    402: ("insufficient_balance: the balance is below the cost (10 xTokens per image).", {}),
    403: ("authentication_error: a forged or expired signed URL.", {}),
    404: ("not_found: no such record for this account.", {}),
    409: ("conflict: the record's state forbids the operation.", {}),
    413: ("payload_too_large: the body exceeds the size limit.", {}),
    415: ("unsupported_media_type: the body is not sent as application/json.", {}),
    429: (
        "rate_limit_exceeded: too many calls this minute for this key.",
        {"Retry-After": _header("Seconds to wait."), **_RATE_HEADERS},
    ),
    500: ("internal_error: a failure on our side.", {}),
    503: (
        "service_unavailable: the service's database cannot be reached for a moment; retry "
        "after Retry-After seconds (a POST with the same Idempotency-Key).",
        {"Retry-After": _header("Seconds to wait.")},
    ),
}


def errors(*statuses: int, notes: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` for error statuses in the error format; ``notes`` say what a
    status means for this endpoint."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, headers = _ERRORS[status]
        note = (notes or {}).get(status)
        documented[status] = {
            "model": ErrorBody,
            "description": f"{description} {note}" if note else description,
        }
        if headers:
            documented[status]["headers"] = headers
    return documented


def ok(
    status: int,
    model: type[BaseModel],
    *,
    rate_limited: bool = True,
    links: dict[str, Any] | None = None,
    **headers: str,
) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` for a success of ``model``; an authenticated endpoint's carry
    the ``X-RateLimit-*`` headers, and ``headers`` names others (``Location="..."``)."""
    documented = {name: _header(text) for name, text in headers.items()}
    if rate_limited:
        documented.update(_RATE_HEADERS)
    response = {"model": model, "description": model.__doc__ or "", "headers": documented}
    if links:
        response["links"] = links
    return {status: response}


EVENTS_MEDIA_TYPE = "text/event-stream"
# One event of the stream (schemathesis checks each event against it).
_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["status", "progress", "done", "error"]},
        "data": {
            "type": "string",
            "description": "JSON: the record (GenerationRecord), or for `error` an ErrorBody.",
        },
        "id": {"type": "string", "description": "Send back as `Last-Event-ID` to resume."},
    },
}


def events_ok() -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` for the event stream of a generation."""
    return {
        200: {
            "description": (
                "Server-Sent Events. `status` and `progress` events carry the record (as a poll "
                "returns it) when its status, `progress` or `queue` changes; `done` carries the "
                "final record, then the stream ends; `error` carries an error in the error "
                "format, then the stream ends. Event ids resume: reconnect with "
                "`Last-Event-ID` and an unchanged state is not sent again. A b64_json "
                "record's images come as signed URLs."
            ),
            "content": {EVENTS_MEDIA_TYPE: {"schema": _EVENT_SCHEMA}},
            "headers": dict(_RATE_HEADERS),
        }
    }


def _body_schemas(models: list[str]) -> dict[str, Any]:
    schema = GenerationBody.model_json_schema(ref_template=_COMPONENTS + "{model}")
    nested = schema.pop("$defs", {})
    # The aliases are known at start: listing them lets clients and fuzzers send valid ones.
    schema["properties"]["model"]["enum"] = models
    return {GenerationBody.__name__: schema, **nested}


def _errors_as_json(responses: dict[str, Any]) -> None:
    """Errors are JSON even where a success is not (the event stream's route documents its
    every response in its own media type)."""
    for status, response in responses.items():
        content = response.get("content")
        if not status.startswith("2") and content and "application/json" not in content:
            response["content"] = {"application/json": next(iter(content.values()))}


def install(app: FastAPI, models: Callable[[], list[str]]) -> None:
    """Serve the finished document at ``/openapi.json``, built once on first request."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for operations in document["paths"].values():
                for operation in operations.values():
                    operation["responses"].pop("422", None)
                    _errors_as_json(operation["responses"])
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            schemas.update(_body_schemas(models()))
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]
