"""The moderation floor."""

from __future__ import annotations

from pathlib import Path

from scheduler.stages.moderation import Moderator


def test_blocked_terms_on_word_boundaries() -> None:
    moderator = Moderator()
    assert not moderator.check("photo, CSAM style").allowed
    assert not moderator.check("c.s.a.m").allowed
    assert moderator.check("a csamlike word is not the term").allowed
    assert moderator.check("A cat in a spacesuit").allowed


def test_operator_terms(tmp_path: Path) -> None:
    extra = tmp_path / "blocklist.txt"
    extra.write_text("# brand protection\nacme corp logo\n")
    moderator = Moderator(extra)
    verdict = moderator.check("A poster with the ACME Corp logo")
    assert not verdict.allowed and verdict.term == "acme corp logo"
    assert moderator.check("a café poster").allowed
