"""Display names and short texts from other people, made safe to show.

Whitespace of any kind becomes a plain space between words; control and format
characters (including the bidirectional overrides that can make a name read as
another) are dropped; the ends are trimmed.
"""

from __future__ import annotations

import unicodedata

MAX_NAME_LEN = 64


def clean_text(text: str) -> str:
    kept = "".join(ch for ch in text if ch.isspace() or unicodedata.category(ch)[0] != "C")
    return " ".join(kept.split())


def clean_name(text: str, limit: int = MAX_NAME_LEN) -> str:
    """`clean_text`, cut to ``limit`` characters (and trimmed again after the cut)."""
    return clean_text(text)[:limit].rstrip()
