"""The xSD 4.5 endpoints: generations, end users, account and models.

Handlers stay thin: authenticate and rate-limit (dependencies), validate, call one
:class:`scheduler.Service` method in the thread pool (it talks to Redis), shape the
response.
"""

from __future__ import annotations

from typing import Annotated, Any

from email_validator import EmailNotValidError
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, Security
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from scheduler import AuthenticationFailed, Principal, Service

from .body import JSON_MEDIA_TYPE, check_media_type, parse_object, read_body
from .events import StreamSlots, record_events, released
from .exceptions import ApiError, ErrorCode
from .openapi import (
    BODY_REF,
    EVENTS_MEDIA_TYPE,
    RECORD_LINKS,
    Account,
    DeleteResult,
    ErasureResult,
    GenerationList,
    GenerationRecord,
    ModelList,
    Usage,
    errors,
    events_ok,
    ok,
)
from .schemas import (
    GenerationBody,
    ValidationContext,
    describe_error,
    first_error,
    normalized_email,
)

__all__ = ["router", "service_of"]

router = APIRouter(prefix="/v1")

_IDEMPOTENCY_KEY_MAX = 255


def service_of(request: Request) -> Service:
    """The app's service."""
    return request.app.state.service


# Declared for the OpenAPI document (its security scheme); the header itself is read raw
# below, because this parser would take the first of two Authorization headers.
_BEARER = HTTPBearer(
    auto_error=False, bearerFormat="xm_live_...", description="An API key from `xsd keys create`."
)


def _authorization(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]
) -> str | None:
    values = request.headers.getlist("authorization")
    if len(values) > 1:
        # Proxies and frameworks disagree on which of two wins: accept neither.
        raise AuthenticationFailed("Send exactly one Authorization header.")
    return values[0] if values else None


Authorization = Annotated[str | None, Depends(_authorization)]


def _caller(request: Request, authorization: str | None, *, write: bool) -> Principal:
    service = service_of(request)
    principal = service.authenticate(authorization)
    request.state.rate = service.limit(principal, write=write)
    return principal


def writer(request: Request, authorization: Authorization) -> Principal:
    """Caller of a billable write (POST /v1/generations has its own rate limit)."""
    return _caller(request, authorization, write=True)


def reader(request: Request, authorization: Authorization) -> Principal:
    """Caller of any other endpoint."""
    return _caller(request, authorization, write=False)


Writer = Annotated[Principal, Depends(writer)]
Reader = Annotated[Principal, Depends(reader)]
# Documented as an email, checked by _email (a 400 in the error format, not FastAPI's 422).
_EMAIL_FORMAT: dict[str, Any] = {"format": "email"}
EndUserEmail = Annotated[str, Path(json_schema_extra=_EMAIL_FORMAT)]


def _validate(service: Service, raw: bytes) -> GenerationBody:
    data = parse_object(raw)
    context = ValidationContext(models=service.model_aliases(), policy=service.net_policy)
    try:
        return GenerationBody.model_validate(data, context=context)
    except ValidationError as exc:
        param, message = describe_error(first_error(exc.errors()), models=context.models)
        raise ApiError(ErrorCode.VALIDATION_ERROR, message, param=param) from exc


def _idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if (
        not 1 <= len(value) <= _IDEMPOTENCY_KEY_MAX
        or not value.isprintable()
        or not value.isascii()
    ):
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            f"Idempotency-Key must be 1-{_IDEMPOTENCY_KEY_MAX} printable ASCII characters.",
            param="Idempotency-Key",
        )
    return value


def _email(value: str) -> str:
    try:
        return normalized_email(value)
    except EmailNotValidError as exc:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR, f"{value!r} is not a valid email address.", param="email"
        ) from exc


@router.post(
    "/generations",
    status_code=202,
    summary="Start a generation",
    responses={
        **ok(202, GenerationRecord, links=RECORD_LINKS, Location="The record's poll URL."),
        **errors(
            400,
            401,
            402,
            409,
            413,
            415,
            429,
            500,
            503,
            notes={
                409: "An Idempotency-Key reused with another body, or whose record was deleted."
            },
        ),
    },
    openapi_extra={
        "requestBody": {"required": True, "content": {JSON_MEDIA_TYPE: {"schema": BODY_REF}}}
    },
)
async def create_generation(
    request: Request,
    principal: Writer,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    """Validate, debit and queue; answers 202 with the queued record."""
    service = service_of(request)
    key = _idempotency_key(idempotency_key)
    check_media_type(request.headers.get("content-type"))
    raw = await read_body(request, service.max_body_bytes)
    # Parsing and validation are CPU work (a prompt is tokenized) and may resolve the
    # webhook host: keep both off the event loop.
    body = await run_in_threadpool(_validate, service, raw)
    view, replayed = await run_in_threadpool(
        service.submit, principal, body.to_job_input(), idempotency_key=key
    )
    headers = {"Location": f"{service.base_url}/v1/generations/{view['requestId']}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(view, status_code=202, headers=headers)


@router.get(
    "/generations/{request_id}",
    summary="Poll a generation",
    responses={**ok(200, GenerationRecord), **errors(401, 404, 429, 500, 503)},
)
def get_generation(request: Request, request_id: str, principal: Reader) -> Response:
    """The current record (``expired`` once signed URLs are dead). A ``b64_json`` record is
    streamed, its images encoded one at a time."""
    answer = service_of(request).read(principal, request_id)
    if isinstance(answer, dict):
        return JSONResponse(answer)
    return StreamingResponse(answer, media_type="application/json")


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` that proxies neither cache nor buffer."""

    media_type = EVENTS_MEDIA_TYPE


@router.get(
    "/generations/{request_id}/events",
    summary="Follow a generation as Server-Sent Events",
    response_class=EventStreamResponse,
    responses={**events_ok(), **errors(401, 404, 429, 500, 503)},
)
async def generation_events(
    request: Request,
    request_id: str,
    principal: Reader,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventStreamResponse:
    """The record's changes until it ends (see :mod:`api_shim.events`). Opening a stream
    counts as a read; a key holds a bounded number of streams open at once."""
    service = service_of(request)
    # Before the stream starts: an unknown id is a 404, an outage a 503.
    first = await run_in_threadpool(service.watch, principal, request_id)
    streams: StreamSlots = request.app.state.streams
    release = streams.acquire(principal.key_id)
    events = record_events(
        first,
        lambda: run_in_threadpool(service.watch, principal, request_id),
        last_event_id=last_event_id,
    )
    return EventStreamResponse(
        released(events, release),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(release),
    )


@router.get(
    "/generations",
    summary="List generations, newest first",
    responses={**ok(200, GenerationList), **errors(400, 401, 429, 500, 503)},
)
def list_generations(
    request: Request,
    principal: Reader,
    end_user_email: Annotated[
        str | None, Query(alias="endUserEmail", json_schema_extra=_EMAIL_FORMAT)
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """One page; pass ``nextCursor`` back as ``cursor`` for the next."""
    email = _email(end_user_email) if end_user_email else None
    return service_of(request).list(principal, email=email, limit=limit, cursor=cursor)


@router.post(
    "/generations/{request_id}/cancel",
    summary="Cancel a generation",
    responses={
        **ok(200, GenerationRecord),
        **errors(401, 404, 409, 429, 500, 503, notes={409: "The generation has already finished."}),
    },
)
def cancel_generation(request: Request, request_id: str, principal: Reader) -> dict[str, Any]:
    """A queued generation is refunded in full; a processing one stops at the next denoising
    step and is charged; a finished one cannot be cancelled (409)."""
    return service_of(request).cancel(principal, request_id)


@router.delete(
    "/generations/{request_id}",
    summary="Delete a generation and its images",
    responses={**ok(200, DeleteResult), **errors(401, 404, 429, 500, 503)},
)
def delete_generation(request: Request, request_id: str, principal: Reader) -> dict[str, Any]:
    """Removes the record and its objects. A queued generation is refunded; a processing
    one stops at the next denoising step and is charged."""
    return service_of(request).delete(principal, request_id)


@router.delete(
    "/end-users/{email}/generations",
    summary="Erase an end user's generations",
    responses={
        **ok(200, ErasureResult),
        **errors(
            400,
            401,
            409,
            429,
            500,
            503,
            notes={409: "Images could not be deleted; retry to finish."},
        ),
    },
)
def erase_end_user(request: Request, email: EndUserEmail, principal: Reader) -> dict[str, Any]:
    """Deletes every generation (records and images) of one end user."""
    return service_of(request).erase_end_user(principal, _email(email))


@router.get(
    "/end-users/{email}/usage",
    summary="An end user's usage",
    responses={**ok(200, Usage), **errors(400, 401, 404, 429, 500, 503)},
)
def end_user_usage(request: Request, email: EndUserEmail, principal: Reader) -> dict[str, Any]:
    """Requests, outcomes, images, net xTokens and policy violations."""
    return service_of(request).usage(principal, _email(email))


@router.get(
    "/account",
    summary="Your account and balance",
    responses={**ok(200, Account), **errors(401, 429, 500, 503)},
)
def account(request: Request, principal: Reader) -> dict[str, Any]:
    """Balance in xTokens."""
    return service_of(request).account(principal)


@router.get(
    "/models",
    summary="Available model aliases",
    responses={**ok(200, ModelList, rate_limited=False), **errors(500)},
)
def models(request: Request) -> dict[str, Any]:
    """Public: no key needed."""
    return {"data": service_of(request).models()}
