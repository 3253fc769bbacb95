"""Keep-in-touch with a broker: registration as a moment to reach contacts, and contacts who
turn us away; a room caught up through the relay when no member is reachable directly."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from sidedoor.broker.server import BrokerServer
from sidedoor.node import Node
from sidedoor.services import keep_in_touch
from sidedoor.services.keep_in_touch import FIRST_PASS, RETRY_FIRST
from sidedoor.testing.nodes import befriend, eventually

NodeFactory = Callable[..., Awaitable[Node]]


async def test_registering_with_a_broker_retries_contacts_at_once(
        node_factory: NodeFactory, broker: BrokerServer) -> None:
    alice, bob = await node_factory(), await node_factory()
    await befriend(alice, bob)
    homes = alice.home, bob.home
    await alice.aclose()
    await bob.aclose()
    alice = await node_factory(home=homes[0])
    # Bob is down at Alice's first pass, so her next try is RETRY_FIRST s away.
    await asyncio.sleep(2 * FIRST_PASS + 1.0)
    assert alice.keep_in_touch.plan.next_at() is not None
    bob = await node_factory(home=homes[1], keep_in_touch=False)
    await asyncio.sleep(0.5)
    assert alice.presence.state_of(bob.public.key) == "offline"
    link = await alice.add_broker(broker.url())
    await asyncio.wait_for(link.registered.wait(), 10)
    await eventually(lambda: alice.presence.state_of(bob.public.key) == "online",
                     timeout=RETRY_FIRST / 4, what="Bob reached after the registration")


async def test_a_contact_who_blocked_us_is_not_shown_online_nor_dialled_in_a_loop(
        node_factory: NodeFactory, broker: BrokerServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Shortened pauses: a loop would show as dozens of sessions in a few seconds.
    for name, value in (("FIRST_PASS", 0.05), ("RETRY_FIRST", 0.4),
                        ("AFTER_SESSION_LOST", 0.05), ("MIN_INTERVAL", 0.05)):
        monkeypatch.setattr(keep_in_touch, name, value)
    alice = await node_factory()
    bob = await node_factory(keep_in_touch=False)
    await befriend(alice, bob)
    for node in (alice, bob):
        link = await node.add_broker(broker.url())
        await asyncio.wait_for(link.registered.wait(), 10)
    assert bob.db is not None and bob.contacts is not None
    seen = alice.events.subscribe()
    await bob.db.run(bob.contacts.set_flag, alice.public.key, "blocked", True)
    bob.set_standing(alice.public.key, "blocked")  # closes the session, tells the broker
    await asyncio.sleep(4.0)
    opened = 0
    while not seen.empty():
        event = seen.get_nowait()
        if event and event["type"] == "session.opened" and event["address"] == bob.public.address:
            opened += 1
    assert opened <= 5, f"{opened} sessions in 4 s: Alice dials Bob in a loop"
    assert alice.presence.state_of(bob.public.key) == "offline"
    assert not alice.presence.seen_at_broker(bob.public.key)


async def test_a_room_catches_up_through_the_relay_when_no_member_is_reachable_directly(
        node_factory: NodeFactory, broker: BrokerServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keep_in_touch, "BROKER_SPREAD", 0.1)
    alice = await node_factory(keep_in_touch=False)
    bob = await node_factory(keep_in_touch=False)
    carol = await node_factory()
    for one, other in ((alice, bob), (alice, carol), (bob, carol)):
        await befriend(one, other)
    rid = (await alice.chat.create_room("eng", [bob.public.key, carol.public.key])).state.room
    await eventually(lambda: rid in bob.chat.rooms and rid in carol.chat.rooms,
                     what="everyone in the room")
    carol_home = carol.home
    await carol.aclose()
    # No broker yet: nothing goes to Carol's mailbox, and Alice leaves before Carol is
    # back, so only Bob has what Carol missed; and Bob owes Carol nothing himself.
    for text in ("one", "two"):
        await alice.chat.send(rid, text)
    assert bob.db is not None

    async def bob_has_both() -> bool:
        assert bob.db is not None
        return len(await bob.db.run(bob.chat.store.history, rid)) == 2

    for _ in range(200):
        if await bob_has_both():
            break
        await asyncio.sleep(0.05)
    assert await bob_has_both()
    await alice.aclose()
    # Bob takes no connection, as behind a NAT that defeats hole punching; a broker
    # has him.
    await asyncio.wait_for((await bob.add_broker(broker.url())).registered.wait(), 10)
    assert bob._server is not None
    bob._server.close()
    carol = await node_factory(home=carol_home)
    await asyncio.wait_for((await carol.add_broker(broker.url())).registered.wait(), 10)
    assert carol.db is not None
    texts: list[str] = []
    for _ in range(300):
        texts = [m.text for m in await carol.db.run(carol.chat.store.history, rid)]
        if len(texts) == 2:
            break
        await asyncio.sleep(0.05)
    assert texts == ["one", "two"]
    conn = carol.session_with(bob.public.key)
    assert conn is not None and carol.sessions[conn].path == "relayed"
