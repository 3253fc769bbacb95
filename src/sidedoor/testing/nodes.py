"""Helpers for tests and benchmarks that run several nodes in one process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sidedoor.node import Node


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
