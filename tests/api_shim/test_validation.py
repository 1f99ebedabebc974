"""Every field of the spec's parameter table, at and beyond its edges, through real HTTP.

Each rejected request must answer 400 in the error format, name the field, and debit
nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from api_shim import schemas
from api_shim.body import MAX_JSON_DEPTH
from scheduler.jobs.inputs import MAX_PROMPT_CHARS, prompt_tokens

from .conftest import MAX_BODY_BYTES, VALID, Api


def _rejected(api: Api, body: Any, param: str | None, match: str = "") -> dict[str, Any]:
    key = api.new_key()
    response = api.post(key, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["param"] == param
    assert match.lower() in error["message"].lower(), error["message"]
    assert error["message"].endswith("."), "messages are full sentences"
    assert api.balance(key) == 1000, "nothing is debited for a rejected request"
    return error


def _accepted(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(api.new_key(), body)
    assert response.status_code == 202, response.text
    return response.json()


def with_(**changes: Any) -> dict[str, Any]:
    body = dict(VALID, **changes)
    return {k: v for k, v in body.items() if v is not ...}


@pytest.mark.parametrize("field", ["endUserEmail", "prompt", "model"])
def test_required_fields(api: Api, field: str) -> None:
    _rejected(api, with_(**{field: ...}), field, "is required")


def test_missing_model_lists_aliases(api: Api) -> None:
    error = _rejected(api, with_(model=...), "model", "is required")
    assert "xSD4.5" in error["message"]


@pytest.mark.parametrize(
    ("email", "match"),
    [
        ("not-an-email", "not a valid email"),
        ("alice@", "not a valid email"),
        ("@your-product.com", "not a valid email"),
        ("alice@example.com", "reserved"),
        ("alice@mail.example.org", "reserved"),
        ("alice@example.net", "reserved"),
        ("bob@shop.test", ""),
        ("bob@host.invalid", ""),
        ("bob@localhost", ""),
        ("bob@site.example", "reserved"),
        (42, "must be a string"),
    ],
)
def test_end_user_email_rejections(api: Api, email: Any, match: str) -> None:
    _rejected(api, with_(endUserEmail=email), "endUserEmail", match)


def test_end_user_email_is_lowercased(api: Api) -> None:
    record = _accepted(api, with_(endUserEmail="Alice.Smith@Your-Product.COM"))
    assert record["endUserEmail"] == "alice.smith@your-product.com"


@pytest.mark.parametrize(
    ("prompt", "match"),
    [
        ("", "must not be empty"),
        ("   \n ", "must not be empty"),
        (["a"], "must be a string"),
        ("a\x00b", "NUL"),
    ],
)
def test_prompt_rejections(api: Api, prompt: Any, match: str) -> None:
    _rejected(api, with_(prompt=prompt), "prompt", match)


def test_prompt_token_limit(api: Api) -> None:
    # "cat" is one CLIP token: 2000 of them are allowed, 2001 are not.
    _accepted(api, with_(prompt="cat " * 2000))
    _rejected(api, with_(prompt="cat " * 2001), "prompt", "2001 tokens")


def test_over_long_prompt_is_never_tokenized(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    counted: list[int] = []

    def spy(prompt: str) -> int:
        counted.append(len(prompt))
        return prompt_tokens(prompt)

    # The server runs in this process (a uvicorn thread): the spy sees its calls.
    monkeypatch.setattr(schemas, "prompt_tokens", spy)
    _rejected(api, with_(prompt="x" * (MAX_PROMPT_CHARS + 1)), "prompt", f"{MAX_PROMPT_CHARS}")
    assert counted == [], "an over-long prompt is refused before it is tokenized"
    # At the bound, the prompt is counted (and this one is far over 2000 tokens).
    _rejected(api, with_(prompt="cat " * (MAX_PROMPT_CHARS // 4)), "prompt", "tokens")
    assert counted == [MAX_PROMPT_CHARS - 1]


def test_unknown_model_lists_aliases(api: Api) -> None:
    error = _rejected(api, with_(model="xSD9"), "model", "not available")
    assert "xSD4.5" in error["message"]


@pytest.mark.parametrize(
    ("references", "param", "match"),
    [
        ([], "references", "1 to 10"),
        (["https://cdn.your-product.com/a.png"] * 11, "references", "1 to 10"),
        (42, "references", "URL string or an array"),
        ([42], "references[0]", "string"),
        ("http://cdn.your-product.com/a.png", "references", "https"),
        (["https://cdn.your-product.com/a.png", "ftp://x.com/a"], "references", "references[1]"),
        ("https://10.0.0.7/a.png", "references", "references[0]"),
        ("https://127.0.0.1/a.png", "references", ""),
        ("https://2130706433/a.png", "references", ""),
        ("https://[::1]/a.png", "references", ""),
        ("https://[::ffff:169.254.169.254]/latest", "references", ""),
        ("https://localhost/a.png", "references", ""),
        ("https://user:pw@cdn.your-product.com/a.png", "references", ""),
    ],
)
def test_reference_rejections(api: Api, references: Any, param: str, match: str) -> None:
    _rejected(api, with_(references=references), param, match)


def test_references_single_string_and_count(api: Api) -> None:
    record = _accepted(api, with_(references="https://cdn.your-product.com/face.jpg"))
    assert record["referencesCount"] == 1
    assert record["input"]["references"] == ["https://cdn.your-product.com/face.jpg"]
    assert "width" not in record["input"], "auto size waits for the first reference"


@pytest.mark.parametrize(
    ("size", "match"),
    [
        ("1K", "no longer accepted"),
        ("1024x1024", "between"),
        ("4097x4096", "between"),
        ("16400x1000", "aspect ratio"),
        ("big", "must be"),
        (2048, "must be a string"),
    ],
)
def test_size_rejections(api: Api, size: Any, match: str) -> None:
    _rejected(api, with_(size=size), "size", match)


@pytest.mark.parametrize(
    ("size", "aspect", "expected"),
    [
        (None, None, (2048, 2048)),
        ("2K", "landscape", (2560, 1440)),
        ("2K", "portrait", (1440, 2560)),
        ("4K", "square", (4096, 4096)),
        ("4K", "landscape", (5440, 3056)),
        ("1664x2496", "landscape", (1664, 2496)),  # explicit wins, silently
    ],
)
def test_size_resolution(api: Api, size: Any, aspect: Any, expected: tuple[int, int]) -> None:
    body = with_(size=size if size else ..., aspectRatio=aspect if aspect else ...)
    record = _accepted(api, body)
    assert (record["input"]["width"], record["input"]["height"]) == expected


def test_aspect_ratio_rejection(api: Api) -> None:
    _rejected(api, with_(aspectRatio="wide"), "aspectRatio", "must be one of")


@pytest.mark.parametrize(
    ("n", "match"),
    [(0, "at least 1"), (16, "at most 15"), ("2", "integer"), (2.5, "integer"), (True, "integer")],
)
def test_n_rejections(api: Api, n: Any, match: str) -> None:
    _rejected(api, with_(n=n), "n", match)


@pytest.mark.parametrize(
    ("seed", "match"),
    [(-1, "at least 0"), (2**31, "at most 2147483647"), ("42", "integer"), (1.5, "integer")],
)
def test_seed_rejections(api: Api, seed: Any, match: str) -> None:
    _rejected(api, with_(seed=seed), "seed", match)


def test_seed_edges_and_server_seed(api: Api) -> None:
    assert _accepted(api, with_(seed=0))["input"]["seed"] == 0
    assert _accepted(api, with_(seed=2**31 - 1))["input"]["seed"] == 2**31 - 1
    drawn = {_accepted(api, dict(VALID))["input"]["seed"] for _ in range(3)}
    assert all(isinstance(s, int) and 0 <= s < 2**31 for s in drawn) and len(drawn) > 1


@pytest.mark.parametrize(
    ("scale", "match"), [(0.5, "at least 1"), (20.5, "at most 20"), ("7", "number")]
)
def test_guidance_scale_rejections(api: Api, scale: Any, match: str) -> None:
    _rejected(api, with_(guidanceScale=scale), "guidanceScale", match)


def test_guidance_scale_edges(api: Api) -> None:
    assert _accepted(api, with_(guidanceScale=1))["input"]["guidanceScale"] == 1.0
    assert _accepted(api, with_(guidanceScale=20.0))["input"]["guidanceScale"] == 20.0
    assert _accepted(api, dict(VALID))["input"]["guidanceScale"] == 7.5


@pytest.mark.parametrize(
    ("field", "value"),
    [("watermark", "yes"), ("responseFormat", "png"), ("sequential", "on")],
)
def test_enum_and_bool_rejections(api: Api, field: str, value: Any) -> None:
    _rejected(api, with_(**{field: value}), field)


def test_sequential_rules(api: Api) -> None:
    _rejected(api, with_(sequential="auto", n=2), "n", "cannot be combined")
    _rejected(
        api,
        with_(sequential="auto", sequentialOptions={"maxImages": 16}),
        "sequentialOptions.maxImages",
    )
    _rejected(
        api,
        with_(sequential="auto", sequentialOptions={"maxImages": 0}),
        "sequentialOptions.maxImages",
    )
    record = _accepted(api, with_(sequential="auto", sequentialOptions={"maxImages": 3}))
    assert record["input"]["sequentialOptions"] == {"maxImages": 3}
    enumerated = _accepted(
        api,
        with_(
            sequential="auto",
            prompt="The same person at four life stages: child, adolescent, adult, elderly.",
        ),
    )
    assert enumerated["input"]["sequentialOptions"] == {"maxImages": 4}
    # n=1 with sequential is allowed, and maxImages without sequential is ignored.
    _accepted(api, with_(sequential="auto", n=1))
    assert _accepted(api, with_(sequentialOptions={"maxImages": 9}))["input"]["n"] == 1


def test_references_plus_images_cap(api: Api) -> None:
    refs = [f"https://cdn.your-product.com/{i}.png" for i in range(10)]
    _rejected(api, with_(references=refs, n=6), "references", "must not exceed 15")
    assert _accepted(api, with_(references=refs, n=5))["referencesCount"] == 10
    _rejected(
        api,
        with_(references=refs, sequential="auto", sequentialOptions={"maxImages": 6}),
        "references",
        "must not exceed 15",
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.your-product.com/x",
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[fd00::1]/hook",
        "https://localhost/hook",
        "not a url",
    ],
)
def test_webhook_url_rejections(api: Api, url: str) -> None:
    _rejected(api, with_(webhookUrl=url), "webhookUrl")


def test_unknown_fields_are_ignored(api: Api) -> None:
    record = _accepted(api, with_(style="vivid", quality="hd", n=1))
    assert "style" not in record["input"]


@pytest.mark.parametrize(
    ("raw", "match"),
    [(b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object"), (b"", "not valid JSON")],
)
def test_malformed_bodies(api: Api, raw: bytes, match: str) -> None:
    key = api.new_key()
    with api.http(key) as client:
        response = client.post(
            "/v1/generations", content=raw, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400
    assert match in response.json()["error"]["message"]


def test_payload_too_large(api: Api) -> None:
    key = api.new_key()
    response = api.post(key, with_(prompt="x" * MAX_BODY_BYTES))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert api.balance(key) == 1000


def _raw_rejected(
    api: Api, raw: bytes, status: int, code: str, *, content_type: str | None = "application/json"
) -> dict[str, Any]:
    key = api.new_key()
    headers = {"Authorization": f"Bearer {key.api_key}"}
    if content_type:
        headers["Content-Type"] = content_type
    with api.http() as client:
        response = client.post("/v1/generations", content=raw, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"].endswith(".")
    assert api.balance(key) == 1000, "nothing is debited for a rejected request"
    return error


def test_deep_nesting_is_a_validation_error(api: Api) -> None:
    # 2 KB nested 1000 deep: the JSON parser's recursion limit, once a 500.
    error = _raw_rejected(api, b"[" * 1000 + b"]" * 1000, 400, "validation_error")
    assert "deeper than" in error["message"]
    deep = b'{"extra": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    _raw_rejected(api, deep, 400, "validation_error")


def test_nesting_bound(api: Api) -> None:
    def nested(depth: int) -> dict[str, Any]:
        # The body itself is level 1; `extra` is ignored, so only its depth matters.
        value: Any = 1
        for _ in range(depth - 1):
            value = [value]
        return dict(VALID, extra=value)

    _accepted(api, nested(MAX_JSON_DEPTH))
    error = _raw_rejected(
        api, json.dumps(nested(MAX_JSON_DEPTH + 1)).encode(), 400, "validation_error"
    )
    assert f"deeper than {MAX_JSON_DEPTH}" in error["message"]


def test_duplicate_keys_are_refused(api: Api) -> None:
    body = json.dumps(VALID)[:-1] + ', "n": 1, "n": 15}'
    error = _raw_rejected(api, body.encode(), 400, "validation_error")
    assert error["param"] == "n" and "repeats" in error["message"]
    nested = json.dumps(dict(VALID, sequential="auto"))[:-1]
    nested += ', "sequentialOptions": {"maxImages": 1, "maxImages": 9}}'
    _raw_rejected(api, nested.encode(), 400, "validation_error")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_numbers_are_refused(api: Api, constant: str) -> None:
    body = json.dumps(VALID)[:-1] + f', "guidanceScale": {constant}}}'
    error = _raw_rejected(api, body.encode(), 400, "validation_error")
    assert "not valid JSON" in error["message"]


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "application/json; charset=latin-1",
        "application/json;charset=utf-16",
    ],
)
def test_body_must_be_labelled_json(api: Api, content_type: str | None) -> None:
    error = _raw_rejected(
        api, json.dumps(VALID).encode(), 415, "unsupported_media_type", content_type=content_type
    )
    assert "application/json" in error["message"]


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", 'Application/JSON; charset="UTF-8"'],
)
def test_json_media_types_accepted(api: Api, content_type: str) -> None:
    key = api.new_key()
    headers = {"Authorization": f"Bearer {key.api_key}", "Content-Type": content_type}
    with api.http() as client:
        response = client.post("/v1/generations", content=json.dumps(VALID), headers=headers)
    assert response.status_code == 202, response.text
