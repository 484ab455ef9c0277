"""A passphrase strength hint for the first-run dialog: a score from 0 to 4 and one sentence.

Advisory only (the core's hard rule is :func:`appliance.vault.keyslots.check_new_passphrase`)
and fully offline. It follows zxcvbn's idea in a few lines: a passphrase is cut into the
pieces a guesser would try (common passwords, dictionary words, years, repeats, sequences and
keyboard rows, single characters) so that the *cheapest* reading wins, and the score comes from
the bits of that reading. The zxcvbn package itself (MIT) would be a drop-in upgrade with much
larger dictionaries; this keeps the appliance free of another dependency.
"""

from __future__ import annotations

import itertools
import math
import unicodedata
from dataclasses import dataclass

from appliance.vault.wordlists import COMMON_PASSWORDS, COMMON_WORDS, KEYBOARD_ROWS

LABELS = ("Very weak", "Weak", "Fair", "Strong", "Very strong")
THRESHOLDS = (20.0, 28.0, 36.0, 46.0)
"""Bits of the cheapest reading at which the score reaches 1, 2, 3 and 4."""
_MAX_PIECE = 32
_LEET = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a"})
_WORD_BITS = 11.0
"""A common word: about the rank of the words in :data:`COMMON_WORDS` in a guesser's list."""
_PASSWORD_BITS = math.log2(len(COMMON_PASSWORDS))
_OTHER_WORD_BITS = 16.0
"""Any other run of 4 letters or more may be a word of a larger dictionary (about 65,000
words); longer runs add 1.5 bits a letter. So real words are not mistaken for random letters."""


@dataclass(frozen=True)
class Strength:
    """How hard a passphrase is to guess."""

    score: int
    """0 (very weak) to 4 (very strong)."""
    sentence: str
    """One sentence for a person: the verdict and what would make it stronger."""
    bits: float
    """Estimated guessing entropy of the cheapest reading, in bits."""

    @property
    def label(self) -> str:
        return LABELS[self.score]


def _char_bits(ch: str) -> float:
    if ch == " ":
        return 1.0  # the usual separator between words
    if ch.isdigit():
        return math.log2(10)
    if ch.isalpha():
        return math.log2(26) + (1.0 if ch.isupper() else 0.0)
    return math.log2(33)


def _is_sequence(piece: str) -> bool:
    """abcd, 4321, qwer (a row of a keyboard, either way)."""
    lowered = piece.lower()
    steps = {ord(b) - ord(a) for a, b in itertools.pairwise(lowered)}
    if steps in ({1}, {-1}):
        return True
    return any(lowered in row or lowered[::-1] in row for row in KEYBOARD_ROWS)


def _piece(piece: str) -> tuple[float, str] | None:
    """The bits and kind of ``piece`` read as one pattern, or None when it is none."""
    n = len(piece)
    lowered = piece.lower()
    unleet = lowered.translate(_LEET)
    variation = 0.0
    if piece[:1].isupper() and piece[1:] == piece[1:].lower():
        variation += 1.0
    elif piece != lowered and piece != piece.upper():
        variation += n  # random capitals are worth a bit each
    if unleet != lowered:
        variation += 1.0
    if (n >= 4 and unleet in COMMON_PASSWORDS) or lowered in COMMON_PASSWORDS:
        return _PASSWORD_BITS + variation, "common"
    if n >= 3 and unleet.isalpha() and unleet in COMMON_WORDS:
        return _WORD_BITS + variation, "word"
    if n >= 3 and len(set(lowered)) == 1:
        return _char_bits(piece[0]) + math.log2(n), "repeat"
    if n >= 3 and _is_sequence(piece):
        return _char_bits(piece[0]) + math.log2(n) + 1.0, "sequence"
    if n == 4 and piece.isdigit() and 1900 <= int(piece) <= 2049:
        return math.log2(150), "year"
    if n >= 4 and unleet.isalpha():
        return _OTHER_WORD_BITS + 1.5 * (n - 4) + variation, "word"
    return None


def _cheapest(text: str) -> tuple[float, list[str]]:
    """The reading of ``text`` with the fewest bits, and the kinds of its pieces."""
    best: list[tuple[float, list[str]]] = [(0.0, [])]
    for end in range(1, len(text) + 1):
        bits, kinds = best[end - 1]
        choice = (bits + _char_bits(text[end - 1]), [*kinds, "char"])
        for start in range(max(0, end - _MAX_PIECE), end - 1):
            found = _piece(text[start:end])
            if found is not None and best[start][0] + found[0] < choice[0]:
                choice = (best[start][0] + found[0], [*best[start][1], found[1]])
        best.append(choice)
    return best[-1]


def _advice(score: int, kinds: list[str], text: str) -> str:
    if score == 4:
        return "hard to guess. Keep it safe: a lost passphrase means lost data."
    if "common" in kinds:
        problem = "it is one of the most common passwords"
    elif "sequence" in kinds or "repeat" in kinds:
        problem = "it relies on a sequence, a keyboard row or a repeated character"
    elif "year" in kinds:
        problem = "years and dates are among the first things guessed"
    elif len(text) < 12:
        problem = "it is short"
    elif "word" in kinds:
        problem = "guessers try dictionary words first"
    else:
        problem = "it could be guessed with enough tries"
    return f"{problem}; add another unrelated word or two."


def estimate(passphrase: str) -> Strength:
    """Score ``passphrase`` from 0 (very weak) to 4 (very strong), without any network.

    Example: ``estimate("Summer2024!").score`` is 0; ``estimate("correct horse battery
    staple").score`` is 4.
    """
    text = unicodedata.normalize("NFC", passphrase)
    if not text.strip():
        hint = "enter a passphrase; a few unrelated words make a good one."
        return Strength(0, f"{LABELS[0]}: {hint}", 0)
    bits, kinds = _cheapest(text)
    score = sum(1 for threshold in THRESHOLDS if bits >= threshold)
    return Strength(score, f"{LABELS[score]}: {_advice(score, kinds, text)}", round(bits, 1))
