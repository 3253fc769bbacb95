"""Helpers for tests and benchmarks that run several nodes in one process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from sidedoor.node import Node

T = TypeVar("T")


def loopback_addrs(node: Node) -> list[str]:
    return [f"127.0.0.1:{node.port}"]


async def befriend(a: Node, b: Node) -> None:
    """B asks A, A accepts: afterwards each is the other's contact (as after `join`)."""
    status, _ = await b.introductions.send_request(a.public, loopback_addrs(a))
    if status != "queued":
        raise AssertionError(f"the request was not queued: {status}")
    assert a.db is not None and a.contacts is not None
    requests = await a.db.run(a.contacts.requests, "in")
    (request,) = [r for r in requests if r.identity == b.public.key]
    await a.introductions.accept(request.id)
    if not a.standing(b.public.key) == b.standing(a.public.key) == "contact":
        raise AssertionError("befriend: the two nodes are not contacts both ways")


async def eventually(check: Callable[[], object], timeout: float = 10.0,
                     interval: float = 0.02, what: str = "the condition") -> None:
    """Return once ``check()`` is true; fail with AssertionError after ``timeout`` s."""
    for _ in range(max(1, int(timeout / interval))):
        if check():
            return
        await asyncio.sleep(interval)
    if not check():
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def wait_until(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.1,
               what: str = "the condition") -> T:
    """`eventually` for tests that drive processes: block until ``check()`` returns a
    true value and return it; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
