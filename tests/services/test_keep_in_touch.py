"""Keeping in touch: contacts see each other online without anyone writing first."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sidedoor.node import Node
from sidedoor.services.keep_in_touch import (
    AFTER_SESSION_LOST,
    BROKER_SPREAD,
    MIN_INTERVAL,
    REGISTERED_RECHECK,
    RETRY_FIRST,
    RETRY_MAX,
    SETTLED,
    ReachPlan,
)
from sidedoor.testing.nodes import befriend, eventually

NodeFactory = Callable[..., Awaitable[Node]]

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


# ------------------------------------------------------------------ the plan
def test_plan_tries_everyone_at_once_then_backs_off_to_a_cap() -> None:
    plan = ReachPlan()
    assert sorted(plan.due([A, B], now=0.0)) == [A, B]
    assert plan.due([A, B], now=0.0) == []  # being tried: not twice at once
    plan.failed(A, now=1.0)
    plan.connected(B, now=1.0)
    assert plan.next_at() == 1.0 + RETRY_FIRST
    assert plan.due([A], now=RETRY_FIRST) == []
    assert plan.due([A], now=1.0 + RETRY_FIRST) == [A]
    pauses = []
    now = 1.0 + RETRY_FIRST
    for _ in range(12):
        plan.failed(A, now)
        at = plan.next_at()
        assert at is not None
        pauses.append(at - now)
        now = at
        assert plan.due([A], now) == [A]
    assert pauses[0] == 2 * RETRY_FIRST
    assert pauses == sorted(pauses) and pauses[-1] == RETRY_MAX


def test_plan_a_settled_session_lost_is_retried_soon_a_short_one_backs_off() -> None:
    plan = ReachPlan()
    plan.due([A, B], now=0.0)
    plan.connected(A, now=0.0)
    plan.connected(B, now=0.0)
    plan.lost(A, now=SETTLED)  # lived a minute: a blip or a departure, look again soon
    assert plan.due([A], now=SETTLED + AFTER_SESSION_LOST) == [A]
    # B turns us away at once, every time (it blocked or removed us): pauses grow.
    now, pauses = 0.0, []
    for _ in range(5):
        plan.lost(B, now + 1.0)
        at = plan.next_at() if not plan.due([B], now + 1.0) else now + 1.0
        assert at is not None
        pauses.append(at - (now + 1.0))
        now = at
        assert plan.due([B], now) == [B]
        plan.connected(B, now)
    assert pauses[0] >= RETRY_FIRST and pauses == sorted(pauses) and pauses[-1] > pauses[0]


def test_plan_soon_spreads_and_respects_the_minimum_interval() -> None:
    plan = ReachPlan(draw=lambda: 0.5)
    plan.due([A, B], now=0.0)
    plan.failed(A, 0.0)
    plan.failed(B, 0.0)
    plan.soon(1.0, [A])  # A appeared on the LAN a second after we tried it
    assert plan.due([A, B], now=MIN_INTERVAL - 0.1) == []
    assert plan.due([A, B], now=MIN_INTERVAL) == [A]
    plan.soon(30.0, spread=BROKER_SPREAD)  # a broker registered us: everyone, spread
    assert plan.due([B], now=30.0) == []  # (B's own retry is at RETRY_FIRST)
    assert plan.due([B], now=30.0 + BROKER_SPREAD / 2) == [B]


def test_plan_registered_contacts_are_rechecked_by_lookup_and_forget() -> None:
    plan = ReachPlan()
    assert plan.due([C], now=0.0) == [C]
    assert plan.trying(C) and not plan.lookup_only(C)
    plan.registered(C, now=10.0)  # no direct path, but a broker has it registered
    assert not plan.trying(C) and plan.lookup_only(C)
    assert plan.due([C], now=10.0 + REGISTERED_RECHECK - 1) == []
    assert plan.due([C], now=10.0 + REGISTERED_RECHECK) == [C]
    plan.soon(200.0, [C])  # it appeared nearby: dial it, not only ask
    assert not plan.lookup_only(C)
    plan.failed(C, 300.0)
    plan.forget(set())  # no longer a contact
    assert plan.next_at() is None
    assert plan.due([C], now=301.0) == [C]  # a contact again: at once


# ---------------------------------------------------------------- real nodes
async def test_contacts_started_later_see_each_other_online_without_writing(
        node_factory: NodeFactory) -> None:
    alice, bob = await node_factory(), await node_factory()
    await befriend(alice, bob)
    homes = alice.home, bob.home
    await alice.aclose()
    await bob.aclose()
    bob = await node_factory(home=homes[1])
    alice = await node_factory(home=homes[0])
    await eventually(lambda: alice.presence.state_of(bob.public.key) == "online"
                     and bob.presence.state_of(alice.public.key) == "online",
                     timeout=10, what="both online with no message sent")


async def test_a_contact_coming_back_is_seen_at_once(node_factory: NodeFactory) -> None:
    alice, bob = await node_factory(), await node_factory()
    await befriend(alice, bob)
    home = bob.home
    await bob.aclose()
    await eventually(lambda: alice.presence.state_of(bob.public.key) == "offline",
                     what="Bob offline")
    # Alice tries Bob a few seconds after the session drops and fails: her next try is a
    # minute away, so Bob being seen well before then is Bob's own doing.
    await asyncio.sleep(AFTER_SESSION_LOST + 1)
    seen = alice.events.subscribe()
    bob = await node_factory(home=home)
    await eventually(lambda: alice.presence.state_of(bob.public.key) == "online",
                     timeout=5, what="Bob back online")
    kinds = []
    while not seen.empty():
        event = seen.get_nowait()
        if event is not None:
            kinds.append((event["type"], event.get("direction")))
    assert ("session.opened", "in") in kinds  # Bob reached Alice, not the other way


async def test_blocked_contacts_and_strangers_are_not_reached(
        node_factory: NodeFactory) -> None:
    alice, bob, carol = await node_factory(), await node_factory(), await node_factory()
    await befriend(alice, bob)
    await befriend(alice, carol)
    assert alice.db is not None and alice.contacts is not None
    await alice.db.run(alice.contacts.set_flag, carol.public.key, "blocked", True)
    alice.set_standing(carol.public.key, "blocked")
    homes = alice.home, bob.home
    for node in (alice, bob, carol):
        await node.aclose()
    carol = await node_factory(home=carol.home, keep_in_touch=False)
    dave = await node_factory()  # never met
    seen_by_carol, seen_by_dave = carol.events.subscribe(), dave.events.subscribe()
    bob = await node_factory(home=homes[1], keep_in_touch=False)
    alice = await node_factory(home=homes[0])
    await eventually(lambda: alice.presence.state_of(bob.public.key) == "online",
                     what="Bob, a contact, reached")
    await asyncio.sleep(1.0)
    for queue in (seen_by_carol, seen_by_dave):
        while not queue.empty():
            event = queue.get_nowait()
            assert event is None or event["type"] != "session.opened", event


async def test_off_means_no_session(node_factory: NodeFactory) -> None:
    alice, bob = await node_factory(), await node_factory()
    await befriend(alice, bob)
    homes = alice.home, bob.home
    await alice.aclose()
    await bob.aclose()
    bob = await node_factory(home=homes[1], keep_in_touch=False)
    alice = await node_factory(home=homes[0], keep_in_touch=False)
    await asyncio.sleep(2.0)  # longer than the first pass would wait
    assert alice.presence.state_of(bob.public.key) == "offline"
    assert not alice.sessions and not bob.sessions
