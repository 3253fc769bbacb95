"""What every CLI command shares: the context, the consoles, calling the node, showing text."""

from __future__ import annotations

import asyncio
import json
import time
import unicodedata
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from sidedoor.control.client import ControlClient

T = TypeVar("T")
# No emoji codes either: ":smile:" in a colleague's name stays text.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


class Context:
    def __init__(self, home: Path, debug: bool) -> None:
        self.home = home
        self.debug = debug


pass_ctx = click.make_pass_decorator(Context)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _run(coro: Awaitable[T]) -> T:
    async def wrapper() -> T:
        return await coro

    return asyncio.run(wrapper())


async def _api(home: Path, method: str, path: str, body: dict[str, Any] | None = None,
               timeout: float = 30.0) -> Any:
    async with ControlClient(home) as client:
        return await client.call(method, path, body, timeout=timeout)


# ------------------------------------------------------------- showing text

def printable(text: object) -> str:
    """``text`` without control or format characters (ESC, bidi overrides, ...).

    Line breaks, tabs and other white space become plain spaces, so that one message
    stays one line. Nothing from the node (or, through it, from a peer) is trusted to
    be clean.
    """
    return "".join(
        " " if ch.isspace() else "" if unicodedata.category(ch)[0] == "C" else ch
        for ch in str(text)
    )


def safe(text: object) -> str:
    """``text`` made safe to put in rich markup: `printable`, with markup escaped.

    Every name, message, reason, address or error that goes into ``out.print`` /
    ``err.print`` or a table cell goes through this first: a name like ``Eve [/]``
    must show as itself, not be taken for markup (or crash the print).
    """
    return escape(printable(text))


def _ago(timestamp: float | None, now: float | None = None) -> str:
    """When ``timestamp`` was, said for people: never, just now, 5 min ago, 3 h ago, 2 days ago."""
    if not timestamp:
        return "never"
    seconds = int((time.time() if now is None else now) - timestamp)
    if seconds < 90:
        return "just now"
    if seconds < 5400:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"
