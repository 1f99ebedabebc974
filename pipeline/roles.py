"""What each reference image is for, read from the prompt (light: no torch).

The spec asks callers to name their references in the prompt ("use image_1 for the face,
image_2 for the outfit"). A role has two independent parts:

- a *kind*, what to copy: ``subject`` (the default), ``face``, ``outfit`` or ``style``. The
  first three condition the whole image; ``style`` acts only in the UNet's style layers (the
  InstantStyle recipe, see :mod:`pipeline.ip_adapter`);
- an optional *region*, where to put it: ``left``, ``right``, ``top``, ``bottom``,
  ``center`` or ``background`` (what the sample's other regions leave). A region becomes a
  spatial mask on the reference's attention output.

Parsing is deliberately small and predictable: the prompt is cut into clauses (commas,
semicolons, sentence ends), a clause into segments ("and", "while", "but"); a segment's
references take the roles named in it, and references named without a role take the roles
of the next segment that names one ("image_1 and image_2 for the style"). Mentions of
references the request does not have ("image_12" with two references) are ignored, as are
roles named with no reference. References never named are subjects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .geometry import Box

__all__ = [
    "KINDS",
    "REGIONS",
    "REGION_BOXES",
    "DEFAULT_WEIGHTS",
    "ReferenceRole",
    "parse_roles",
    "reference_mentions",
]

SUBJECT, FACE, OUTFIT, STYLE = "subject", "face", "outfit", "style"
KINDS = (SUBJECT, FACE, OUTFIT, STYLE)
REGIONS = ("left", "right", "top", "bottom", "center", "background")
# Each region's box. The background box is the whole image: its mask is what the other
# regions of the sample leave.
REGION_BOXES = {
    "left": Box(top=0.0, left=0.0, bottom=1.0, right=0.5),
    "right": Box(top=0.0, left=0.5, bottom=1.0, right=1.0),
    "top": Box(top=0.0, left=0.0, bottom=0.5, right=1.0),
    "bottom": Box(top=0.5, left=0.0, bottom=1.0, right=1.0),
    "center": Box(top=0.25, left=0.25, bottom=0.75, right=0.75),
    "background": Box(top=0.0, left=0.0, bottom=1.0, right=1.0),
}

# IP-Adapter scale per kind. Each reference attends on its own and adds its own output, so
# these sit below 1 for the kinds that act everywhere (a face and an outfit reference
# together stay near one reference's total strength); InstantStyle runs its single style
# block at 1.
DEFAULT_WEIGHTS = {SUBJECT: 0.6, FACE: 0.7, OUTFIT: 0.6, STYLE: 1.0}
# The largest weight a prompt modifier can reach.
MAX_WEIGHT = 1.5


@dataclass(frozen=True)
class ReferenceRole:
    """How one reference conditions the image."""

    kind: str = SUBJECT
    region: str | None = None
    # A prompt's modifier ("slightly" 0.5, "closely" 1.25) times the kind's weight.
    strength: float = 1.0

    @property
    def weight(self) -> float:
        """The IP-Adapter scale this role asks for."""
        return min(DEFAULT_WEIGHTS[self.kind] * self.strength, MAX_WEIGHT)


_NOUN = r"(?:image|img|picture|pic|photo|reference|ref)"
_NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_ORDINALS = (
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
)
_NUMBER = r"(?:\d{1,2}|" + "|".join(_NUMBER_WORDS) + r")"
# "image_1", "image 2", "img#3", "reference 4", "image one"; "images 1 and 2", "images 1-3".
_NUMBERED = re.compile(
    rf"\b{_NOUN}s?[\s_#-]*(?P<numbers>{_NUMBER}(?:\s*(?:,|&|-|and|to)\s*{_NUMBER}\b)*)\b",
    re.IGNORECASE,
)
# "the first image", "2nd photo", "third reference image".
_ORDINAL = re.compile(
    r"\b(?P<ordinal>" + "|".join(_ORDINALS) + r"|1st|2nd|3rd|[4-9]th|10th)\s+"
    rf"(?:reference\s+)?{_NOUN}\b",
    re.IGNORECASE,
)
# With one reference, callers say "the reference" or "this photo".
_SINGLE = re.compile(
    r"\b(?:the|this|my|attached|given|provided)\s+(?:reference|image|photo|picture)\b",
    re.IGNORECASE,
)

_KIND_WORDS = {
    FACE: r"faces?|facial|identity|likeness|head|hair|hairstyle|expression",
    OUTFIT: r"outfits?|clothes|clothing|dress|garments?|attire|wardrobe|costume|suit|jacket"
    r"|shirt|apparel|wearing|fashion",
    STYLE: r"styles?|stylistic|aesthetics?|palette|colou?rs?|colou?r\s+scheme|lighting|mood"
    r"|textures?|brushwork|art\s+direction|vibe",
    SUBJECT: r"subject|character|person|product|object|body|pet|animal|item|logo",
}
_REGION_WORDS = {
    "left": r"left",
    "right": r"right",
    "top": r"top",
    "bottom": r"bottom",
    "center": r"center|centre|middle",
    "background": r"background|backdrop|scene|setting|environment|surroundings",
}
_KINDS = [
    (kind, re.compile(rf"\b(?:{words})\b", re.IGNORECASE)) for kind, words in _KIND_WORDS.items()
]
_REGIONS = [
    (region, re.compile(rf"\b(?:{words})\b", re.IGNORECASE))
    for region, words in _REGION_WORDS.items()
]
_WEAKER = re.compile(r"\b(?:slight(?:ly)?|subtle|subtly|loosely|lightly|hint)\b", re.IGNORECASE)
_STRONGER = re.compile(r"\b(?:strongly|exactly|closely|precisely|faithfully)\b", re.IGNORECASE)

_CLAUSES = re.compile(r"[,;:.!?\n]+")
_SEGMENTS = re.compile(r"\b(?:and|while|but|whereas|plus)\b", re.IGNORECASE)


def _number(text: str) -> int:
    text = text.lower()
    return int(text) if text.isdigit() else _NUMBER_WORDS.index(text) + 1


def reference_mentions(text: str, count: int) -> list[tuple[int, int]]:
    """``(position, reference index from 0)`` of each reference ``text`` names, in order;
    mentions beyond ``count`` references are dropped."""
    found: list[tuple[int, int]] = []
    for match in _NUMBERED.finditer(text):
        numbers = [_number(n) for n in re.findall(_NUMBER, match["numbers"], re.IGNORECASE)]
        if len(numbers) == 2 and re.search(r"-|\bto\b", match["numbers"]):
            numbers = list(range(numbers[0], numbers[1] + 1))  # "images 1-3"
        found += [(match.start(), n - 1) for n in numbers]
    for match in _ORDINAL.finditer(text):
        word = match["ordinal"].lower()
        number = _ORDINALS.index(word) + 1 if word in _ORDINALS else int(word[:-2])
        found.append((match.start(), number - 1))
    if count == 1:
        found += [(match.start(), 0) for match in _SINGLE.finditer(text)]
    return sorted((pos, index) for pos, index in found if 0 <= index < count)


def _words(text: str, patterns: list[tuple[str, re.Pattern[str]]]) -> list[tuple[int, str]]:
    return sorted((m.start(), name) for name, pattern in patterns for m in pattern.finditer(text))


def _nearest(position: int, named: list[tuple[int, str]]) -> str | None:
    if not named:
        return None
    return min(named, key=lambda item: abs(item[0] - position))[1]


@dataclass
class _Unit:
    """References and the span of the prompt whose role words apply to them."""

    mentions: list[tuple[int, int]]
    start: int
    end: int


def _split(
    text: str, separator: re.Pattern[str], start: int, end: int, keep: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """``text[start:end]`` cut at ``separator``, except inside the ``keep`` spans (a list
    of references such as "images 1, 2 and 3" is one mention)."""
    spans, begin = [], start
    for match in separator.finditer(text, start, end):
        if not any(low <= match.start() < high for low, high in keep):
            spans.append((begin, match.start()))
            begin = match.end()
    spans.append((begin, end))
    return spans


def _units(
    prompt: str, clause: tuple[int, int], count: int, keep: list[tuple[int, int]]
) -> list[_Unit]:
    units: list[_Unit] = []
    pending: _Unit | None = None
    for start, end in _split(prompt, _SEGMENTS, *clause, keep):
        segment = prompt[start:end]
        mentions = [(start + pos, index) for pos, index in reference_mentions(segment, count)]
        has_role = bool(_words(segment, _KINDS) or _words(segment, _REGIONS))
        if mentions and not has_role:
            # Named without a role: they take the roles of the next segment that has some.
            if pending is None:
                pending = _Unit(mentions, start, end)
            else:
                pending.mentions += mentions
                pending.end = end
        elif has_role and pending is not None:
            pending.mentions += mentions
            pending.end = end
            units.append(pending)
            pending = None
        elif has_role and mentions:
            units.append(_Unit(mentions, start, end))
        elif has_role and units:
            # "image_1 for the face and hair": more words for the references just named.
            units[-1].end = end
    if pending is not None:
        units.append(pending)
    return units


def parse_roles(prompt: str, count: int) -> tuple[ReferenceRole, ...]:
    """The role of each of ``count`` references, as the prompt names them."""
    kinds: dict[int, str] = {}
    regions: dict[int, str] = {}
    strengths: dict[int, float] = {}
    keep = [match.span() for match in _NUMBERED.finditer(prompt)]
    for clause in _split(prompt, _CLAUSES, 0, len(prompt), keep):
        for unit in _units(prompt, clause, count, keep):
            text = prompt[unit.start : unit.end]
            kind_words = [(unit.start + pos, kind) for pos, kind in _words(text, _KINDS)]
            region_words = [(unit.start + pos, region) for pos, region in _words(text, _REGIONS)]
            strength = 0.5 if _WEAKER.search(text) else 1.0
            strength *= 1.25 if _STRONGER.search(text) else 1.0
            for position, index in unit.mentions:
                # The first role a reference is given wins over later mentions.
                kind = _nearest(position, kind_words)
                if kind is not None:
                    kinds.setdefault(index, kind)
                region = _nearest(position, region_words)
                if region is not None:
                    regions.setdefault(index, region)
                if strength != 1.0:
                    strengths.setdefault(index, strength)
    return tuple(
        ReferenceRole(
            kind=kinds.get(index, SUBJECT),
            region=regions.get(index),
            strength=strengths.get(index, 1.0),
        )
        for index in range(count)
    )
