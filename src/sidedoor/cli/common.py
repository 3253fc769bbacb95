"""What every CLI command shares: the context, the consoles, and calling the node."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from sidedoor.control.client import ControlClient

T = TypeVar("T")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


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


