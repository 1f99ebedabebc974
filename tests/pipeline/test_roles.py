"""Reference roles and frame prompts read from the prompt (torch-free)."""

from __future__ import annotations

import pytest

from pipeline.prompts import frame_prompts
from pipeline.roles import REGION_BOXES, ReferenceRole, parse_roles, reference_mentions
from tests.fixtures.imports import HEAVY, modules_loaded_by


def roles(prompt: str, count: int) -> list[tuple[str, str | None]]:
    return [(role.kind, role.region) for role in parse_roles(prompt, count)]


def test_roles_module_is_light() -> None:
    loaded = modules_loaded_by(
        "import pipeline.roles; pipeline.roles.parse_roles('image_1 for the face', 1)"
    )
    assert not HEAVY & loaded


@pytest.mark.parametrize(
    ("prompt", "count", "expected"),
    [
        (
            "use image_1 for the face, image_2 for the outfit",
            2,
            [("face", None), ("outfit", None)],
        ),
        (  # the spec's own example
            "Use image_1 for the face and image_2 for the outfit. Editorial fashion photo on a "
            "Tokyo street, 85mm lens.",
            2,
            [("face", None), ("outfit", None)],
        ),
        ("image_3 for the style", 3, [("subject", None), ("subject", None), ("style", None)]),
        (
            "image_1 on the left, image_2 on the right",
            2,
            [("subject", "left"), ("subject", "right")],
        ),
        (
            "the face from the first image and the outfit from the second image",
            2,
            [("face", None), ("outfit", None)],
        ),
        (
            "image_1 and image_2 for the style, image 3 in the background",
            3,
            [("style", None), ("style", None), ("subject", "background")],
        ),
        ("images 1-3 for the style", 3, [("style", None)] * 3),
        ("images 1, 2 and 3 for the style", 4, [("style", None)] * 3 + [("subject", None)]),
        ("images 1 and 2 for the outfit", 2, [("outfit", None)] * 2),
        (
            "put image_2 in the background and image_1 on the left for the face",
            2,
            [("face", "left"), ("subject", "background")],
        ),
        ("a portrait in the style of the reference image", 1, [("style", None)]),
        ("use image_10 for the outfit", 10, [("subject", None)] * 9 + [("outfit", None)]),
        ("Image #2 for the colour palette", 2, [("subject", None), ("style", None)]),
        ("use the 2nd photo for the jacket", 2, [("subject", None), ("outfit", None)]),
    ],
)
def test_named_roles(prompt: str, count: int, expected: list[tuple[str, str | None]]) -> None:
    assert roles(prompt, count) == expected


def test_missing_roles_default_to_subject() -> None:
    assert roles("a lighthouse at dawn", 3) == [("subject", None)] * 3
    assert roles("use image_1 for the face, image_2", 3) == [
        ("face", None),
        ("subject", None),
        ("subject", None),
    ]
    # "the reference" names the only reference, and only when there is one.
    assert roles("in the style of the reference", 2) == [("subject", None)] * 2


def test_unknown_mentions_are_ignored() -> None:
    assert roles("image_12 for the face, image_0 for the style", 2) == [("subject", None)] * 2
    assert roles("the eleventh image for the outfit", 2) == [("subject", None)] * 2
    assert reference_mentions("image_1, image_3 and image_5", 3) == [(0, 0), (9, 2)]
    # Role words without a reference do nothing.
    assert roles("a face in the style of Monet, image_1", 1) == [("subject", None)]


def test_weights_follow_role_and_modifiers() -> None:
    face, style = parse_roles("image_1 for the face, image_2 slightly for the style", 2)
    assert face.weight == ReferenceRole(kind="face").weight
    assert style.weight == pytest.approx(ReferenceRole(kind="style").weight * 0.5)
    (closely,) = parse_roles("follow image_1 closely for the outfit", 1)
    assert closely.weight > ReferenceRole(kind="outfit").weight


def test_region_boxes_tile_the_image() -> None:
    left, right = REGION_BOXES["left"], REGION_BOXES["right"]
    assert left[3] == right[1] == 0.5 and left[1] == 0 and right[3] == 1
    assert REGION_BOXES["top"][2] == REGION_BOXES["bottom"][0] == 0.5


@pytest.mark.parametrize(
    ("prompt", "frames", "expected"),
    [
        (
            "Series of the same person at four life stages: child, adolescent, adult, elderly.",
            4,
            [
                f"Series of the same person at four life stages, {item}"
                for item in ("child", "adolescent", "adult", "elderly")
            ],
        ),
        (
            "Brand set: logo; poster; banner. Minimal style.",
            3,
            ["Brand set, logo. Minimal style.", "Brand set, poster. Minimal style."]
            + ["Brand set, banner. Minimal style."],
        ),
        (
            "Storyboard 1) a red car 2) a blue car",
            2,
            ["Storyboard, a red car"] + ["Storyboard, a blue car"],
        ),
        ("Life stages: child, adult, elderly", 2, ["Life stages, child", "Life stages, adult"]),
        ("Life stages: child, adult", 4, ["Life stages: child, adult"] * 4),
        ("A lighthouse at dawn", 3, ["A lighthouse at dawn"] * 3),
    ],
)
def test_frame_prompts(prompt: str, frames: int, expected: list[str]) -> None:
    assert frame_prompts(prompt, frames) == expected
