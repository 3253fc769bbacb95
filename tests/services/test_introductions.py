"""Introductions between real nodes on 127.0.0.1: requests, acceptance, links, refusals.

Every node here is in process (`node_factory`), listens on 127.0.0.1 and runs no
discovery. Where a test plays a misbehaving peer it uses a real node's connection
and opens the introduction channels by hand, with the bytes it wants to send.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Callable

import msgspec
import pytest

from sidedoor.cards import SignedCard, card_from_text, card_to_text, make_card, open_card
from sidedoor.errors import ConnectError, ContactError, NotAllowed, SidedoorError
from sidedoor.identity import Identity, PublicIdentity, SignatureDomain
from sidedoor.net.connection import ChannelClosedError, ChannelStream, Connection
from sidedoor.node import MAX_STRANGER_CHANNELS, Node
from sidedoor.proto import introductions as wire
from sidedoor.services.introductions import (
    REQUESTS_PER_WINDOW,
    RateLimiter,
    make_link,
    parse_link,
)

TEST_KIND = "test-echo"


def addrs(node: Node) -> list[str]:
    return [f"127.0.0.1:{node.port}"]


async def named(node_factory: Callable[..., object], name: str) -> Node:
    node = await node_factory()  # type: ignore[misc]
    assert isinstance(node, Node)
    await node.set_name(name)
    return node


async def echo(remote: PublicIdentity, stream: ChannelStream) -> None:
    await stream.write(b"echo:" + await stream.read_all(1024))
    stream.end()


async def echo_works(conn: Connection) -> bytes:
    stream = await conn.open_channel(TEST_KIND, timeout=5)
    await stream.write(b"hello")
    stream.end()
    return await stream.read_all(1024)


async def raw_request(conn: Connection, meta: bytes) -> ChannelStream:
    return await conn.open_channel(wire.KIND_REQUEST, meta, timeout=5)


async def reply_of(stream: ChannelStream) -> wire.Reply:
    return wire.decode(wire.Reply, await stream.read_all(wire.MAX_REPLY_LEN))


async def slow_echo(remote: PublicIdentity, stream: ChannelStream) -> None:
    await asyncio.sleep(0.5)
    await stream.write(b"ok")
    stream.end()


async def was_reset(stream: ChannelStream) -> None:
    """The peer reset the channel without an answer: reading says so, it is no clean end."""
    with pytest.raises(ChannelClosedError, match="closed"):
        await stream.read_all(wire.MAX_REPLY_LEN)
    with pytest.raises(ChannelClosedError):
        await stream.write(b"x")  # a reset channel takes nothing more; an ended one would


async def incoming(node: Node) -> list[tuple[bytes, str]]:
    assert node.db is not None and node.contacts is not None
    return [(r.identity, r.message) for r in await node.db.run(node.contacts.requests, "in")]


async def befriend(a: Node, b: Node) -> None:
    """B asks A, A accepts: contacts both ways."""
    status, _ = await b.introductions.send_request(a.public, addrs(a))
    assert status == "queued"
    assert a.db is not None and a.contacts is not None
    (request,) = await a.db.run(a.contacts.requests, "in")
    _, told = await a.introductions.accept(request.id)
    assert told is True
    assert a.standing(b.public.key) == b.standing(a.public.key) == "contact"


async def set_blocked(node: Node, other: Node, blocked: bool) -> None:
    """What `sidedoor contact block/unblock` does."""
    assert node.db is not None and node.contacts is not None
    await node.db.run(node.contacts.set_flag, other.public.key, "blocked", blocked)
    node.set_standing(other.public.key, "blocked" if blocked else "contact")


async def remove(node: Node, other: Node) -> None:
    """What `sidedoor contact remove` does."""
    assert node.db is not None and node.contacts is not None
    await node.db.run(node.contacts.remove, other.public.key)
    node.set_standing(other.public.key, "stranger")


# ------------------------------------------------------------ request, accept

async def test_request_then_accept(node_factory) -> None:
    a = await named(node_factory, "Ann")
    b = await named(node_factory, "Bob")
    events = a.events.subscribe()
    status, name = await b.introductions.send_request(a.public, addrs(a), message="hi, it's Bob")
    assert (status, name) == ("queued", "Ann")
    assert a.contacts is not None and b.contacts is not None

    (request,) = a.contacts.requests("in")
    assert request.identity == b.public.key and request.card.name == "Bob"
    assert request.card.addrs == addrs(b) and request.message == "hi, it's Bob"
    assert request.via == "nearby"
    assert a.contacts.requests("out") == []
    (sent,) = b.contacts.requests("out")
    assert sent.identity == a.public.key and sent.card.name == "Ann"
    assert sent.message == "hi, it's Bob"
    assert b.contacts.requests("in") == []
    seen = [events.get_nowait() for _ in range(events.qsize())]
    (event,) = [e for e in seen if e is not None and e["type"] == "request.received"]
    assert event["name"] == "Bob" and event["id"] == request.id
    assert event["address"] == b.public.address and event["message"] == "hi, it's Bob"
    assert a.standing(b.public.key) == b.standing(a.public.key) == "stranger"

    contact, told = await a.introductions.accept(request.id)
    assert told is True and contact.petname == "Bob" and contact.source == "request"
    assert a.standing(b.public.key) == "contact"
    # B learnt it over the contact-accept channel, before `accept` returned.
    assert b.standing(a.public.key) == "contact"
    b_contact = b.contacts.get(a.public.key)
    assert b_contact is not None and b_contact.petname == "Ann"
    assert a.contacts.requests("in") == [] and b.contacts.requests("out") == []
    assert [s.contact for s in a.sessions.values()] == [True]  # the live session follows

    result = await b.ping(a.public.address, "127.0.0.1", a.port)
    assert result.contact is True
    with pytest.raises(ContactError, match="already contacts"):
        await b.introductions.send_request(a.public, addrs(a))
    with pytest.raises(ContactError, match="no waiting request"):
        await a.introductions.accept(request.id)


async def test_decline(node_factory) -> None:
    a = await named(node_factory, "Ann")
    b = await named(node_factory, "Bob")
    await b.introductions.send_request(a.public, addrs(a), message="hi")
    assert a.contacts is not None
    (request,) = a.contacts.requests("in")
    await a.introductions.decline(request.id)
    assert a.contacts.requests("in") == [] and a.contacts.all() == []
    assert a.standing(b.public.key) == b.standing(a.public.key) == "stranger"
    with pytest.raises(ContactError, match="no request"):
        await a.introductions.decline(request.id)
    with pytest.raises(ContactError, match="no waiting request"):
        await a.introductions.accept(request.id)


async def test_asking_each_other_makes_contacts_at_once(node_factory) -> None:
    a = await named(node_factory, "Ann")
    b = await named(node_factory, "Bob")
    assert (await b.introductions.send_request(a.public, addrs(a)))[0] == "queued"
    status, name = await a.introductions.send_request(b.public, addrs(b))
    assert (status, name) == ("accepted", "Bob")
    assert a.standing(b.public.key) == b.standing(a.public.key) == "contact"
    for node in (a, b):
        assert node.contacts is not None
        assert node.contacts.requests("in") == node.contacts.requests("out") == []


async def test_accepting_someone_offline(node_factory) -> None:
    a = await named(node_factory, "Ann")
    b = await named(node_factory, "Bob")
    await b.introductions.send_request(a.public, addrs(a))
    b_home = b.home
    await b.aclose()
    assert a.contacts is not None
    (request,) = a.contacts.requests("in")
    contact, told = await a.introductions.accept(request.id)
    assert told is False and a.standing(contact.identity) == "contact"
    # Bob comes back and asks again: the answer is "accepted" at once.
    b = await node_factory(home=b_home)
    assert b.standing(a.public.key) == "stranger"
    assert await b.introductions.send_request(a.public, addrs(a)) == ("accepted", "Ann")
    assert b.standing(a.public.key) == "contact"


async def test_asking_yourself_or_nobody(node_factory) -> None:
    a = await named(node_factory, "Ann")
    with pytest.raises(ContactError, match="that is you"):
        await a.introductions.send_request(a.public, addrs(a))
    with pytest.raises(ConnectError):
        await a.introductions.send_request(Identity.generate().public, [])


# ---------------------------------------------------------------------- links

async def test_link_with_a_token_is_accepted_once(node_factory) -> None:
    a = await named(node_factory, "Ann")
    c = await named(node_factory, "Cleo")
    d = await named(node_factory, "Dan")
    link = await a.introductions.create_link()
    parsed = parse_link(link)
    assert parsed.card.public == a.public and parsed.card.name == "Ann"
    assert parsed.card.addrs == addrs(a) and len(parsed.token) == 16
    assert open_card(parsed.card_bytes) == parsed.card

    assert await c.introductions.join_link(link) == ("accepted", "Ann")
    assert a.standing(c.public.key) == c.standing(a.public.key) == "contact"
    assert a.contacts is not None and c.contacts is not None
    assert a.contacts.get(c.public.key).source == "link"  # type: ignore[union-attr]
    assert c.contacts.get(a.public.key).source == "link"  # type: ignore[union-attr]
    assert a.contacts.requests("in") == []

    # The token is spent: the next person who uses the link is queued like anyone.
    assert await d.introductions.join_link(link) == ("queued", "Ann")
    assert a.standing(d.public.key) == "stranger"
    (request,) = a.contacts.requests("in")
    assert request.identity == d.public.key and request.via == "link"


async def test_link_without_a_token_queues(node_factory) -> None:
    a = await named(node_factory, "Ann")
    c = await named(node_factory, "Cleo")
    link = await a.introductions.create_link(one_time=False)
    assert "?" not in link and parse_link(link).token == b""
    assert await c.introductions.join_link(f"  {link}\n") == ("queued", "Ann")


def test_parse_link_rejects_bad_links() -> None:
    me, other = Identity.generate(), Identity.generate()
    data = make_card(me, "Ann", ["127.0.0.1:7070"], [], 1)
    token = b"\x07" * 16
    good = make_link(data, token)
    assert good.startswith("sidedoor://add/") and parse_link(good).token == token
    text = card_to_text(data)
    t = "?t=" + card_to_text(token)

    def bad(link: str, *words: str) -> None:
        with pytest.raises(ContactError) as info:
            parse_link(link)
        for word in words:
            assert word in str(info.value), (word, str(info.value))

    # Not a sidedoor link at all.
    for link in (f"https://add/{text}", f"sidedoor://join/{text}", f"sidedoor:add/{text}",
                 f"sidedoor:/add/{text}", text, "", "sidedoor"):
        bad(link, "not a sidedoor link")
    # Damaged base64: a character lost, the text cut, a character that is not base64.
    middle = len(text) // 2
    for damaged in (text[:middle] + text[middle + 1 :], text[: len(text) - 7], text[:5],
                    text[:middle] + "é" + text[middle:], ""):
        bad(f"sidedoor://add/{damaged}", "damaged")
    # A well-formed card signed by a key that is not its own.
    body = msgspec.msgpack.decode(data, type=SignedCard).card
    forged = msgspec.msgpack.encode(SignedCard(body, other.sign(SignatureDomain.CONTACT_CARD,
                                                                body)))
    bad(make_link(forged, token), "forged")
    # The card edited in the link: the name bytes changed, the signature left as it was.
    assert data.count(b"Ann") == 1
    bad(make_link(data.replace(b"Ann", b"Eve"), token), "forged")
    bad(make_link(data.replace(b"127.0.0.1", b"10.66.6.6"), token), "damaged")
    # Tokens of the wrong length, or damaged.
    for wrong in (b"\x07" * 8, b"\x07" * 15, b"\x07" * 17, b"\x07" * 32):
        bad(f"sidedoor://add/{text}?t={card_to_text(wrong)}", "token")
    bad(f"sidedoor://add/{text}?t=abcde", "token")
    # A typo in the query keeps the card, drops the token: a plain request, not an error.
    assert parse_link(f"sidedoor://add/{text}?x=" + card_to_text(token)).token == b""
    assert parse_link(f"sidedoor://add/{text}{t}").card.name == "Ann"


async def test_joining_a_damaged_link_sends_nothing(node_factory) -> None:
    a = await named(node_factory, "Ann")
    c = await named(node_factory, "Cleo")
    link = await a.introductions.create_link()
    card_text = urllib.parse.urlsplit(link).path.lstrip("/")
    edited = card_from_text(card_text).replace(b"Ann", b"Eve")
    with pytest.raises(ContactError, match="forged"):
        await c.introductions.join_link(link.replace(card_text, card_to_text(edited)))
    assert a.sessions == {} and c.sessions == {}
    assert a.contacts is not None and a.contacts.requests("in") == []


# ------------------------------------------------------------- who may do what

async def test_strangers_may_open_only_introduction_channels(node_factory) -> None:
    a = await named(node_factory, "Ann")
    b = await named(node_factory, "Bob")
    a.add_channel_handler(TEST_KIND, echo)  # strangers=False: contacts only
    conn = await b.connect(a.public, "127.0.0.1", a.port)
    with pytest.raises(ChannelClosedError, match="not a contact"):
        await echo_works(conn)
    with pytest.raises(ChannelClosedError, match="no service"):
        await conn.open_channel("no-such-kind", timeout=5)
    assert conn.is_open  # refusing a channel does not end the session

    await befriend(a, b)
    # A stranger's session ends with the introduction; contacts talk on a new one.
    assert not conn.is_open
    contact_conn = await b.connect(a.public, "127.0.0.1", a.port)
    assert await echo_works(contact_conn) == b"echo:hello"


async def test_strangers_can_use_a_handler_registered_for_them(node_factory) -> None:
    a = await named(node_factory, "Ann")
    b = await named(node_factory, "Bob")
    a.add_channel_handler(TEST_KIND, echo, strangers=True)
    conn = await b.connect(a.public, "127.0.0.1", a.port)
    assert await echo_works(conn) == b"echo:hello"


async def test_blocking(node_factory) -> None:
    a = await named(node_factory, "Ann")
    b = await named(node_factory, "Bob")
    a.add_channel_handler(TEST_KIND, echo)
    await befriend(a, b)
    conn = b.session_with(a.public.key)
    assert conn is not None and await echo_works(conn) == b"echo:hello"

    await set_blocked(a, b, True)
    closed = await asyncio.wait_for(asyncio.shield(conn.closed), 5)
    assert closed.by_peer and closed.reason == "not allowed"
    assert a.session_with(b.public.key) is None
    assert all(s.remote != b.public for s in a.sessions.values())
    assert b.session_with(a.public.key) is None

    with pytest.raises(NotAllowed, match="refused the connection"):
        await b.connect(a.public, "127.0.0.1", a.port)
    with pytest.raises(NotAllowed):
        await b.ping(a.public.address, "127.0.0.1", a.port)
    # Also over XX (B forgot A's key), where the handshake's last message is B's own.
    assert b.db is not None
    await b.db.run(b.db.forget_peer_static, a.public.key)
    with pytest.raises(NotAllowed, match="refused the connection"):
        await b.ping(a.public.address, "127.0.0.1", a.port)
    assert a.session_with(b.public.key) is None and b.session_with(a.public.key) is None
    with pytest.raises(ContactError, match="you blocked"):
        await a.connect(b.public, "127.0.0.1", b.port)

    # Still blocked after a restart of A (the standing is loaded from the database).
    a_home = a.home
    await a.aclose()
    a = await node_factory(home=a_home)
    assert a.standing(b.public.key) == "blocked"
    with pytest.raises(NotAllowed):
        await b.connect(a.public, "127.0.0.1", a.port)

    await set_blocked(a, b, False)
    a.add_channel_handler(TEST_KIND, echo)
    conn = await b.connect(a.public, "127.0.0.1", a.port)
    assert await echo_works(conn) == b"echo:hello"


async def test_a_removed_contact_is_a_stranger_again(node_factory) -> None:
    a = await named(node_factory, "Ann")
    b = await named(node_factory, "Bob")
    a.add_channel_handler(TEST_KIND, echo)
    await befriend(a, b)
    conn = b.session_with(a.public.key)
    assert conn is not None

    await remove(a, b)
    assert a.standing(b.public.key) == "stranger"
    assert [s.contact for s in a.sessions.values()] == [False]
    with pytest.raises(ChannelClosedError, match="not a contact"):
        await echo_works(conn)  # on the live session too
    assert (await a.ping(b.public.address, "127.0.0.1", b.port)).contact is False
    # They may still introduce themselves again: the request waits for the user.
    reply = await reply_of(await raw_request(conn, wire.encode(wire.RequestMeta(b.my_card()))))
    assert reply.status == "queued"
    assert [key for key, _ in await incoming(a)] == [b.public.key]


# ---------------------------------------------------------------- bad input

async def test_a_flood_of_requests_is_rate_limited(node_factory) -> None:
    a = await named(node_factory, "Ann")
    b = await named(node_factory, "Bob")
    c = await named(node_factory, "Cleo")
    d = await named(node_factory, "Dan")
    # Cleo is Ann's contact: the caps on strangers do not apply to her.
    await a.introductions.add_contact(c.my_card(), "test")
    meta = wire.encode(wire.RequestMeta(b.my_card(), "let me in"))

    async def one() -> str:
        # Each request on its own session: a stranger's session ends with its request.
        try:
            conn = await b.connect(a.public, "127.0.0.1", a.port)
            return (await reply_of(await raw_request(conn, meta))).status
        except SidedoorError:
            return "turned away"  # too many strangers from this host at once

    # Fewer at once than MAX_PENDING_PER_HOST: Cleo dials from the same IP (127.0.0.1).
    flood = asyncio.gather(*(one() for _ in range(24)))
    start = time.monotonic()
    result = await c.ping(a.public.address, "127.0.0.1", a.port)
    ping_took = time.monotonic() - start
    statuses = await asyncio.wait_for(flood, 30)

    assert 1 <= statuses.count("queued") <= REQUESTS_PER_WINDOW
    assert set(statuses) <= {"queued", "refused", "turned away"}
    assert await incoming(a) == [(b.public.key, "let me in")]
    assert ping_took < 1.0 and result.rtts_ms[0] < 1000
    # Within the window, the machine (same IP) gets no more than its share, whoever asks.
    answered = statuses.count("queued")
    reply = None
    for _ in range(3 * REQUESTS_PER_WINDOW):
        try:
            conn = await d.connect(a.public, "127.0.0.1", a.port)
        except SidedoorError:
            await asyncio.sleep(0.1)  # the flood's sessions are still closing
            continue
        reply = await reply_of(await raw_request(conn, wire.encode(wire.RequestMeta(d.my_card()))))
        if reply.status == "refused":
            break
        answered += 1
    assert reply is not None and reply.status == "refused" and "too many" in reply.reason
    assert answered <= REQUESTS_PER_WINDOW


async def test_a_stranger_gets_few_channels_at_once(node_factory) -> None:
    a = await named(node_factory, "Ann")
    b = await named(node_factory, "Bob")
    a.add_channel_handler(TEST_KIND, slow_echo, strangers=True)
    conn = await b.connect(a.public, "127.0.0.1", a.port)
    results = await asyncio.gather(
        *(conn.open_channel(TEST_KIND, timeout=5) for _ in range(10)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, ChannelClosedError)]
    assert len(refused) == 10 - MAX_STRANGER_CHANNELS
    assert all("busy" in str(r) for r in refused)


async def test_a_flood_over_many_connections(node_factory) -> None:
    a = await named(node_factory, "Ann")
    peers = [await node_factory() for _ in range(3)]

    async def one(i: int) -> str:
        peer = peers[i % 3]
        try:
            conn = await peer.connect(a.public, "127.0.0.1", a.port)
            meta = wire.encode(wire.RequestMeta(peer.my_card()))
            return (await reply_of(await raw_request(conn, meta))).status
        except SidedoorError:
            return "turned away"

    statuses = await asyncio.gather(*(one(i) for i in range(12)))
    assert 1 <= statuses.count("queued") <= REQUESTS_PER_WINDOW
    assert 1 <= len(await incoming(a)) <= 3


def test_rate_limiter() -> None:
    limiter = RateLimiter(2, 10.0, max_keys=3)
    assert limiter.allow("x", 0) and limiter.allow("x", 1)
    assert not limiter.allow("x", 2)
    assert limiter.allow("y", 2)  # per key
    assert not limiter.allow("x", 9.9)  # both events are still in the window
    assert limiter.allow("x", 10.0)  # the one at 0 has left it
    assert not limiter.allow("x", 10.5)
    for key in ("k1", "k2", "k3"):  # more keys than kept: idle ones are dropped
        assert limiter.allow(key, 30)
    assert set(limiter._seen) <= {"k1", "k2", "k3"}
    assert limiter.allow("x", 30) and limiter.allow("x", 30) and not limiter.allow("x", 30)


async def test_a_request_with_someone_elses_card_is_refused(node_factory, caplog) -> None:
    a = await named(node_factory, "Ann")
    b = await named(node_factory, "Bob")
    c = await named(node_factory, "Cleo")
    conn = await b.connect(a.public, "127.0.0.1", a.port)
    with caplog.at_level(logging.INFO, logger="sidedoor.node"):
        stream = await raw_request(conn, wire.encode(wire.RequestMeta(c.my_card(), "it's me")))
        await was_reset(stream)
    assert "belongs to someone else" in caplog.text
    assert await incoming(a) == [] and a.standing(c.public.key) == "stranger"
    assert a.standing(b.public.key) == "stranger"
    # The same trick on the accept channel (a new session: the first ended with its request).
    conn = await b.connect(a.public, "127.0.0.1", a.port)
    stream = await conn.open_channel(wire.KIND_ACCEPT, wire.encode(wire.AcceptMeta(c.my_card())))
    await was_reset(stream)
    assert a.contacts is not None and a.contacts.all() == []


async def test_an_unasked_acceptance_is_refused(node_factory) -> None:
    a = await named(node_factory, "Ann")
    b = await named(node_factory, "Bob")
    conn = await b.connect(a.public, "127.0.0.1", a.port)
    stream = await conn.open_channel(wire.KIND_ACCEPT, wire.encode(wire.AcceptMeta(b.my_card())))
    reply = await reply_of(stream)
    assert reply.status == "refused" and "did not ask" in reply.reason
    assert a.standing(b.public.key) == "stranger"


@pytest.mark.parametrize("meta", [
    b"", b"\xc1", b"\x93\x01\x02\x03", msgspec.msgpack.encode(["card", "hi", b""]),
    msgspec.msgpack.encode([b"not a card", "hi", b""]),
], ids=["empty", "reserved-byte", "ints", "str-card", "junk-card"])
async def test_a_malformed_request_is_reset(node_factory, meta: bytes) -> None:
    a = await named(node_factory, "Ann")
    b = await named(node_factory, "Bob")
    conn = await b.connect(a.public, "127.0.0.1", a.port)
    await was_reset(await raw_request(conn, meta))
    assert await incoming(a) == []
    # A is unharmed: a proper request (on a new session) is taken.
    conn = await b.connect(a.public, "127.0.0.1", a.port)
    reply = await reply_of(await raw_request(conn, wire.encode(wire.RequestMeta(b.my_card()))))
    assert reply.status == "queued" and reply.card
    assert [key for key, _ in await incoming(a)] == [b.public.key]


async def test_a_request_with_a_forged_card_is_reset(node_factory) -> None:
    a = await named(node_factory, "Ann")
    b = await named(node_factory, "Bob")
    conn = await b.connect(a.public, "127.0.0.1", a.port)
    forged = b.my_card().replace(b"Bob", b"Ann")
    await was_reset(await raw_request(conn, wire.encode(wire.RequestMeta(forged))))
    assert await incoming(a) == []


async def test_message_is_cleaned_and_cut(node_factory) -> None:
    a = await named(node_factory, "Ann")
    b = await named(node_factory, "Bob")
    conn = await b.connect(a.public, "127.0.0.1", a.port)
    message = "hi\x1b[2J\nthere " + "x" * 500
    reply = await reply_of(await raw_request(
        conn, wire.encode(wire.RequestMeta(b.my_card(), message))))
    assert reply.status == "queued"
    ((_, stored),) = await incoming(a)
    assert stored.startswith("hi[2J there x") and "\x1b" not in stored
    assert len(stored) == wire.MAX_MESSAGE_LEN  # cut at the message limit, not the name's


async def test_blocking_a_request_refuses_its_sender(node_factory) -> None:
    a = await named(node_factory, "Ann")
    b = await named(node_factory, "Bob")
    status, _ = await b.introductions.send_request(a.public, [f"127.0.0.1:{a.port}"])
    assert status == "queued"
    [(request_id, _)] = [(r.id, r) for r in a.contacts.requests("in")]  # type: ignore[union-attr]
    await a.introductions.decline(request_id, block=True)
    assert await incoming(a) == []
    assert a.standing(b.public.key) == "blocked"
    with pytest.raises(NotAllowed):
        await b.connect(a.public, "127.0.0.1", a.port)
    # The block is stored, so it outlives this session and a restart.
    assert a.contacts is not None and [c.blocked for c in a.contacts.all()] == [True]
