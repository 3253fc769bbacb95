"""Node.reach: a session with a contact by whatever path is known, raced."""

from __future__ import annotations

import asyncio
import socket

import pytest

from sidedoor.errors import ConnectError
from sidedoor.node import Node
from sidedoor.testing.nodes import befriend


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_reach_reuses_the_live_session(node_factory) -> None:  # type: ignore[no-untyped-def]
    a: Node = await node_factory()
    b: Node = await node_factory()
    await befriend(a, b)
    first = await a.reach(b.public.key)
    assert await a.reach(b.public.key) is first


async def test_reach_races_past_dead_addresses(node_factory) -> None:  # type: ignore[no-untyped-def]
    a: Node = await node_factory(keep_in_touch=False)  # the test chooses the path
    b: Node = await node_factory(keep_in_touch=False)
    await befriend(a, b)
    for conn in list(a.sessions):
        await conn.aclose("start over")
    await asyncio.sleep(0.05)
    assert f"127.0.0.1:{b.port}" in await a.known_addrs(b.public.key)
    seen: list[str] = []
    a.add_session_listener(lambda info: seen.append(info.remote.address))
    # A dead port first: the race moves on to the next candidate and the live one wins.
    conn = await a._race(b.public, [f"127.0.0.1:{dead_port()}", "nonsense",
                                    f"127.0.0.1:{b.port}"], timeout=5)
    assert conn.is_open and conn.remote_identity == b.public.key
    assert seen == [b.public.address]
    assert a.session_with(b.public.key) is conn


async def test_reach_reports_every_failed_path(node_factory) -> None:  # type: ignore[no-untyped-def]
    a: Node = await node_factory()
    b: Node = await node_factory()
    port = dead_port()
    with pytest.raises(ConnectError) as info:
        await a._race(b.public, [f"127.0.0.1:{port}"], timeout=2)
    assert f"127.0.0.1:{port}" in str(info.value)


async def test_reach_a_stranger_with_no_address_fails_clearly(node_factory) -> None:  # type: ignore[no-untyped-def]
    a: Node = await node_factory()
    b: Node = await node_factory()
    with pytest.raises(ConnectError, match="no known way"):
        await a.reach(b.public.key, timeout=2)


async def test_a_second_node_cannot_take_a_port_in_use(node_factory, home_factory) -> None:  # type: ignore[no-untyped-def]
    # Nodes listen with SO_REUSEPORT (dials share the port); that must not let a
    # second node listen on the same port and split the first one's connections.
    a: Node = await node_factory()
    with pytest.raises(Exception, match="already in use"):
        await node_factory(home=home_factory("b"), port=a.port)

