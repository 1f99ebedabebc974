"""Request validation: the spec's parameter table as a pydantic model.

Every bound is checked here, before anything is debited. Fields not in the table are
ignored (spec: "Anything not listed is ignored"). Types are strict: ``"n": "2"`` or
``"watermark": "yes"`` are errors, not coercions. Checks that need the server's state (the
model list, the URL policy) read it from the validation context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from scheduler import (
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_PROMPT_TOKENS,
    MAX_REFERENCES,
    MAX_SEED,
    AspectRatio,
    JobInput,
    NetPolicy,
    SizeError,
    UnsafeURL,
    check_url,
    frame_count,
    parse_size,
    prompt_tokens,
)

__all__ = [
    "ValidationContext",
    "SequentialOptions",
    "GenerationBody",
    "FieldError",
    "normalized_email",
    "describe_error",
    "first_error",
]

# Reserved for documentation and testing (RFC 2606 / RFC 6761): never a real end user.
_RESERVED_DOMAINS = ("example.com", "example.net", "example.org")
_RESERVED_TLDS = ("test", "invalid", "localhost", "example")


def normalized_email(value: str) -> str:
    """An end user's address as records are kept under it: normalised and lowercase.
    Raises ``EmailNotValidError`` (a ``ValueError``) saying why it is not an address."""
    return validate_email(value, check_deliverability=False).normalized.lower()


@dataclass(frozen=True)
class ValidationContext:
    """Server state the checks need."""

    models: list[str]
    policy: NetPolicy


class FieldError(ValueError):
    """A check across fields, reported against the one field the client should change
    (pydantic places errors of a model validator on the whole body)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _use_one_of(models: list[str]) -> str:
    return f"use one of {', '.join(models)}"


def _context(info: ValidationInfo) -> ValidationContext:
    context = info.context
    assert isinstance(context, ValidationContext), "validate with context=ValidationContext"
    return context


class SequentialOptions(BaseModel):
    """``sequentialOptions``."""

    model_config = ConfigDict(strict=True, extra="ignore")

    maxImages: int | None = Field(None, ge=1, le=MAX_IMAGES)


class GenerationBody(BaseModel):
    """The body of ``POST /v1/generations``."""

    model_config = ConfigDict(strict=True, extra="ignore")

    endUserEmail: str = Field(
        description="Email of your real end user; stored lowercase.",
        json_schema_extra={"format": "email"},
    )
    # max_length is checked before _prompt runs, so an over-long prompt is never tokenized.
    prompt: str = Field(
        max_length=MAX_PROMPT_CHARS,
        description=f"English prompt, at most {MAX_PROMPT_TOKENS} CLIP tokens "
        f"(and {MAX_PROMPT_CHARS} characters).",
        # Documented only: _prompt refuses an empty prompt with a message of its own.
        json_schema_extra={"minLength": 1},
    )
    model: str = Field(description="Public model alias, e.g. xSD4.5 (see GET /v1/models).")
    references: str | list[str] | None = Field(
        None,
        description=f"1-{MAX_REFERENCES} HTTPS image URLs: one string or an array.",
        # Documented only (_references checks them); item counts apply to the array form.
        json_schema_extra={"minItems": 1, "maxItems": MAX_REFERENCES},
    )
    size: str = Field("2K", description="2K, 4K or explicit WxH.")
    aspectRatio: Literal["auto", "square", "landscape", "portrait"] = "auto"
    n: int | None = Field(None, ge=1, le=MAX_IMAGES, description="Images, 1-15 (default 1).")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    watermark: bool = False
    guidanceScale: float = Field(7.5, ge=1, le=20)
    responseFormat: Literal["url", "b64_json"] = "url"
    sequential: Literal["auto", "disabled"] = "disabled"
    sequentialOptions: SequentialOptions | None = None
    webhookUrl: str | None = None

    @field_validator("endUserEmail")
    @classmethod
    def _email(cls, value: str) -> str:
        try:
            email = normalized_email(value)
        except EmailNotValidError as exc:
            raise ValueError(f"endUserEmail {value!r} is not a valid email address: {exc}") from exc
        domain = email.rsplit("@", 1)[1]
        if domain.endswith(_RESERVED_DOMAINS) or domain.rsplit(".", 1)[-1] in _RESERVED_TLDS:
            raise ValueError(
                f"endUserEmail must be your end user's real address; {domain} is reserved for "
                "examples and tests."
            )
        return email

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        prompt = value.strip()
        if not prompt:
            raise ValueError("prompt must not be empty.")
        if "\x00" in prompt:
            raise ValueError("prompt must not contain NUL characters.")
        tokens = prompt_tokens(prompt)
        if tokens > MAX_PROMPT_TOKENS:
            raise ValueError(f"prompt has {tokens} tokens; the limit is {MAX_PROMPT_TOKENS}.")
        return prompt

    @field_validator("model")
    @classmethod
    def _model(cls, value: str, info: ValidationInfo) -> str:
        models = _context(info).models
        if value not in models:
            raise ValueError(f"model {value!r} is not available; {_use_one_of(models)}.")
        return value

    @field_validator("references")
    @classmethod
    def _references(cls, value: str | list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        urls = [value] if isinstance(value, str) else value
        if not 1 <= len(urls) <= MAX_REFERENCES:
            raise ValueError(f"references must hold 1 to {MAX_REFERENCES} URLs; got {len(urls)}.")
        policy = _context(info).policy
        for index, url in enumerate(urls):
            try:
                # Literal addresses only: the shim does no DNS for references; the prepare
                # stage resolves and pins each one when it fetches.
                check_url(url, policy, resolve=False)
            except UnsafeURL as exc:
                raise ValueError(f"references[{index}]: {exc}") from exc
        return urls

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        try:
            size = parse_size(value)
        except SizeError as exc:
            raise ValueError(str(exc)) from exc
        return size.preset or f"{size.width}x{size.height}"

    @field_validator("webhookUrl")
    @classmethod
    def _webhook(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        try:
            check_url(value, _context(info).policy, resolve=True)
        except UnsafeURL as exc:
            raise ValueError(f"webhookUrl: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _combinations(self) -> GenerationBody:
        if self.sequential == "auto" and self.n is not None and self.n > 1:
            raise FieldError("n", 'n > 1 cannot be combined with sequential "auto"; use maxImages.')
        references = len(self.references or [])
        images = self.image_count
        if references + images > MAX_IMAGES:
            raise FieldError(
                "references",
                f"references ({references}) plus images ({images}) must not exceed {MAX_IMAGES}.",
            )
        return self

    @property
    def image_count(self) -> int:
        """Images this request produces (n, or the frames of a sequential request)."""
        if self.sequential == "auto":
            max_images = self.sequentialOptions.maxImages if self.sequentialOptions else None
            return frame_count(self.prompt, max_images)
        return self.n or 1

    def to_job_input(self) -> JobInput:
        """The scheduler's view of this request."""
        references = self.references if isinstance(self.references, list) else []
        return JobInput(
            model=self.model,
            prompt=self.prompt,
            end_user_email=self.endUserEmail,
            references=tuple(references),
            size=self.size,
            aspect_ratio=AspectRatio(self.aspectRatio),
            n=self.n or 1,
            image_count=self.image_count,
            seed=self.seed,
            guidance_scale=float(self.guidanceScale),
            watermark=self.watermark,
            response_format=self.responseFormat,
            sequential=self.sequential == "auto",
            webhook_url=self.webhookUrl,
        )


def _param_of(loc: tuple[Any, ...]) -> str | None:
    """Spec-style field name of an error location (``references[2]``)."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int) and parts:
            parts[-1] = f"{parts[-1]}[{part}]"
        elif part in ("str", "list[str]", "int", "float", "function-after[_combinations()]"):
            continue  # pydantic's union-member and validator markers
        else:
            parts.append(str(part))
    return ".".join(parts) or None


_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean (true or false)",
    "model_type": "an object",
    "list_type": "an array",
}


def first_error(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The error to report: the first, except that for a value given as an array, the
    array branch of a ``string | array`` field says more than the string branch."""
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    if loc and loc[-1] == "str" and isinstance(first.get("input"), list):
        for error in errors[1:]:
            if "list[str]" in error.get("loc", ()):
                return error
    return first


def describe_error(error: dict[str, Any], *, models: list[str]) -> tuple[str | None, str]:
    """``(param, message)`` for a pydantic error of a request: full sentences that name
    the field and say what is accepted (for ``model``, the available aliases)."""
    param = _param_of(tuple(error.get("loc", ())))
    name = param or "The request body"
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    if kind == "missing":
        hint = f"; {_use_one_of(models)}" if param == "model" else ""
        return param, f"{name} is required{hint}."
    if kind == "value_error":
        cause = ctx.get("error")
        if isinstance(cause, FieldError):
            return cause.param, str(cause)
        return param, str(cause or error.get("msg", "is invalid"))
    if kind == "string_too_long":
        return param, f"{name} must be at most {ctx.get('max_length')} characters."
    if param == "references" and kind in ("string_type", "list_type"):
        return param, "references must be a URL string or an array of URL strings."
    if kind in _TYPE_WORDS:
        return param, f"{name} must be {_TYPE_WORDS[kind]}."
    if kind in ("greater_than_equal", "greater_than"):
        return param, f"{name} must be at least {ctx.get('ge', ctx.get('gt'))}."
    if kind in ("less_than_equal", "less_than"):
        return param, f"{name} must be at most {ctx.get('le', ctx.get('lt'))}."
    if kind == "literal_error":
        return param, f"{name} must be one of {ctx.get('expected')}."
    return param, f"{name}: {error.get('msg', 'is invalid')}."
