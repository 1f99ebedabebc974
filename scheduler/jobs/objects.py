"""Where a job's objects live in the store, and which store the settings choose."""

from __future__ import annotations

from storage import (
    InvalidKey,
    InvalidSignature,
    LocalFile,
    LocalStore,
    NotServedLocally,
    ObjectNotFound,
    ObjectStore,
    S3Store,
    URLExpired,
)

from ..errors import Forbidden, NotFound
from ..settings import Settings

__all__ = [
    "FILES_PATH",
    "make_store",
    "image_key",
    "reference_key",
    "job_prefixes",
    "open_signed_file",
]

# The API route that serves the local store's signed URLs (the shim mounts it here).
FILES_PATH = "/v1/files/"


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
        settings.objects_dir,
        files_url=settings.base_url() + FILES_PATH,
        signing_key=settings.signing_key,
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


def open_signed_file(store: ObjectStore, key: str, *, expires: str, signature: str) -> LocalFile:
    """The file (and its content type) behind a signed URL of the API's files route, after
    the store has checked its signature and expiry."""
    try:
        return store.signed_file(key, expires=expires, signature=signature)
    except NotServedLocally as exc:
        raise NotFound("Files are served by the object store, not by this API.") from exc
    except URLExpired as exc:
        raise Forbidden("This signed URL has expired.") from exc
    except (InvalidSignature, InvalidKey) as exc:
        raise Forbidden("This URL's signature is not valid.") from exc
    except ObjectNotFound as exc:
        raise NotFound("The file no longer exists.") from exc
