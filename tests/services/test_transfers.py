"""File transfers between real in-process nodes on 127.0.0.1.

Happy paths (a file, a folder, auto-accept, name collisions), resume after the
sender or the receiver stops, queueing for an offline contact, and the bad input
of the issue played by a hand-written peer: each gets a clear error, nothing
outside the destination, and no damaged file under a final name.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidedoor.errors import TransferError
from sidedoor.node import Node
from sidedoor.services.transfers import SETTING_AUTO_ACCEPT
from sidedoor.testing.nodes import befriend

NodeFactory = Callable[..., Any]


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.02)


async def status_of(node: Node, tid: str) -> dict[str, Any]:
    return await node.transfers.describe_one(tid)


async def until_status(node: Node, tid: str, *statuses: str, timeout: float = 10.0
                       ) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        try:
            info = await status_of(node, tid)
        except TransferError:
            return None  # not there yet
        return info if info["status"] in statuses else None
    result: dict[str, Any] = await wait_for(check, timeout)
    return result


def make_file(path: Path, size: int, seed: int = 1, mode: int = 0o640,
              mtime: int = 1_600_000_000) -> bytes:
    data = (seed.to_bytes(4, "big") * (size // 4 + 1))[:size]
    data = bytes(b ^ (i * 7 & 0xFF) for i, b in enumerate(data[:4096])) + data[4096:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime * 10**9 + 123, mtime * 10**9 + 123))
    return data


@pytest.fixture
async def pair(node_factory: NodeFactory) -> tuple[Node, Node]:
    a: Node = await node_factory()
    b: Node = await node_factory()
    await befriend(a, b)
    return a, b


async def test_a_file_offered_accepted_and_arriving_whole(pair: tuple[Node, Node],
                                                          tmp_path: Path) -> None:
    alice, bob = pair
    data = make_file(tmp_path / "src" / "report.pdf", 5 * (1 << 20) + 123)
    sent = await alice.transfers.send([str(tmp_path / "src" / "report.pdf")],
                                      bob.public.address, "Q3 draft")
    tid = sent["id"]
    offer = await until_status(bob, tid, "offered")
    assert offer["direction"] == "in" and offer["note"] == "Q3 draft"
    assert offer["names"] == ["report.pdf"] and offer["total_bytes"] == len(data)
    await until_status(alice, tid, "offered")
    dest = tmp_path / "in"
    await bob.transfers.accept(tid[:8], str(dest))
    await until_status(bob, tid, "done")
    done = await until_status(alice, tid, "done")
    got = dest / "report.pdf"
    assert got.read_bytes() == data
    assert got.stat().st_mode & 0o777 == 0o640
    assert got.stat().st_mtime_ns == 1_600_000_000 * 10**9 + 123
    assert sorted(p.name for p in dest.iterdir()) == ["report.pdf"]
    assert done["bytes_sent"] == len(data)
