"""Request rules that need the pipeline's knowledge (tokens, enumerations, models, limits),
offered to the HTTP shim so that it depends on the scheduler alone."""

from __future__ import annotations

from pipeline import (
    LONGEST_TOKEN_BYTES,
    MAX_REFERENCES,
    MAX_SEED,
    count_prompt_tokens,
    enumerate_items,
)

__all__ = [
    "MAX_REFERENCES",
    "MAX_SEED",
    "MAX_PROMPT_TOKENS",
    "MAX_PROMPT_CHARS",
    "MAX_IMAGES",
    "DEFAULT_FRAMES",
    "prompt_tokens",
    "frame_count",
]

MAX_PROMPT_TOKENS = 2000
# No token covers more than LONGEST_TOKEN_BYTES characters, and whitespace between tokens
# collapses to one space: a prompt within the token limit has at most this many characters
# (unless padded with long runs of whitespace). Longer prompts are refused without
# tokenizing them, so a megabyte of text costs no CPU. Real prompts average ~4 per token.
MAX_PROMPT_CHARS = (LONGEST_TOKEN_BYTES + 1) * MAX_PROMPT_TOKENS
# Images per request, and references plus images per request.
MAX_IMAGES = 15
# Frames of a sequential request that neither names maxImages nor enumerates its subjects.
DEFAULT_FRAMES = 4


def prompt_tokens(prompt: str) -> int:
    """CLIP BPE tokens in a prompt (the unit of the spec's ~2000-token limit)."""
    return count_prompt_tokens(prompt)


def frame_count(prompt: str, max_images: int | None) -> int:
    """Frames of a sequential request: ``maxImages``, else what the prompt enumerates
    (e.g. "child, adolescent, adult, elderly" -> 4, at most :data:`MAX_IMAGES`), else
    :data:`DEFAULT_FRAMES`."""
    if max_images is not None:
        return max_images
    items = enumerate_items(prompt)
    return min(len(items), MAX_IMAGES) if len(items) >= 2 else DEFAULT_FRAMES
