"""A broker registration is a moment to reach contacts again (they may be behind NAT)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sidedoor.broker.server import BrokerServer
from sidedoor.node import Node
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
