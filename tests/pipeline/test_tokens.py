"""Token estimates: about four characters per token."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline import estimate_tokens


def test_a_few_estimates() -> None:
    assert [estimate_tokens(text) for text in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]


@given(st.lists(st.text()))
def test_a_character_count_estimates_like_the_text_it_counts(pieces: list[str]) -> None:
    # A stream counts characters as they pass and estimates once, at its end.
    assert estimate_tokens(sum(map(len, pieces))) == estimate_tokens("".join(pieces))
