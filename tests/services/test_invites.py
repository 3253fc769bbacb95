"""Invite codes between real nodes on loopback (the LAN lookup is bypassed with `join_at`).

The LAN path itself (mDNS advertisement of the nameplate) is covered in
tests/netlab/test_pairing.py, inside network namespaces.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sidedoor.errors import ContactError, InviteFailed
from sidedoor.invite_codes import InviteCode, make_code
from sidedoor.net.connection import ChannelClosedError
from sidedoor.services.invites import PendingInvite

HOST = "127.0.0.1"


def open_invite(node: Any, code: InviteCode, ttl: float = 600.0) -> None:
    node.invites.pending[code.nameplate] = PendingInvite(code, time.time() + ttl)


def other_code(code: InviteCode) -> InviteCode:
    first, second = code.words
    return InviteCode(code.nameplate, (first, "zebra" if second != "zebra" else "acorn"))


async def test_right_code_makes_verified_contacts(node_factory: Any) -> None:
    alice, bob = await node_factory(), await node_factory()
    await alice.set_name("Alice")
    await bob.set_name("Bob")
    code = make_code(bytes([0, 7, 1, 2]))
    open_invite(alice, code)
    contact = await bob.invites.join_at(code, alice.public, [f"{HOST}:{alice.port}"])
    assert contact.petname == "Alice" and contact.verified and contact.source == "invite"
    # Alice finishes when Bob's last message reaches her, a moment after Bob is done.
    for _ in range(100):
        if alice.standing(bob.public.key) == "contact":
            break
        await asyncio.sleep(0.02)
    assert alice.standing(bob.public.key) == "contact"
    assert bob.standing(alice.public.key) == "contact"
    assert code.nameplate not in alice.invites.pending


async def test_wrong_code_fails_both_sides_and_burns_the_code(node_factory: Any) -> None:
    alice, bob = await node_factory(), await node_factory()
    code = make_code(bytes([0, 9, 3, 4]))
    open_invite(alice, code)
    events = alice.events.subscribe()
    with pytest.raises(InviteFailed, match="did not match"):
        await bob.invites.join_at(other_code(code), alice.public, [f"{HOST}:{alice.port}"])
    seen = [await events.get() for _ in range(events.qsize())]
    failed = [e for e in seen if e and e["type"] == "invite.failed"]
    assert failed and failed[0]["nameplate"] == code.nameplate
    # Burned: the right code no longer works, and nobody became a contact.
    with pytest.raises(ChannelClosedError, match="expired or was already used"):
        await bob.invites.join_at(code, alice.public, [f"{HOST}:{alice.port}"])
    assert alice.standing(bob.public.key) == "stranger"
    assert bob.standing(alice.public.key) == "stranger"


async def test_a_third_node_guessing_burns_the_code_for_everyone(node_factory: Any) -> None:
    alice, bob, mallory = await node_factory(), await node_factory(), await node_factory()
    code = make_code(bytes([1, 0, 5, 6]))
    open_invite(alice, code)
    with pytest.raises(InviteFailed):
        await mallory.invites.join_at(other_code(code), alice.public, [f"{HOST}:{alice.port}"])
    with pytest.raises(ChannelClosedError):
        await bob.invites.join_at(code, alice.public, [f"{HOST}:{alice.port}"])
    assert alice.standing(mallory.public.key) == "stranger"
    assert alice.standing(bob.public.key) == "stranger"


async def test_expired_code_is_refused(node_factory: Any) -> None:
    alice, bob = await node_factory(), await node_factory()
    code = make_code(bytes([0, 3, 9, 9]))
    open_invite(alice, code, ttl=-1)
    with pytest.raises(ChannelClosedError, match="expired or was already used"):
        await bob.invites.join_at(code, alice.public, [f"{HOST}:{alice.port}"])
    assert alice.standing(bob.public.key) == "stranger"


async def test_reused_code_is_refused(node_factory: Any) -> None:
    alice, bob, carol = await node_factory(), await node_factory(), await node_factory()
    code = make_code(bytes([0, 4, 8, 8]))
    open_invite(alice, code)
    await bob.invites.join_at(code, alice.public, [f"{HOST}:{alice.port}"])
    with pytest.raises(ChannelClosedError):
        await carol.invites.join_at(code, alice.public, [f"{HOST}:{alice.port}"])
    assert alice.standing(carol.public.key) == "stranger"


async def test_without_discovery_codes_explain_the_alternative(node_factory: Any) -> None:
    alice = await node_factory()
    with pytest.raises(ContactError, match="invite --link"):
        await alice.invites.create()
    with pytest.raises(ContactError, match="discovery is off"):
        await alice.invites.join("7-guitar-orbit", 0.1)


async def test_own_invite_is_refused(node_factory: Any) -> None:
    alice = await node_factory()
    code = make_code(bytes([0, 2, 2, 2]))
    open_invite(alice, code)
    with pytest.raises(ContactError, match="your own invite"):
        await alice.invites.join_at(code, alice.public, [f"{HOST}:{alice.port}"])
