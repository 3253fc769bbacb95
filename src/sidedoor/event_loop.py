"""The event loop of the node daemon (`sidedoor up`).

uvloop when it is installed (it is a dependency on Linux and macOS), the standard
asyncio loop otherwise, or when ``SIDEDOOR_LOOP=asyncio`` asks for it (to rule the
loop out when chasing a bug). Why: a chat message between two nodes is mostly loop
work (callbacks, task switches, transport writes) and HTTP; uvloop does that part
in C. Short-lived CLI commands keep the standard loop: they run a request or two,
and importing uvloop would cost more than it saves. The broker keeps the standard
loop for now: its relay hands sockets from asyncio's transports to splice(2), which
has not been tried on uvloop's.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
LOOP_ENV = "SIDEDOOR_LOOP"

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory() -> LoopFactory | None:
    """uvloop's loop factory, or None for asyncio's own (not installed, or not wanted)."""
    if os.environ.get(LOOP_ENV, "").strip().lower() == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, on the loop `loop_factory` picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """"uvloop" or "asyncio": which loop runs (``loop``, else the running one)."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
