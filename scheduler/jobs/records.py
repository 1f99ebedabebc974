"""Job inputs and job records: the small typed objects passed between processes.

A :class:`JobInput` is a request the HTTP shim has already validated, with every default
filled in except the random seed. A :class:`JobRecord` is what Redis holds for one
generation; it is stored as a flat hash so the Lua scripts can read and change single
fields atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .sizes import AspectRatio
from .states import ImageErrorCode, JobStatus

__all__ = ["PRICE_PER_IMAGE", "JobInput", "ImageResult", "JobRecord"]

# xTokens per delivered image (spec: "10 xTokens per image").
PRICE_PER_IMAGE = 10


@dataclass(frozen=True, kw_only=True)
class JobInput:
    """A validated request. ``image_count`` is ``n``, or the number of frames of a
    sequential request."""

    model: str
    prompt: str
    end_user_email: str
    references: tuple[str, ...] = ()
    size: str = "2K"
    aspect_ratio: AspectRatio = AspectRatio.AUTO
    n: int = 1
    image_count: int = 1
    seed: int | None = None
    guidance_scale: float = 7.5
    watermark: bool = False
    response_format: Literal["url", "b64_json"] = "url"
    sequential: bool = False
    max_images: int | None = None
    webhook_url: str | None = None

    @property
    def cost(self) -> int:
        """xTokens debited at POST."""
        return PRICE_PER_IMAGE * self.image_count

    def fingerprint(self) -> str:
        """Canonical JSON of the request, for Idempotency-Key comparisons."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), default=str)

    def public(self, *, seed: int, width: int | None, height: int | None) -> dict[str, Any]:
        """The ``input`` object of the public record: what reproduces the generation."""
        body: dict[str, Any] = {
            "size": self.size,
            "aspectRatio": self.aspect_ratio.value,
            "n": self.n,
            "seed": seed,
            "guidanceScale": self.guidance_scale,
            "watermark": self.watermark,
            "responseFormat": self.response_format,
            "sequential": "auto" if self.sequential else "disabled",
            "references": list(self.references),
        }
        if self.sequential:
            body["sequentialOptions"] = {"maxImages": self.image_count}
        if width is not None and height is not None:
            body["width"], body["height"] = width, height
        if self.webhook_url:
            body["webhookUrl"] = self.webhook_url
        return body


@dataclass(frozen=True, kw_only=True)
class ImageResult:
    """One produced image: stored under ``key`` (``size`` bytes of PNG), or lost with
    ``error``."""

    index: int
    key: str | None = None
    size: int | None = None
    error: ImageErrorCode | None = None

    def to_json(self) -> dict[str, Any]:
        """Compact form kept in the record."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> ImageResult:
        """Rebuild an image from its compact form."""
        error = item.get("error")
        return cls(**{**item, "error": None if error is None else ImageErrorCode(error)})


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    """One generation as stored in Redis (times are epoch milliseconds)."""

    id: str
    account: str
    status: JobStatus
    model: str
    prompt: str
    email: str
    created_ms: int
    input: dict[str, Any]
    references: tuple[str, ...]
    image_count: int
    seed: int
    width: int | None
    height: int | None
    charged: int
    refunded: int = 0
    cost: int = 0
    attempt: int = 0
    lease_until_ms: int = 0
    # Set once the prepare stage has checked the prompt and stored the references.
    prepared_ms: int | None = None
    # How many times the outbox sent the job again because no worker had claimed it.
    dispatches: int = 0
    finished_ms: int | None = None
    images: tuple[ImageResult, ...] = ()
    reference_keys: tuple[str, ...] = ()
    error: dict[str, str] | None = None
    webhook_url: str | None = None
    webhook_attempts: int = 0
    webhook_state: str = ""

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> JobRecord:
        """Rebuild a record from its Redis hash."""

        def opt_int(name: str) -> int | None:
            value = data.get(name, "")
            return int(value) if value else None

        images = tuple(
            ImageResult.from_json(item) for item in json.loads(data.get("images") or "[]")
        )
        return cls(
            id=data["id"],
            account=data["account"],
            status=JobStatus(data["status"]),
            model=data["model"],
            prompt=data["prompt"],
            email=data["email"],
            created_ms=int(data["created_ms"]),
            input=json.loads(data["input"]),
            references=tuple(json.loads(data.get("references") or "[]")),
            image_count=int(data["image_count"]),
            seed=int(data["seed"]),
            width=opt_int("width"),
            height=opt_int("height"),
            charged=int(data["charged"]),
            refunded=int(data.get("refunded") or 0),
            cost=int(data.get("cost") or 0),
            attempt=int(data.get("attempt") or 0),
            lease_until_ms=int(data.get("lease_until_ms") or 0),
            prepared_ms=opt_int("prepared_ms"),
            dispatches=int(data.get("dispatches") or 0),
            finished_ms=opt_int("finished_ms"),
            images=images,
            reference_keys=tuple(json.loads(data.get("reference_keys") or "[]")),
            error=json.loads(data["error"]) if data.get("error") else None,
            webhook_url=data.get("webhook_url") or None,
            webhook_attempts=int(data.get("webhook_attempts") or 0),
            webhook_state=data.get("webhook_state", ""),
        )

    def initial_hash(self) -> dict[str, str]:
        """Fields written when the job is accepted."""
        return {
            "id": self.id,
            "account": self.account,
            "status": self.status.value,
            "model": self.model,
            "prompt": self.prompt,
            "email": self.email,
            "created_ms": str(self.created_ms),
            "input": json.dumps(self.input, separators=(",", ":")),
            "references": json.dumps(list(self.references)),
            "image_count": str(self.image_count),
            "seed": str(self.seed),
            "width": "" if self.width is None else str(self.width),
            "height": "" if self.height is None else str(self.height),
            "charged": str(self.charged),
            "refunded": "0",
            "attempt": "0",
            "webhook_url": self.webhook_url or "",
        }

    @property
    def response_format(self) -> str:
        """``url`` or ``b64_json``."""
        return str(self.input.get("responseFormat", "url"))

    @property
    def guidance_scale(self) -> float:
        """Classifier-free guidance scale."""
        return float(self.input["guidanceScale"])

    @property
    def watermark(self) -> bool:
        """Whether the corner mark is drawn."""
        return bool(self.input["watermark"])

    @property
    def sequential(self) -> bool:
        """Whether the images are frames of one connected series."""
        return self.input.get("sequential") == "auto"
