"""Fixtures shared by every test package (each lives in tests/fixtures/)."""

pytest_plugins = [
    "tests.fixtures.redis",
    "tests.fixtures.s3",
    "tests.fixtures.receivers",
    "tests.fixtures.stack",
]
