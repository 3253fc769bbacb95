"""Happy eyeballs for sessions: start candidate paths one after another, keep the first
that authenticates, close the others.

Each attempt has a start delay; an attempt also starts early as soon as every attempt
started before it has failed, so a dead path never costs its whole stagger.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sidedoor.errors import ConnectError
from sidedoor.net.connection import Connection


@dataclass(frozen=True)
class Attempt:
    label: str
    start_after: float
    run: Callable[[], Awaitable[Connection]]


async def race(attempts: list[Attempt], timeout: float, what: str) -> Connection:
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + timeout
    waiting = sorted(attempts, key=lambda a: a.start_after)
    running: dict[asyncio.Future[Connection], str] = {}
    errors: list[str] = []
    winner: Connection | None = None
    try:
        while winner is None and (waiting or running):
            now = loop.time()
            while waiting and (waiting[0].start_after <= now - start or not running):
                attempt = waiting.pop(0)
                running[asyncio.ensure_future(attempt.run())] = attempt.label
            if now >= deadline:
                break
            wake = deadline - now
            if waiting:
                wake = min(wake, max(0.0, start + waiting[0].start_after - now))
            done, _ = await asyncio.wait(running, timeout=wake,
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                label = running.pop(task)
                exc = task.exception()
                if exc is not None:
                    errors.append(f"{label}: {exc}")
                elif winner is None:
                    winner = task.result()
                else:
                    task.result().close("a faster path won")
    finally:
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(BaseException):
                conn = await task
                if winner is None:
                    winner = conn
                else:
                    conn.close("a faster path won")
    if winner is not None:
        return winner
    if not errors:
        errors.append(f"no path answered within {timeout:g} s")
    raise ConnectError(f"cannot reach {what}: " + "; ".join(errors))
