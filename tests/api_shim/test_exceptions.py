"""The package's one exception hierarchy and the API's error codes."""

from __future__ import annotations

import pytest

from api_shim import client, exceptions
from api_shim.exceptions import ApiError, ErrorCode, ImageUnavailable, JobFailed, XsdError


def test_every_code_has_a_status() -> None:
    """The wire codes are answered with their statuses (tests/api_shim/test_api.py checks
    each over HTTP); none is left without one."""
    assert all(400 <= code.status < 600 for code in ErrorCode)


def test_an_api_error_takes_its_codes_status_unless_told() -> None:
    assert ApiError(ErrorCode.CONFLICT, "Already finished.").status == 409
    answered = ApiError("a_code_from_a_newer_server", "Hm.", status=418)
    assert (answered.status, answered.code) == (418, "a_code_from_a_newer_server")
    with pytest.raises(ValueError):
        ApiError("a_code_from_a_newer_server", "No status to take.")


def test_one_hierarchy() -> None:
    """A failed job is no HTTP error: callers catch it apart, or all of them as XsdError."""
    failed = JobFailed("content_policy", "Refused.", record={"status": "failed"})
    assert isinstance(failed, XsdError) and not isinstance(failed, ApiError)
    assert issubclass(ImageUnavailable, XsdError) and not issubclass(ImageUnavailable, ApiError)
    assert str(failed) == "content_policy: Refused."
    # The client raises the same classes the shim does.
    assert client.ApiError is exceptions.ApiError and client.XsdError is exceptions.XsdError


def test_all_is_what_the_module_defines() -> None:
    defined = {
        name
        for name, value in vars(exceptions).items()
        if isinstance(value, type) and value.__module__ == exceptions.__name__
    }
    assert set(exceptions.__all__) == defined
