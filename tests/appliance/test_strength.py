"""The passphrase strength hint: common passwords and patterns score low, unrelated words high."""

from __future__ import annotations

import pytest

from appliance.vault.strength import LABELS, estimate


@pytest.mark.parametrize(
    ("passphrase", "score", "reason"),
    [
        ("", 0, "enter a passphrase"),
        ("   ", 0, "enter a passphrase"),
        ("password", 0, "one of the most common passwords"),
        ("P@ssw0rd", 0, "one of the most common passwords"),
        ("password123", 0, "one of the most common passwords"),
        ("aaaaaaaaaaaa", 0, "a repeated character"),
        ("abcdefgh1234", 0, "a sequence"),
        ("qwertyuiop", 0, "most common passwords"),
        ("asdfghjk", 0, "keyboard row"),
        ("Tr0ub4dor&3", 2, "it is short"),
        ("correct horse battery", 2, "dictionary words"),
        ("correct horse battery staple", 4, "a lost passphrase means lost data"),
        ("purple elephant dances quietly", 4, "hard to guess"),
        ("G7!k2#pQ9z@w", 4, "hard to guess"),
    ],
)
def test_scores_and_sentences(passphrase: str, score: int, reason: str) -> None:
    result = estimate(passphrase)
    assert result.score == score, result
    assert result.sentence.startswith(LABELS[score] + ": ")
    assert reason in result.sentence
    assert "\n" not in result.sentence
    assert result.sentence.endswith(".")


def test_years_are_cheap_and_another_word_never_hurts() -> None:
    with_year = estimate("lantern1987")
    assert "years and dates" in with_year.sentence
    assert with_year.bits < estimate("lantern8351").bits
    words = ["mountain", "glacier", "lantern", "walrus", "origami", "tundra"]
    scores = [estimate(" ".join(words[:n])).score for n in range(1, len(words) + 1)]
    assert scores == sorted(scores)
    assert scores[0] <= 1
    assert scores[-1] == 4


def test_unicode_is_read_as_typed() -> None:
    # The same passphrase in composed and decomposed form scores the same.
    assert (
        estimate("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e").bits
        == estimate("cafe\u0301 cre\u0300me bru\u0302le\u0301e").bits
    )
