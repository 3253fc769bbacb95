"""Presence between real in-process nodes: away and back, typing, and peers that misbehave."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sidedoor.errors import SidedoorError
from sidedoor.net.connection import ChannelClosedError
from sidedoor.node import Node
from sidedoor.proto import presence as wire
from sidedoor.testing.nodes import befriend, eventually, loopback_addrs

NodeFactory = Callable[..., Awaitable[Node]]


async def next_events(queue: asyncio.Queue[dict[str, Any] | None], kind: str,
                      timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            event = await queue.get()
            assert event is not None
            if event["type"] == kind:
                return event


async def pair(node_factory: NodeFactory) -> tuple[Node, Node]:
    alice, bob = await node_factory(), await node_factory()
    await befriend(alice, bob)
    await alice.reach(bob.public.key)
    await eventually(lambda: alice.presence.state_of(bob.public.key) == "online"
                     and bob.presence.state_of(alice.public.key) == "online",
                     what="both online")
    return alice, bob


async def test_away_and_back_reach_contacts_online(node_factory: NodeFactory) -> None:
    alice, bob = await pair(node_factory)
    seen = bob.events.subscribe()
    me = await alice.presence.set_away(True)
    assert me["state"] == "away"
    event = await next_events(seen, "presence.away")
    assert event["address"] == alice.public.address and event["away"] is True
    assert bob.presence.state_of(alice.public.key) == "away"
    await alice.presence.set_away(False)
    event = await next_events(seen, "presence.away")
    assert event["away"] is False
    assert bob.presence.state_of(alice.public.key) == "online"


async def test_away_is_kept_across_restarts_and_told_when_a_session_opens(
        node_factory: NodeFactory) -> None:
    alice, bob = await pair(node_factory)
    home = alice.home
    await alice.presence.set_away(True)
    await eventually(lambda: bob.presence.is_away(alice.public.key), what="away told")
    await alice.aclose()
    await eventually(lambda: bob.presence.state_of(alice.public.key) == "offline",
                     what="offline once the session is gone")
    again = await node_factory(home=home)
    assert again.presence.describe_me()["state"] == "away"
    bob.presence.statuses.clear()  # as if Bob had restarted too
    await again.reach(bob.public.key, addrs=loopback_addrs(bob))
    await eventually(lambda: bob.presence.state_of(again.public.key) == "away",
                     what="away told as the new session opened")


async def test_typing_reaches_the_contact_and_is_throttled(node_factory: NodeFactory) -> None:
    alice, bob = await pair(node_factory)
    seen = bob.events.subscribe()
    assert await alice.presence.typing(bob.public.key) == 1
    assert await alice.presence.typing(bob.public.key) == 0  # within TYPING_EVERY
    event = await next_events(seen, "chat.typing")
    assert event["conversation"] == alice.public.key.hex()
    assert event["address"] == alice.public.address


async def test_typing_in_a_room_goes_to_members_online_and_only_shows_for_members(
        node_factory: NodeFactory) -> None:
    alice, bob = await pair(node_factory)
    carol = await node_factory()
    await befriend(alice, carol)
    await befriend(bob, carol)
    room = await alice.chat.create_room("eng", [bob.public.key])
    rid = room.state.room
    await eventually(lambda: rid in bob.chat.rooms, what="Bob in the room")
    seen = bob.events.subscribe()
    assert await alice.presence.typing(rid) == 1
    event = await next_events(seen, "chat.typing")
    assert event["conversation"] == rid.hex()
    # Carol is not in the room: her typing "in it" shows nowhere.
    conn = await carol.reach(bob.public.key)
    stream = await conn.open_channel(wire.KIND, wire.encode(wire.Typing(rid)))
    stream.end()
    await asyncio.sleep(0.3)
    assert seen.empty()


async def test_garbage_and_floods_are_dropped_without_harm(node_factory: NodeFactory) -> None:
    alice, bob = await pair(node_factory)
    seen = bob.events.subscribe()
    conn = await alice.reach(bob.public.key)
    stream = await conn.open_channel(wire.KIND, b"\xc1not a signal")
    with pytest.raises(ChannelClosedError):
        await stream.read_all(1024, timeout=5)  # Bob resets it
    for _ in range(200):
        s = await conn.open_channel(wire.KIND, wire.encode(wire.Typing()))
        s.end()
    await asyncio.sleep(0.5)
    typing = []
    while not seen.empty():
        event = seen.get_nowait()
        if event is not None and event["type"] == "chat.typing":
            typing.append(event)
    assert len(typing) == 1  # the limiter let one through
    # The session and the node are fine: a message still goes through.
    assert conn.is_open
    await alice.chat.send(bob.public.key, "still here")
    got = await next_events(seen, "chat.message")
    assert got["message"]["text"] == "still here"


async def test_strangers_cannot_send_presence(node_factory: NodeFactory) -> None:
    _, bob = await pair(node_factory)
    mallory = await node_factory()
    conn = await mallory.connect(bob.public, "127.0.0.1", bob.port)
    with pytest.raises(SidedoorError):
        stream = await conn.open_channel(wire.KIND, wire.encode(wire.Status("away", 1)))
        await stream.read_all(1024, timeout=5)
    assert mallory.public.key not in bob.presence.statuses
