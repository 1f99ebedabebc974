"""The xSD 4.5 endpoints: generations, end users, account and models.

Handlers stay thin: authenticate and rate-limit (dependencies), validate, call one
:class:`scheduler.service.Service` method in the thread pool (it talks to Redis), shape the
response.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from email_validator import EmailNotValidError, validate_email
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from scheduler.accounts import Principal
from scheduler.service import Service

from .errors import ApiError
from .schemas import GenerationBody, ValidationContext, describe_error, first_error

__all__ = ["router", "service_of"]

router = APIRouter(prefix="/v1")

_IDEMPOTENCY_KEY_MAX = 255


def service_of(request: Request) -> Service:
    """The app's service."""
    return request.app.state.service


def _caller(request: Request, authorization: str | None, *, write: bool) -> Principal:
    service = service_of(request)
    principal = service.authenticate(authorization)
    request.state.rate = service.limit(principal, write=write)
    return principal


def writer(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """Caller of a billable write (POST /v1/generations has its own rate limit)."""
    return _caller(request, authorization, write=True)


def reader(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """Caller of any other endpoint."""
    return _caller(request, authorization, write=False)


Writer = Annotated[Principal, Depends(writer)]
Reader = Annotated[Principal, Depends(reader)]


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"The request body exceeds {limit} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"The request body exceeds {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _validate(service: Service, raw: bytes) -> GenerationBody:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(
            400, "validation_error", f"The request body is not valid JSON: {exc}."
        ) from exc
    if not isinstance(data, dict):
        raise ApiError(400, "validation_error", "The request body must be a JSON object.")
    runtime = service.runtime
    context = ValidationContext(models=service.model_aliases(), policy=runtime.net_policy)
    try:
        return GenerationBody.model_validate(data, context=context)
    except ValidationError as exc:
        param, message = describe_error(first_error(exc.errors()))
        raise ApiError(400, "validation_error", message, param=param) from exc


def _idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if (
        not 1 <= len(value) <= _IDEMPOTENCY_KEY_MAX
        or not value.isprintable()
        or not value.isascii()
    ):
        raise ApiError(
            400,
            "validation_error",
            f"Idempotency-Key must be 1-{_IDEMPOTENCY_KEY_MAX} printable ASCII characters.",
            param="Idempotency-Key",
        )
    return value


def _email(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise ApiError(
            400, "validation_error", f"{value!r} is not a valid email address.", param="email"
        ) from exc


@router.post(
    "/generations",
    status_code=202,
    summary="Start a generation",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": GenerationBody.model_json_schema()}},
        }
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
    raw = await _read_body(request, service.runtime.settings.max_body_bytes)
    # Validation may resolve the webhook host: keep DNS off the event loop.
    body = await run_in_threadpool(_validate, service, raw)
    view, replayed = await run_in_threadpool(
        service.submit, principal, body.to_job_input(), idempotency_key=key
    )
    headers = {
        "Location": f"{service.runtime.settings.base_url()}/v1/generations/{view['requestId']}"
    }
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(view, status_code=202, headers=headers)


@router.get("/generations/{request_id}", summary="Poll a generation")
def get_generation(request: Request, request_id: str, principal: Reader) -> dict[str, Any]:
    """The current record (``expired`` once signed URLs are dead)."""
    return service_of(request).get(principal, request_id)


@router.get("/generations", summary="List generations, newest first")
def list_generations(
    request: Request,
    principal: Reader,
    end_user_email: Annotated[str | None, Query(alias="endUserEmail")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """One page; pass ``nextCursor`` back as ``cursor`` for the next."""
    email = _email(end_user_email) if end_user_email else None
    return service_of(request).list(principal, email=email, limit=limit, cursor=cursor)


@router.post("/generations/{request_id}/cancel", summary="Cancel a queued generation")
def cancel_generation(request: Request, request_id: str, principal: Reader) -> dict[str, Any]:
    """Queued jobs only; refunded in full."""
    return service_of(request).cancel(principal, request_id)


@router.delete("/generations/{request_id}", summary="Delete a generation and its images")
def delete_generation(request: Request, request_id: str, principal: Reader) -> dict[str, Any]:
    """Removes the record and its objects; a job still running is refunded."""
    return service_of(request).delete(principal, request_id)


@router.delete("/end-users/{email}/generations", summary="Erase an end user's generations")
def erase_end_user(request: Request, email: str, principal: Reader) -> dict[str, Any]:
    """Deletes every generation (records and images) of one end user."""
    return service_of(request).erase_end_user(principal, _email(email))


@router.get("/end-users/{email}/usage", summary="An end user's usage")
def end_user_usage(request: Request, email: str, principal: Reader) -> dict[str, Any]:
    """Requests, outcomes, images, net xTokens and policy violations."""
    return service_of(request).usage(principal, _email(email))


@router.get("/account", summary="Your account and balance")
def account(request: Request, principal: Reader) -> dict[str, Any]:
    """Balance in xTokens."""
    return service_of(request).account(principal)


@router.get("/models", summary="Available model aliases")
def models(request: Request) -> dict[str, Any]:
    """Public: no key needed."""
    return {"data": service_of(request).models()}
