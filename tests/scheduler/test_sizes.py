"""Size presets, explicit pixels and the spec's bounds."""

from __future__ import annotations

import pytest

from scheduler.jobs.sizes import (
    MAX_PIXELS,
    MIN_PIXELS,
    PRESETS,
    AspectRatio,
    SizeError,
    parse_size,
    resolve,
    size_class,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2K", (2048, 2048)),
        ("2k", (2048, 2048)),
        ("4K", (4096, 4096)),
        ("2048x2048", (2048, 2048)),
        ("1664x2496", (1664, 2496)),
        ("2560X1440", (2560, 1440)),
        (" 2560 x 1440 ", (2560, 1440)),
        ("1897x1898", (1897, 1898)),  # 3,600,506 px: just over the floor
        ("4096x4096", (4096, 4096)),  # exactly the ceiling
        ("16384x1024", (16384, 1024)),  # aspect exactly 16
        ("1024x16384", (1024, 16384)),  # aspect exactly 1/16
    ],
)
def test_valid_sizes(text: str, expected: tuple[int, int]) -> None:
    assert resolve(parse_size(text), AspectRatio.AUTO) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1K", "no longer accepted"),
        ("8K", "must be"),
        ("", "must be"),
        ("2048", "must be"),
        ("2048x", "must be"),
        ("-2048x2048", "must be"),
        ("2048.5x2048", "must be"),
        ("0x4000", "zero side"),
        ("1897x1897", "between"),  # 3,598,609 px: just under the floor
        ("4097x4096", "between"),  # one column over the ceiling
        ("1024x1024", "between"),
        ("16400x1000", "aspect ratio"),  # 16.4:1, pixels in range
        ("1000x16400", "aspect ratio"),
        ("9999999x1", "must be"),
    ],
)
def test_invalid_sizes(text: str, reason: str) -> None:
    with pytest.raises(SizeError, match=reason):
        parse_size(text)


def test_presets_are_inside_the_bounds() -> None:
    for shapes in PRESETS.values():
        for width, height in shapes.values():
            assert MIN_PIXELS <= width * height <= MAX_PIXELS
            assert width % 16 == 0 and height % 16 == 0


def test_aspect_ratio_under_a_preset() -> None:
    two_k = parse_size("2K")
    assert resolve(two_k, AspectRatio.LANDSCAPE) == (2560, 1440)
    assert resolve(two_k, AspectRatio.PORTRAIT) == (1440, 2560)
    assert resolve(parse_size("4K"), AspectRatio.LANDSCAPE) == (5440, 3056)


def test_explicit_size_wins_over_aspect_ratio() -> None:
    assert resolve(parse_size("1664x2496"), AspectRatio.LANDSCAPE) == (1664, 2496)


def test_auto_follows_the_first_reference() -> None:
    two_k = parse_size("2K")
    assert resolve(two_k, AspectRatio.AUTO) == (2048, 2048)
    assert resolve(two_k, AspectRatio.AUTO, has_references=True) is None
    assert resolve(two_k, AspectRatio.AUTO, has_references=True, reference_aspect=1.7) == (
        2560,
        1440,
    )
    assert resolve(two_k, AspectRatio.AUTO, has_references=True, reference_aspect=0.6) == (
        1440,
        2560,
    )
    assert resolve(two_k, AspectRatio.AUTO, has_references=True, reference_aspect=1.1) == (
        2048,
        2048,
    )


def test_size_class() -> None:
    assert size_class(2560, 1440) == "2k"
    assert size_class(4096, 4096) == "4k"
