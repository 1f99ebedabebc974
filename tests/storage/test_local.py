"""LocalStore on a real temporary directory."""

from __future__ import annotations

import hashlib
import hmac
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from storage import (
    InvalidKey,
    InvalidSignature,
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    UploadFailed,
    URLExpired,
)

SIGNING_KEY = b"k" * 32
BASE_URL = "https://api.example.test"
FILES_URL = f"{BASE_URL}/v1/files/"
KEY = "images/acct_1/req_1/0.png"
EXPIRES = 1_900_000_000


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "objects", files_url=FILES_URL, signing_key=SIGNING_KEY)


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_is_an_object_store(store: LocalStore) -> None:
    assert isinstance(store, ObjectStore)


def test_put_get_round_trip_with_content_type(store: LocalStore) -> None:
    store.put(KEY, b"\x89PNG data", content_type="image/png")
    assert store.get(KEY) == b"\x89PNG data"
    assert store.content_type_of(KEY) == "image/png"
    assert store.path_for(KEY) == store.root / KEY
    assert store.path_for(KEY).read_bytes() == b"\x89PNG data"


def test_overwrite_replaces_and_leaves_no_temporary_files(store: LocalStore) -> None:
    store.put(KEY, b"first", content_type="image/png")
    store.put(KEY, b"second", content_type="application/octet-stream")
    assert store.get(KEY) == b"second"
    assert store.content_type_of(KEY) == "application/octet-stream"
    assert files_under(store.root) == [KEY, KEY + "~type"]


def test_readers_never_see_a_partial_overwrite(store: LocalStore) -> None:
    size = 256 * 1024
    versions = [b"a" * size, b"b" * size]
    store.put(KEY, versions[0], content_type="image/png")
    stop = threading.Event()
    seen: set[bytes] = set()

    def read() -> None:
        while not stop.is_set():
            seen.add(store.get(KEY))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            store.put(KEY, versions[i % 2], content_type="image/png")
    finally:
        stop.set()
        reader.join()
    assert seen <= set(versions)
    assert files_under(store.root) == [KEY, KEY + "~type"]


def test_failed_put_raises_upload_failed_and_leaves_no_temporary_files(store: LocalStore) -> None:
    store.put("images/a/b/0.png", b"x", content_type="image/png")
    store.put("images/a/c", b"old", content_type="image/png")
    # "images/a/b" is a directory, so no object can be written there.
    with pytest.raises(UploadFailed) as caught:
        store.put("images/a/b", b"y", content_type="image/png")
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.key == "images/a/b"
    # ... and "images/a/b/0.png" is a file, so nothing can be written beneath it.
    with pytest.raises(UploadFailed):
        store.put("images/a/b/0.png/1.png", b"z", content_type="image/png")
    assert files_under(store.root) == [
        "images/a/b/0.png",
        "images/a/b/0.png~type",
        "images/a/c",
        "images/a/c~type",
    ]


def test_a_put_that_fails_at_its_last_rename_cleans_up(store: LocalStore) -> None:
    store.put(KEY, b"old", content_type="image/png")
    sidecar = store.root / (KEY + "~type")
    # A directory in the sidecar's place makes the second of put's two renames fail.
    sidecar.unlink()
    sidecar.mkdir()
    with pytest.raises(UploadFailed):
        store.put(KEY, b"new", content_type="image/webp")
    assert files_under(store.root) == [KEY]


def test_put_rejects_a_content_type_that_could_inject_headers(store: LocalStore) -> None:
    with pytest.raises(ValueError, match="content_type"):
        store.put(KEY, b"x", content_type="image/png\r\nSet-Cookie: a=b")
    with pytest.raises(ValueError, match="content_type"):
        store.put(KEY, b"x", content_type="")
    assert not store.root.exists() or files_under(store.root) == []


def test_get_missing_raises_object_not_found(store: LocalStore) -> None:
    with pytest.raises(ObjectNotFound) as caught:
        store.get(KEY)
    assert caught.value.key == KEY
    with pytest.raises(ObjectNotFound):
        store.content_type_of(KEY)
    # path_for only maps the key; the route that streams the file checks that it exists.
    assert store.path_for(KEY) == store.root / KEY
    assert not store.path_for(KEY).exists()


def test_content_type_falls_back_to_the_extension_without_a_sidecar(store: LocalStore) -> None:
    store.put(KEY, b"x", content_type="image/png")
    store.put("refs/req_1/blob", b"y", content_type="image/webp")
    (store.root / (KEY + "~type")).unlink()
    (store.root / "refs/req_1/blob~type").unlink()
    assert store.content_type_of(KEY) == "image/png"
    assert store.content_type_of("refs/req_1/blob") == "application/octet-stream"


def test_a_directory_is_not_an_object(store: LocalStore) -> None:
    store.put(KEY, b"x", content_type="image/png")
    with pytest.raises(ObjectNotFound):
        store.get("images/acct_1")
    with pytest.raises(ObjectNotFound):
        store.content_type_of("images/acct_1")
    store.delete("images/acct_1")
    assert store.get(KEY) == b"x"


def test_delete_is_idempotent_and_prunes_empty_directories(store: LocalStore) -> None:
    store.put(KEY, b"x", content_type="image/png")
    store.put("images/acct_1/req_2/0.png", b"y", content_type="image/png")
    store.delete(KEY)
    store.delete(KEY)
    store.delete("images/nobody/req_9/0.png")
    with pytest.raises(ObjectNotFound):
        store.get(KEY)
    assert not (store.root / "images/acct_1/req_1").exists()
    assert files_under(store.root) == [
        "images/acct_1/req_2/0.png",
        "images/acct_1/req_2/0.png~type",
    ]
    store.delete("images/acct_1/req_2/0.png")
    assert list(store.root.iterdir()) == []
    assert store.root.is_dir()


def test_delete_prefix_counts_objects_and_removes_directories(store: LocalStore) -> None:
    for request in ("req_1", "req_2"):
        for i in range(3):
            store.put(f"images/acct_1/{request}/{i}.png", b"x", content_type="image/png")
    store.put("images/acct_2/req_3/0.png", b"x", content_type="image/png")
    store.put("images/acct_10/req_4/0.png", b"x", content_type="image/png")

    assert store.delete_prefix("images/acct_1/req_1/") == 3
    assert not (store.root / "images/acct_1/req_1").exists()
    assert store.delete_prefix("images/acct_1/") == 3
    assert not (store.root / "images/acct_1").exists()
    assert store.delete_prefix("images/acct_1/") == 0
    assert store.delete_prefix("refs/") == 0
    # A prefix names whole segments: acct_1/ never reaches acct_10.
    assert files_under(store.root) == [
        "images/acct_10/req_4/0.png",
        "images/acct_10/req_4/0.png~type",
        "images/acct_2/req_3/0.png",
        "images/acct_2/req_3/0.png~type",
    ]
    assert store.delete_prefix("images/") == 2
    assert list(store.root.iterdir()) == []


def test_delete_prefix_does_not_match_an_object_of_the_same_name(store: LocalStore) -> None:
    store.put("refs/req_1", b"x", content_type="image/png")
    assert store.delete_prefix("refs/req_1/") == 0
    assert store.get("refs/req_1") == b"x"


@pytest.mark.parametrize(
    "key",
    ["../x", "a/../../b", "/etc/passwd", "a//b", "a\\..\\b", "a/b\x00", "", "x" * 513, "./a"],
)
def test_every_method_validates_keys(store: LocalStore, key: str) -> None:
    calls = [
        lambda: store.put(key, b"x", content_type="image/png"),
        lambda: store.get(key),
        lambda: store.delete(key),
        lambda: store.signed_url(key, expires_at=EXPIRES),
        lambda: store.verify(key, EXPIRES, "0" * 64),
        lambda: store.path_for(key),
        lambda: store.content_type_of(key),
    ]
    for call in calls:
        with pytest.raises(InvalidKey):
            call()
    assert not store.root.exists()


@pytest.mark.parametrize("prefix", ["../", "images/../../", "/images/", "images", ""])
def test_delete_prefix_validates_prefixes(store: LocalStore, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        store.delete_prefix(prefix)


def test_constructor_rejects_an_empty_signing_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="signing_key"):
        LocalStore(tmp_path, files_url=FILES_URL, signing_key=b"")


def test_signed_url_format(store: LocalStore) -> None:
    url = store.signed_url(KEY, expires_at=EXPIRES)
    expected = hmac.new(SIGNING_KEY, f"{KEY}\n{EXPIRES}".encode(), hashlib.sha256).hexdigest()
    assert url == f"{BASE_URL}/v1/files/{KEY}?expires={EXPIRES}&signature={expected}"


def test_files_url_ends_in_one_slash(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, files_url=FILES_URL.rstrip("/"), signing_key=SIGNING_KEY)
    assert store.signed_url(KEY, expires_at=EXPIRES).startswith(f"{BASE_URL}/v1/files/{KEY}?")


def test_signed_url_refuses_a_float_expiry(store: LocalStore) -> None:
    with pytest.raises(TypeError):
        store.signed_url(KEY, expires_at=1.5)  # type: ignore[arg-type]


def url_parts(url: str) -> tuple[str, str, str]:
    split = urlsplit(url)
    query = parse_qs(split.query)
    key = split.path.removeprefix("/v1/files/")
    return key, query["expires"][0], query["signature"][0]


def test_verify_accepts_a_good_url_until_it_expires(store: LocalStore) -> None:
    key, expires, signature = url_parts(store.signed_url(KEY, expires_at=EXPIRES))
    store.verify(key, expires, signature, now=EXPIRES - 1)
    store.verify(key, int(expires), signature, now=EXPIRES)
    with pytest.raises(URLExpired) as caught:
        store.verify(key, expires, signature, now=EXPIRES + 1)
    assert caught.value.key == KEY


def test_verify_uses_the_clock_by_default(store: LocalStore) -> None:
    key, expires, signature = url_parts(store.signed_url(KEY, expires_at=4_000_000_000))
    store.verify(key, expires, signature)
    key, expires, signature = url_parts(store.signed_url(KEY, expires_at=1_000_000_000))
    with pytest.raises(URLExpired):
        store.verify(key, expires, signature)


def test_verify_rejects_tampering(store: LocalStore) -> None:
    key, expires, signature = url_parts(store.signed_url(KEY, expires_at=EXPIRES))
    flipped = ("1" if signature[0] == "0" else "0") + signature[1:]
    tampered = [
        ("images/acct_2/req_1/0.png", expires, signature),
        (key, str(EXPIRES + 3600), signature),
        (key, "0" + expires, signature),
        (key, expires + " ", signature),
        (key, expires, flipped),
        (key, expires, signature.upper()),
        (key, expires, signature[:-1]),
        (key, expires, ""),
        (key, expires, "é" * 64),
        (key, expires, "\udc80" * 64),
    ]
    for parts in tampered:
        with pytest.raises(InvalidSignature):
            store.verify(*parts, now=EXPIRES - 10)


def test_another_signing_key_does_not_verify(store: LocalStore, tmp_path: Path) -> None:
    other = LocalStore(store.root, files_url=FILES_URL, signing_key=b"other")
    key, expires, signature = url_parts(other.signed_url(KEY, expires_at=EXPIRES))
    with pytest.raises(InvalidSignature):
        store.verify(key, expires, signature, now=EXPIRES - 10)


def test_signature_is_checked_before_expiry(store: LocalStore) -> None:
    key, expires, signature = url_parts(store.signed_url(KEY, expires_at=1_000))
    forged = "0" * 64
    # Expired and forged: the forger must learn only that the signature is wrong.
    with pytest.raises(InvalidSignature):
        store.verify(key, expires, forged, now=2_000)
    with pytest.raises(InvalidSignature):
        store.verify(key, "not-a-number", forged, now=2_000)
    with pytest.raises(URLExpired):
        store.verify(key, expires, signature, now=2_000)


def test_signed_file_is_the_checked_object(store: LocalStore) -> None:
    store.put(KEY, b"\x89PNG data", content_type="image/png")
    key, expires, signature = url_parts(store.signed_url(KEY, expires_at=4_000_000_000))
    assert store.signed_file(key, expires=expires, signature=signature) == (
        store.root / KEY,
        "image/png",
    )
    with pytest.raises(InvalidSignature):
        store.signed_file(key, expires=expires, signature="0" * 64)
    store.delete(KEY)
    with pytest.raises(ObjectNotFound):
        store.signed_file(key, expires=expires, signature=signature)
