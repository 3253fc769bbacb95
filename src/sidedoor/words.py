"""The project's 256-word list, and bytes shown as words for humans to compare."""

from __future__ import annotations

from functools import cache
from importlib import resources

WORD_COUNT = 256


@cache
def wordlist() -> tuple[str, ...]:
    text = resources.files("sidedoor").joinpath("wordlist.txt").read_text("utf-8")
    words = tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
    if len(words) != WORD_COUNT:
        raise RuntimeError(f"wordlist.txt must hold {WORD_COUNT} words, it holds {len(words)}")
    return words


def bytes_to_words(data: bytes) -> list[str]:
    """One word per byte: 8 bits each, so n words carry 8n bits."""
    words = wordlist()
    return [words[b] for b in data]
