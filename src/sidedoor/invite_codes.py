"""Invite codes: ``7-guitar-orbit``, read over the phone to add a colleague.

A code is a *nameplate* (a number, 1..999) and two words from the project's
256-word list (`sidedoor.words`). The nameplate is not secret: it only says
which pending invite is meant, and it is advertised in clear on the LAN or
allocated by a broker. The two words are the secret, 16 bits of it; that is
enough because the invite protocol (`sidedoor.proto.invite`, SPAKE2) gives an
attacker one online guess per code and no way to test guesses offline.

Pure helpers, no I/O: `make_code` takes its random bytes as an argument.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import cache

from sidedoor.errors import InvalidInviteCode
from sidedoor.words import wordlist

__all__ = [
    "MAKE_CODE_RANDOM_LEN",
    "MAX_NAMEPLATE",
    "InviteCode",
    "make_code",
    "parse_code",
]

MAX_NAMEPLATE = 999
# make_code keeps nameplates short: 1..99.
_SHORT_NAMEPLATES = 99
MAKE_CODE_RANDOM_LEN = 4  # 2 bytes for the nameplate, 1 byte per word
_MAX_TEXT_LEN = 100  # longer input is not a code; do not run difflib over it
_SEPARATORS = re.compile(r"[\s\-]+")
_EXAMPLE = "7-guitar-orbit"
_NOT_A_CODE = f"that does not look like an invite code: it should look like {_EXAMPLE}"


@dataclass(frozen=True, slots=True)
class InviteCode:
    """A parsed invite code. ``str(code)`` is its canonical text, ``7-guitar-orbit``."""

    nameplate: int
    words: tuple[str, str]

    def __post_init__(self) -> None:
        if type(self.nameplate) is not int or not 1 <= self.nameplate <= MAX_NAMEPLATE:
            raise InvalidInviteCode(
                f"the number of an invite code is between 1 and {MAX_NAMEPLATE}, "
                f"not {self.nameplate!r}"
            )
        if not isinstance(self.words, tuple) or len(self.words) != 2:
            raise InvalidInviteCode(f"an invite code has two words, like {_EXAMPLE}")
        for word in self.words:
            if word not in _word_set():
                raise InvalidInviteCode(_unknown_word_message(word))

    def __str__(self) -> str:
        return f"{self.nameplate}-{self.words[0]}-{self.words[1]}"

    def secret(self) -> bytes:
        """The PAKE password: the canonical text, so the nameplate is part of it too."""
        return str(self).encode("ascii")


def make_code(random: bytes) -> InviteCode:
    """A new code from ``random`` (at least 4 bytes; only the first 4 are used).

    The same bytes always give the same code. The nameplate is 1..99 (short to
    read out; its slight bias does not matter, it is not secret); each word is
    one whole byte, so the 16 secret bits are uniform.
    """
    if len(random) < MAKE_CODE_RANDOM_LEN:
        raise ValueError(
            f"make_code needs {MAKE_CODE_RANDOM_LEN} random bytes, got {len(random)}"
        )
    words = wordlist()
    nameplate = 1 + int.from_bytes(random[0:2], "big") % _SHORT_NAMEPLATES
    return InviteCode(nameplate, (words[random[2]], words[random[3]]))


def parse_code(text: str) -> InviteCode:
    """Read a code as a person typed it: any case, dashes or spaces, extra whitespace.

    Raises `InvalidInviteCode` with a message saying what is wrong; a word that
    is not in the list is named, with the closest list words as suggestions.
    """
    if len(text) > _MAX_TEXT_LEN:
        raise InvalidInviteCode(_NOT_A_CODE)
    parts = [p for p in _SEPARATORS.split(text.strip().lower()) if p]
    if len(parts) != 3:
        raise InvalidInviteCode(
            f"{_NOT_A_CODE} (a number and two words; this has {len(parts)} parts)"
            if parts else _NOT_A_CODE
        )
    number, *words = parts
    if not (number.isascii() and number.isdigit()):
        raise InvalidInviteCode(f"{_NOT_A_CODE} (it starts with a number)")
    nameplate = int(number)
    if not 1 <= nameplate <= MAX_NAMEPLATE:
        raise InvalidInviteCode(
            f"the number at the start of an invite code is between 1 and {MAX_NAMEPLATE}, "
            f"not {nameplate}"
        )
    unknown = [w for w in words if w not in _word_set()]
    if unknown:
        raise InvalidInviteCode("; ".join(_unknown_word_message(w) for w in unknown))
    return InviteCode(nameplate, (words[0], words[1]))


@cache
def _word_set() -> frozenset[str]:
    return frozenset(wordlist())


def _unknown_word_message(word: str) -> str:
    shown = word if len(word) <= 20 else word[:20] + "..."
    close = difflib.get_close_matches(word, wordlist(), n=3, cutoff=0.6)
    if close:
        hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
    else:
        hint = "check the spelling with your colleague"
    return f"{shown!r} is not one of the invite words ({hint})"
