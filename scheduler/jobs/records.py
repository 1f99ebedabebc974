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

__all__ = ["PRICE_PER_IMAGE", "JobInput", "ImageResult", "JobRecord", "progress_field"]

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
    webhook_url: str | None = None

    @property
    def cost(self) -> int:
        """xTokens debited at POST."""
        return PRICE_PER_IMAGE * self.image_count

    def fingerprint(self) -> str:
        """Canonical JSON of the request, for Idempotency-Key comparisons."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), default=str)


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
    """One generation as stored in Redis (times are epoch milliseconds).

    The request's settings are kept as they were accepted (see :class:`JobInput`), with
    ``seed`` drawn when the request left it open and ``width``/``height`` once resolved.
    """

    id: str
    account: str
    status: JobStatus
    model: str
    prompt: str
    email: str
    created_ms: int
    references: tuple[str, ...]
    size: str
    aspect_ratio: AspectRatio
    n: int
    image_count: int
    seed: int
    guidance_scale: float
    watermark: bool
    response_format: str
    sequential: bool
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
    # (steps done, steps total) of the current attempt, as its worker last wrote them.
    progress: tuple[int, int] | None = None

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
            references=tuple(json.loads(data.get("references") or "[]")),
            size=data["size"],
            aspect_ratio=AspectRatio(data["aspect_ratio"]),
            n=int(data["n"]),
            image_count=int(data["image_count"]),
            seed=int(data["seed"]),
            guidance_scale=float(data["guidance_scale"]),
            watermark=data["watermark"] == "1",
            response_format=data["response_format"],
            sequential=data["sequential"] == "1",
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
            progress=_progress(data),
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
            "references": json.dumps(list(self.references)),
            "size": self.size,
            "aspect_ratio": self.aspect_ratio.value,
            "n": str(self.n),
            "image_count": str(self.image_count),
            "seed": str(self.seed),
            # repr of a float reads back as the same float.
            "guidance_scale": repr(self.guidance_scale),
            "watermark": "1" if self.watermark else "0",
            "response_format": self.response_format,
            "sequential": "1" if self.sequential else "0",
            "width": "" if self.width is None else str(self.width),
            "height": "" if self.height is None else str(self.height),
            "charged": str(self.charged),
            "refunded": "0",
            "attempt": "0",
            "webhook_url": self.webhook_url or "",
        }


def progress_field(attempt: int, done: int, total: int) -> str:
    """The stored form of an attempt's progress (see :func:`_progress`)."""
    return f"{attempt}:{done}:{total}"


def _progress(data: dict[str, str]) -> tuple[int, int] | None:
    """The progress written under the record's current attempt; an earlier attempt's (a
    worker that died mid-job, its job taken over) is not this attempt's."""
    attempt, _, counts = (data.get("progress") or "").partition(":")
    if not counts or attempt != (data.get("attempt") or "0"):
        return None
    done, _, total = counts.partition(":")
    return int(done), int(total)
