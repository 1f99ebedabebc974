"""Where a job's objects live in the store, and which store the settings choose."""

from __future__ import annotations

from pathlib import Path

from storage import InvalidKey, InvalidSignature, LocalStore, ObjectStore, S3Store, URLExpired

from ..errors import Forbidden, NotFound
from ..settings import Settings

__all__ = ["make_store", "image_key", "reference_key", "job_prefixes", "open_signed_file"]


def make_store(settings: Settings) -> ObjectStore:
    """The object store ``XSD_STORAGE`` names."""
    if settings.storage == "s3":
        if not settings.s3_bucket:
            raise ValueError("XSD_STORAGE=s3 needs XSD_S3_BUCKET.")
        key_id, secret = settings.s3_signing_access_key_id, settings.s3_signing_secret_access_key
        if (key_id is None) != (secret is None):
            raise ValueError(
                "Set both XSD_S3_SIGNING_ACCESS_KEY_ID and XSD_S3_SIGNING_SECRET_ACCESS_KEY, "
                "or neither."
            )
        return S3Store(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            prefix=settings.s3_prefix,
            signing_credentials=(key_id.get_secret_value(), secret.get_secret_value())
            if key_id and secret
            else None,
        )
    return LocalStore(
        settings.objects_dir, base_url=settings.base_url(), signing_key=settings.signing_key
    )


def image_key(account: str, job_id: str, index: int) -> str:
    """Key of a generated image."""
    return f"images/{account}/{job_id}/{index}.png"


def reference_key(account: str, job_id: str, index: int) -> str:
    """Key of a fetched, normalised reference image."""
    return f"refs/{account}/{job_id}/{index}.png"


def job_prefixes(account: str, job_id: str) -> tuple[str, str]:
    """Every prefix under which a job keeps objects."""
    return f"images/{account}/{job_id}/", f"refs/{account}/{job_id}/"


def open_signed_file(
    store: ObjectStore, key: str, *, expires: str, signature: str
) -> tuple[Path, str]:
    """The file (and its content type) behind a local-store signed URL, after checking its
    signature and expiry."""
    if not isinstance(store, LocalStore):
        raise NotFound("Files are served by the object store, not by this API.")
    try:
        store.verify(key, expires, signature)
        path = store.path_for(key)
    except URLExpired as exc:
        raise Forbidden("This signed URL has expired.") from exc
    except (InvalidSignature, InvalidKey) as exc:
        raise Forbidden("This URL's signature is not valid.") from exc
    if not path.is_file():
        raise NotFound("The file no longer exists.")
    return path, store.content_type_of(key)
