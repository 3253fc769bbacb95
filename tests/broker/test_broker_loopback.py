"""A real broker and real nodes on loopback: registration, lookup policy, relay, mailbox."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest

from sidedoor.broker.server import BrokerServer
from sidedoor.cards import open_card as read_card
from sidedoor.errors import BrokerError
from sidedoor.identity import PublicIdentity
from sidedoor.net.broker_client import BrokerLink
from sidedoor.node import Node
from sidedoor.proto import broker as wire
from sidedoor.testing.nodes import befriend, eventually


async def registered(node: Node, broker: BrokerServer) -> BrokerLink:
    link = await node.add_broker(broker.url())
    await asyncio.wait_for(link.registered.wait(), 10)
    return link



async def test_a_node_registers_and_sees_its_observed_address(node_factory, broker) -> None:  # type: ignore[no-untyped-def]
    a: Node = await node_factory()
    link = await registered(a, broker)
    # The session leaves from the node's listening port: the broker sees that port.
    assert link.observed == f"127.0.0.1:{a.port}"
    assert a.public.key in broker.state.registrations
    status = a.status()["brokers"][0]
    assert status["state"] == "registered" and status["url"] == broker.url()
    assert status["nat"] == "none"
    assert broker.url() in read_card(a.my_card()).brokers


async def test_lookup_answers_contacts_only_with_addresses(node_factory, broker) -> None:  # type: ignore[no-untyped-def]
    a: Node = await node_factory()
    b: Node = await node_factory()
    c: Node = await node_factory()
    await befriend(a, b)
    link_a = await registered(a, broker)
    await registered(b, broker)
    link_c = await registered(c, broker)
    found = await link_a.request(lambda rid: wire.Lookup(rid, b.public.key))
    assert isinstance(found, wire.Found) and found.observed == f"127.0.0.1:{b.port}"
    # C is a stranger to B: it learns that B is reachable for an introduction, not where.
    hidden = await link_c.request(lambda rid: wire.Lookup(rid, b.public.key))
    assert isinstance(hidden, wire.Found)
    assert hidden.listen_addrs == [] and hidden.observed == ""
    with pytest.raises(BrokerError, match="not registered"):
        await link_a.request(lambda rid: wire.Lookup(rid, os.urandom(32)))


async def test_relay_carries_an_end_to_end_session_as_ciphertext(node_factory,  # type: ignore[no-untyped-def]
                                                                  broker_factory) -> None:
    seen = bytearray()
    broker: BrokerServer = await broker_factory(tap=seen.extend)
    # No background reaching: the test chooses the path.
    a: Node = await node_factory(keep_in_touch=False)
    b: Node = await node_factory(keep_in_touch=False)
    await befriend(a, b)
    for conn in [*a.sessions, *b.sessions]:
        conn.close("start over")
    link = await registered(a, broker)
    await registered(b, broker)
    got: list[bytes] = []

    async def echo(remote: PublicIdentity, stream: Any) -> None:
        got.append(await stream.read_all(1 << 20))

    b.add_channel_handler("test-echo", echo)
    conn = await link.relay(b.public, timeout=10)
    assert conn.via == "relayed"
    assert a.session_with(b.public.key) is conn
    secret = b"the plaintext the broker must never see " * 100
    stream = await conn.open_channel("test-echo")
    await stream.write(secret)
    stream.end()
    await eventually(lambda: got)
    assert got == [secret]
    assert broker.metrics.relays_started == 1 and len(seen) > len(secret)
    assert b"plaintext the broker" not in seen
    info = next(i for i in b.sessions.values() if i.remote == a.public)
    assert info.path == "relayed"
    # Both ends close: the relay is over at once, not at its idle timeout.
    conn.close("done")
    await eventually(lambda: broker.metrics.relays_active == 0, timeout=5,
                     what="the relay to end when both ends have closed")


async def test_a_relay_token_works_once_and_garbage_is_dropped(node_factory, broker) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    for junk in (b"GET / HTTP/1.1\r\n\r\n", wire.RELAY_PREAMBLE + os.urandom(16)):
        sock = socket.create_connection(("127.0.0.1", broker.port))
        sock.setblocking(False)
        await loop.sock_sendall(sock, junk)
        assert await asyncio.wait_for(loop.sock_recv(sock, 10), 5) == b""
        sock.close()
    # The broker is still there for everyone else.
    a: Node = await node_factory()
    await registered(a, broker)
    assert broker.metrics.refused == 2


async def test_an_unregistered_peer_cannot_relay(node_factory, broker) -> None:  # type: ignore[no-untyped-def]
    a: Node = await node_factory()
    b: Node = await node_factory()
    await befriend(a, b)
    await registered(b, broker)
    link = await registered(a, broker)
    broker.state.unregister(a.public.key)
    with pytest.raises(BrokerError, match="register first"):
        await link.request(lambda rid: wire.RelayRequest(rid, b.public.key))


async def test_mail_waits_for_an_offline_contact_and_is_delivered_once(  # type: ignore[no-untyped-def]
        node_factory, broker_factory, home_factory) -> None:
    broker: BrokerServer = await broker_factory()
    a: Node = await node_factory()
    b_home = home_factory("bob")
    b: Node = await node_factory(home=b_home)
    await befriend(a, b)
    await registered(a, broker)
    await registered(b, broker)
    await b.aclose()
    await eventually(lambda: b.public.key not in broker.peers)
    assert await a.mail.send(b.public.key, "test", b"hello while you were out")
    assert broker.health()["mailbox_envelopes"] == 1
    # Bob comes back: the envelope is handed to the service, then deleted at the broker.
    b2 = Node(b_home, host="127.0.0.1")
    got: list[tuple[str, bytes]] = []

    async def handler(sender: PublicIdentity, payload: bytes) -> None:
        got.append((sender.address, payload))

    b2.mail.add_handler("test", handler)
    await b2.start()
    try:
        await eventually(lambda: got and broker.health()["mailbox_envelopes"] == 0)
        assert got == [(a.public.address, b"hello while you were out")]
    finally:
        await b2.aclose()


async def test_mail_from_a_stranger_is_refused_at_the_broker(node_factory, broker) -> None:  # type: ignore[no-untyped-def]
    a: Node = await node_factory()
    b: Node = await node_factory()
    link_a = await registered(a, broker)
    await registered(b, broker)
    with pytest.raises(BrokerError, match="does not take mail"):
        await link_a.request(lambda rid: wire.Deposit(rid, b.public.key, b"x" * 100))


async def test_a_flood_of_requests_cuts_the_flooder_off_only(node_factory, broker) -> None:  # type: ignore[no-untyped-def]
    a: Node = await node_factory()
    b: Node = await node_factory()
    link_a = await registered(a, broker)
    link_b = await registered(b, broker)
    for _ in range(6000):
        await link_a.send(wire.Ping(10_000))
    await eventually(lambda: a.public.key not in broker.peers)
    pong = await link_b.request(lambda rid: wire.Ping(rid))
    assert isinstance(pong, wire.Pong)


async def test_an_invite_code_meets_at_the_broker(node_factory, broker) -> None:  # type: ignore[no-untyped-def]
    # Loopback nodes have no LAN discovery: the broker is the only meeting point.
    a: Node = await node_factory()
    b: Node = await node_factory()
    await registered(a, broker)
    await registered(b, broker)
    invite = await a.invites.create()
    assert invite.code.nameplate in broker.state.nameplates
    contact = await b.invites.join(str(invite.code))
    assert contact.identity == a.public.key
    await eventually(lambda: a.standing(b.public.key) == "contact")
    # The inviter met the joiner on an incoming session: it keeps the joiner's static
    # key all the same, so mail can be sealed to the new contact at once.
    assert a.db is not None
    for _ in range(50):
        if await a.db.run(a.db.peer_static, b.public.key) is not None:
            break
        await asyncio.sleep(0.02)
    assert await a.db.run(a.db.peer_static, b.public.key) is not None
    # One use per number: a second joiner is told there is no such invite.
    c: Node = await node_factory()
    await registered(c, broker)
    with pytest.raises(Exception, match="no broker of yours has an open invite"):
        await c.invites.join(str(invite.code))


async def test_a_mailbox_flood_hits_the_quota_and_others_still_get_through(  # type: ignore[no-untyped-def]
        node_factory, broker_factory) -> None:
    broker: BrokerServer = await broker_factory(mailbox_quota=(40, 1 << 20))
    bob: Node = await node_factory()
    flooder: Node = await node_factory()
    alice: Node = await node_factory()
    await befriend(bob, flooder)
    await befriend(bob, alice)
    link_f = await registered(flooder, broker)
    link_a = await registered(alice, broker)
    await registered(bob, broker)
    await bob.aclose()
    await eventually(lambda: bob.public.key not in broker.peers)
    refused = 0
    for _ in range(20):
        try:
            await link_f.request(lambda rid: wire.Deposit(rid, bob.public.key, b"x" * 1000))
        except BrokerError as exc:
            assert "full" in str(exc)
            refused += 1
    assert refused == 10  # one sender may fill a quarter of a mailbox
    ok = await link_a.request(lambda rid: wire.Deposit(rid, bob.public.key, b"y" * 1000))
    assert isinstance(ok, wire.Deposited)


async def test_an_oversized_envelope_cuts_the_sender_off(node_factory, broker) -> None:  # type: ignore[no-untyped-def]
    from sidedoor.proto.envelope import MAX_ENVELOPE

    a: Node = await node_factory()
    b: Node = await node_factory()
    await befriend(a, b)
    link = await registered(a, broker)
    await registered(b, broker)
    with pytest.raises(BrokerError):
        await link.request(lambda rid: wire.Deposit(rid, b.public.key,
                                                    b"z" * (MAX_ENVELOPE + 1)))
    await eventually(lambda: a.public.key not in broker.peers or not link.is_registered)
    assert broker.health()["mailbox_envelopes"] == 0
    with pytest.raises(ValueError, match="at most"):
        await a.mail.send(b.public.key, "test", b"z" * (MAX_ENVELOPE + 1))


async def test_a_half_open_relay_is_dropped(node_factory, broker_factory,  # type: ignore[no-untyped-def]
                                            monkeypatch) -> None:
    broker: BrokerServer = await broker_factory(relay_wait=0.6)
    a: Node = await node_factory()
    b: Node = await node_factory()
    await befriend(a, b)
    link = await registered(a, broker)
    link_b = await registered(b, broker)

    async def stay_away(push: wire.RelayIncoming) -> None:
        return None

    # B's node is told to come but does not; A holds its half open alone.
    monkeypatch.setattr(link_b, "_answer_relay", stay_away)
    ready = await link.request(lambda rid: wire.RelayRequest(rid, b.public.key))
    assert isinstance(ready, wire.RelayReady)
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", broker.port))
    sock.setblocking(False)
    try:
        await loop.sock_sendall(sock, wire.RELAY_PREAMBLE + ready.token + b"hello?")
        assert await asyncio.wait_for(loop.sock_recv(sock, 10), 5) == b""
    finally:
        sock.close()


async def test_a_relayed_session_is_upgraded_to_a_direct_one(node_factory, broker) -> None:  # type: ignore[no-untyped-def]
    # No background reaching: the test chooses the path.
    a: Node = await node_factory(keep_in_touch=False)
    b: Node = await node_factory(keep_in_touch=False)
    await befriend(a, b)
    for conn in [*a.sessions, *b.sessions]:
        conn.close("start over")
    await eventually(lambda: not a.sessions and not b.sessions)
    a.upgrade_interval = b.upgrade_interval = 0.2
    link = await registered(a, broker)
    await registered(b, broker)
    relayed = await link.relay(b.public, timeout=10)
    assert a.sessions[relayed].path == "relayed"
    await eventually(lambda: not relayed.is_open, timeout=15, what="the upgrade")
    direct = a.session_with(b.public.key)
    assert direct is not None and a.sessions[direct].path != "relayed"


async def test_contacts_learn_a_newer_card_when_a_session_opens(node_factory, broker) -> None:  # type: ignore[no-untyped-def]
    a: Node = await node_factory()
    b: Node = await node_factory()
    await befriend(a, b)
    await registered(a, broker)  # A's card now names the broker
    await asyncio.sleep(1.1)  # cards are dated to the second
    for conn in list(a.sessions):
        await conn.aclose("start over")
    await a.reach(b.public.key)
    assert b.db is not None and b.contacts is not None

    async def b_knows() -> bool:
        contact = await b.db.run(b.contacts.get, a.public.key)  # type: ignore[union-attr]
        return contact is not None and broker.url() in contact.card.brokers

    for _ in range(100):
        if await b_knows():
            break
        await asyncio.sleep(0.05)
    assert await b_knows()


async def test_an_idle_relayed_session_is_closed_to_free_the_relay(node_factory, broker) -> None:  # type: ignore[no-untyped-def]
    a: Node = await node_factory(keep_in_touch=False)
    b: Node = await node_factory(keep_in_touch=False)
    await befriend(a, b)
    for conn in [*a.sessions, *b.sessions]:
        conn.close("start over")
    a.relayed_idle_close = b.relayed_idle_close = 2.0
    link = await registered(a, broker)
    await registered(b, broker)
    got: list[bytes] = []

    async def sink(remote: PublicIdentity, stream: Any) -> None:
        got.append(await stream.read_all(1024))

    b.add_channel_handler("test-sink", sink)
    relayed = await link.relay(b.public, timeout=10)
    # Short channels, one after another, longer in all than the idle limit: kept.
    for i in range(10):
        stream = await relayed.open_channel("test-sink")
        await stream.write(b"%d" % i)
        stream.end()
        await asyncio.sleep(0.4)
    assert relayed.is_open and len(got) == 10
    seen = {node: node.events.subscribe() for node in (a, b)}
    await eventually(lambda: not relayed.is_open, timeout=10, what="the idle session closed")
    assert "idle" in (relayed.session.close_reason or "")
    # Both ends were at the broker a moment ago: neither shows the other as gone.
    await eventually(lambda: not a.sessions and not b.sessions, what="both ends closed")
    await asyncio.sleep(0.1)  # the chat service's closed callbacks have run
    for node, other in ((a, b), (b, a)):
        assert node.presence.state_of(other.public.key) == "online"
        changes = []
        while not seen[node].empty():
            event = seen[node].get_nowait()
            if event and event["type"] == "presence.changed":
                changes.append(event["online"])
        assert changes and not any(online is False for online in changes), changes
    await eventually(lambda: broker.metrics.relays_active == 0, what="the relay freed")
