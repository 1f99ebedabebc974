"""Prompt moderation before any GPU time is spent.

A term list, matched on word boundaries after case and accent folding, with the built-in
list extended by the operator's (``XSD_MODERATION_BLOCKLIST``, one term per line, ``#``
comments). It is a floor, not a classifier: operators who need more put a moderation
service in front, and the ``content_policy`` path here is what such a service plugs into.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["Verdict", "Moderator"]


@dataclass(frozen=True)
class Verdict:
    """``allowed`` False names the matched term."""

    allowed: bool
    term: str | None = None


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _terms(text: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [_fold(line) for line in lines if line]


class Moderator:
    """Checks prompts against the blocked terms."""

    def __init__(self, extra_terms_file: Path | None = None) -> None:
        builtin = resources.files("scheduler.stages").joinpath("blocklist.txt")
        terms = _terms(builtin.read_text("utf-8"))
        if extra_terms_file is not None:
            terms += _terms(extra_terms_file.read_text("utf-8"))
        # Longest first so a longer phrase wins over a term it contains.
        alternatives = "|".join(re.escape(t) for t in sorted(set(terms), key=len, reverse=True))
        self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)") if terms else None

    def check(self, prompt: str) -> Verdict:
        """Whether the prompt may be generated."""
        if self._pattern is None:
            return Verdict(allowed=True)
        # Separators between letters ("c.s.a.m", "c-s-a-m") are a common way around lists.
        folded = _fold(prompt)
        squeezed = re.sub(r"(?<=\w)[.\-_*](?=\w)", "", folded)
        for text in (folded, squeezed):
            match = self._pattern.search(text)
            if match:
                return Verdict(allowed=False, term=match.group(0))
        return Verdict(allowed=True)
