"""The published OpenAPI document: it validates, documents every status in the error
format, and the live API conforms to it under schemathesis's generated requests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from api_shim import events
from scheduler.redis.embedded import free_port
from scheduler.runtime import Runtime

from .conftest import Api, serving

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    # The coverage phase sends undeclared methods (TRACE, PATCH ...): 405 with Allow.
    "unsupported_method",
]
# Per operation and phase; the whole run takes ~25 s on two cores.
MAX_EXAMPLES = 25
ERROR_REF = "#/components/schemas/ErrorBody"


@pytest.fixture(scope="module")
def document(api: Api) -> dict[str, Any]:
    return httpx.get(f"{api.base_url}/openapi.json").json()


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_document_validates(document: dict[str, Any]) -> None:
    validate(document)
    # The validator does not follow references inside schemas: resolve each one here
    # (#/$defs/SequentialOptions, inside the request body, once pointed nowhere).
    refs = set(_refs(document))
    assert refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        node: Any = document
        for part in ref[2:].split("/"):
            assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
            node = node[part]


def test_every_status_is_documented_with_a_schema(document: dict[str, Any]) -> None:
    operations = [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]
    assert len(operations) == 11
    for method, path, operation in operations:
        responses = operation["responses"]
        assert "422" not in responses, f"{method} {path}: this API never answers 422"
        assert "500" in responses, f"{method} {path}"
        for status, response in responses.items():
            content = response["content"]
            schema = next(iter(content.values()))["schema"]
            if status.startswith("2"):
                assert schema, f"{method} {path} {status} has no schema"
            else:
                assert content == {"application/json": {"schema": {"$ref": ERROR_REF}}}, (
                    f"{method} {path} {status}"
                )
        if operation.get("security"):
            assert {"401", "429"} <= responses.keys(), f"{method} {path}"
    body = document["paths"]["/v1/generations"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/GenerationBody"
    }


@pytest.fixture(scope="module")
def fuzzed_api(api: Api) -> Iterator[str]:
    """A second server over the same Redis and settings, without rate limits worth the
    name: a fuzzer's hundreds of POSTs must reach validation, not a stream of 429s."""
    settings = api.runtime.settings.model_copy(
        update={
            "port": free_port(),
            "rate_limit_per_minute": 1_000_000,
            "read_rate_limit_per_minute": 1_000_000,
        }
    )
    with serving(Runtime(settings=settings, redis_url=api.runtime.redis_url)) as base_url:
        yield base_url


def test_api_conforms_to_its_document(
    api: Api, fuzzed_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stateful phase follows a new generation to its event stream; with no workers
    # here it stays queued, so streams end (as they do after five minutes) within 2 s.
    monkeypatch.setattr(events, "MAX_STREAM_SECONDS", 2)
    # schemathesis's CLI, for its four phases (the spec's examples, coverage of every
    # boundary and undeclared method, random fuzzing, and stateful sequences that follow
    # the document's links from a new generation to its GET, cancel and DELETE). Its pytest
    # plugin cannot load a schema from a fixture under pytest 9 (it sets a removed
    # attribute). A fixed seed keeps the run reproducible; the examples bound its time.
    key = api.new_key(credits=10**9)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{fuzzed_api}/openapi.json",
        "--header",
        f"Authorization: Bearer {key.api_key}",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "1",
        "--generation-database",
        "none",
        "--continue-on-failure",
    ]
    run = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    # Exit status 0 is no failure; warnings (an operation that mostly answered 404) are not.
    assert "11 selected / 11 total" in report and "Tested: 11" in report, report
