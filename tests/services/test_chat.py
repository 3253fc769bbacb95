"""Chat between real in-process nodes on 127.0.0.1: delivery, outbox, receipts, rooms,
and every kind of bad input from the issue, sent by hand over a real channel."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sidedoor.errors import ChatError, ChatRefused
from sidedoor.identity import Identity
from sidedoor.net.connection import ChannelClosedError
from sidedoor.node import Node
from sidedoor.proto import chat as wire
from sidedoor.proto.framing import encode_message
from sidedoor.services.chat_store import StoredMessage
from sidedoor.testing.nodes import befriend

NodeFactory = Callable[..., Awaitable[Node]]


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 (polling the database)
            await asyncio.sleep(0.02)


async def history(node: Node, conv: bytes) -> list[StoredMessage]:
    assert node.db is not None
    found: list[StoredMessage] = await node.db.run(node.chat.store.history, conv)
    return found


async def pair(node_factory: NodeFactory) -> tuple[Node, Node]:
    alice, bob = await node_factory(), await node_factory()
    await alice.set_name("Alice")
    await bob.set_name("Bob")
    await befriend(alice, bob)
    return alice, bob


async def raw_channel(frm: Node, to: Node) -> Any:
    conn = await frm.reach(to.public.key)
    return await conn.open_channel(wire.KIND, b"", timeout=5)


async def ask(stream: Any, *frames: wire.Frame | bytes) -> list[wire.Frame]:
    """Send frames (or raw bytes) on a chat channel; read one answer per frame."""
    await stream.write(b"".join(encode_message(f if isinstance(f, bytes) else wire.encode(f))
                                for f in frames))
    answers = []
    for _ in frames:
        data = await stream.read_message(wire.MAX_SYNC_FRAME, timeout=5)
        assert data is not None
        answers.append(wire.decode(data))
    return answers


def direct(frm: Node, dest: Node, text: str = "hi", **kw: Any) -> wire.Message:
    fields: dict[str, Any] = {"id": os.urandom(16), "sender": frm.public.key,
                              "to": dest.public.key, "seq": 1, "sent_at": 1_000, "text": text}
    fields.update(kw)
    return wire.Message(**fields)


# ------------------------------------------------------------ direct chat

async def test_message_is_delivered_and_acknowledged(node_factory: NodeFactory) -> None:
    alice, bob = await pair(node_factory)
    events = bob.events.subscribe()
    alice_events = alice.events.subscribe()
    sent = await alice.chat.send(bob.public.key, "lunch at 12?")
    event = await asyncio.wait_for(events.get(), 5)
    while event is not None and event["type"] != "chat.message":
        event = await asyncio.wait_for(events.get(), 5)
    assert event is not None and event["message"]["text"] == "lunch at 12?"
    assert event["message"]["sender"] == alice.public.address
    assert event["message"]["sender_name"] == "Alice"

    async def delivered() -> bool:
        return (await history(alice, bob.public.key))[0].state == "delivered"
    await until(delivered)
    kinds = []
    while not alice_events.empty():
        e = alice_events.get_nowait()
        assert e is not None
        kinds.append(e["type"])
    assert "chat.message" in kinds and "chat.delivered" in kinds
    (got,) = await history(bob, alice.public.key)
    assert got.id == sent.id and got.text == "lunch at 12?" and not got.mine
    assert got.state == "unread"
    assert alice.db is not None
    assert await alice.db.run(alice.chat.store.outbox, bob.public.key) == []

    # Bob reads: Alice's message turns "read" on her side.
    assert await bob.chat.mark_read(alice.public.key) == [sent.id]

    async def read() -> bool:
        return (await history(alice, bob.public.key))[0].state == "read"
    await until(read)


async def test_order_and_search(node_factory: NodeFactory) -> None:
    alice, bob = await pair(node_factory)
    for i in range(50):
        await alice.chat.send(bob.public.key, f"message {i} about the budget" if i == 7
                              else f"message {i}")

    async def there(n: int) -> bool:
        return len(await history(bob, alice.public.key)) == n
    await until(lambda: there(50))
    await bob.chat.send(alice.public.key, "a reply")  # after all Bob has seen
    await until(lambda: there(51))
    got = await history(bob, alice.public.key)
    from_alice = [m.seq for m in got if m.sender == alice.public.key]
    assert from_alice == list(range(1, 51))
    assert got[-1].text == "a reply"  # the hybrid clock: after what Bob saw
    assert bob.db is not None
    found = await bob.db.run(bob.chat.store.search, "BUDGET")
    assert [m.text for m in found] == ["message 7 about the budget"]
    with pytest.raises(ChatError):
        await bob.db.run(bob.chat.store.search, '  "  ')


async def test_offline_contact_gets_the_outbox_when_back(node_factory: NodeFactory,
                                                         tmp_path: Path) -> None:
    alice, bob = await pair(node_factory)
    bob_home = bob.home
    await bob.aclose()
    sent = [await alice.chat.send(bob.public.key, f"while you were out {i}") for i in range(3)]
    assert alice.db is not None

    async def parked() -> bool:
        return len(await alice.db.run(alice.chat.store.outbox, bob.public.key)) == 3  # type: ignore[union-attr]
    await until(parked)
    assert [m.state for m in await history(alice, bob.public.key)] == ["pending"] * 3
    # Bob comes back on the same home; at start-up it says hello to its contacts.
    bob2 = await node_factory(home=bob_home)

    async def arrived() -> bool:
        return len(await history(bob2, alice.public.key)) == 3
    await until(arrived)

    async def delivered() -> bool:
        return all(m.state == "delivered" for m in await history(alice, bob.public.key))
    await until(delivered)
    assert [m.id for m in await history(bob2, alice.public.key)] == [m.id for m in sent]
    assert await alice.db.run(alice.chat.store.outbox, bob.public.key) == []


# ------------------------------------------------------------ bad input

async def test_bad_input_on_a_channel(node_factory: NodeFactory) -> None:
    alice, bob = await pair(node_factory)
    stream = await raw_channel(alice, bob)
    good = direct(alice, bob, "first")
    too_big = direct(alice, bob, "x" * (wire.MAX_TEXT_BYTES + 1), seq=2)
    forged = direct(alice, bob, "I am Carol", sender=Identity.generate().public.key, seq=3)
    elsewhere = direct(alice, bob, "for someone else", to=Identity.generate().public.key)
    answers = await ask(stream, good, good, too_big, forged, elsewhere)
    assert answers[0] == wire.Ack(good.id, "stored")
    assert answers[1] == wire.Ack(good.id, "stored")  # a duplicate: stored once, said twice
    assert isinstance(answers[2], wire.Ack) and answers[2].status == "refused"
    assert "limit" in answers[2].reason  # the error goes back to the sender
    assert isinstance(answers[3], wire.Ack) and answers[3].status == "refused"
    assert "another sender" in answers[3].reason
    assert isinstance(answers[4], wire.Ack) and "someone else" in answers[4].reason
    assert [m.text for m in await history(bob, alice.public.key)] == ["first"]

    # Invalid UTF-8: the channel is reset, nothing is stored, the node goes on.
    raw = bytearray(wire.encode(direct(alice, bob, "abc", seq=4)))
    at = raw.index(b"abc")
    raw[at : at + 3] = b"\xff\xfe\xfd"
    await stream.write(encode_message(bytes(raw)))
    with pytest.raises(ChannelClosedError):
        await stream.read_message(1 << 20, timeout=5)
    assert [m.text for m in await history(bob, alice.public.key)] == ["first"]
    again = await raw_channel(alice, bob)
    ok = direct(alice, bob, "still fine", seq=5)
    assert await ask(again, ok) == [wire.Ack(ok.id, "stored")]


async def test_a_frame_over_the_channel_limit_resets_the_channel(
        node_factory: NodeFactory) -> None:
    alice, bob = await pair(node_factory)
    stream = await raw_channel(alice, bob)
    await stream.write((wire.MAX_FRAME + 1).to_bytes(4, "big") + b"x" * 100)
    with pytest.raises(ChannelClosedError):
        await stream.read_message(1 << 20, timeout=5)
    again = await raw_channel(alice, bob)
    ok = direct(alice, bob, "the node is fine")
    assert await ask(again, ok) == [wire.Ack(ok.id, "stored")]


async def test_over_size_message_is_refused_locally(node_factory: NodeFactory) -> None:
    alice, bob = await pair(node_factory)
    with pytest.raises(ChatRefused, match="limit"):
        await alice.chat.send(bob.public.key, "x" * (wire.MAX_TEXT_BYTES + 1))
    assert await history(alice, bob.public.key) == []


async def test_non_contacts_are_dropped(node_factory: NodeFactory) -> None:
    _alice, bob = await pair(node_factory)
    mallory = await node_factory()
    # Over a session: the node refuses the channel.
    conn = await mallory.connect(bob.public, "127.0.0.1", bob.port)
    with pytest.raises(ChannelClosedError, match="not a contact"):
        await conn.open_channel(wire.KIND, b"", timeout=5)
    # By mail (the mail layer says who sealed it): dropped.
    await bob.mail.deliver(mallory.public, wire.KIND,
                           wire.encode(direct(mallory, bob, "buy now")))
    assert await history(bob, mallory.public.key) == []
    with pytest.raises(ChatError, match="contacts"):
        await bob.chat.send(mallory.public.key, "hello?")


async def test_mail_goes_through_the_same_checks(node_factory: NodeFactory) -> None:
    alice, bob = await pair(node_factory)
    carol = Identity.generate()
    msg = direct(alice, bob, "by mail")
    await bob.mail.deliver(alice.public, wire.KIND, wire.encode(msg))
    await bob.mail.deliver(alice.public, wire.KIND, wire.encode(msg))  # twice: shown once
    await bob.mail.deliver(alice.public, wire.KIND, wire.encode(
        direct(alice, bob, "forged", sender=carol.public.key)))
    await bob.mail.deliver(alice.public, wire.KIND, b"\x93garbage")
    got = await history(bob, alice.public.key)
    assert [m.text for m in got] == ["by mail"]


async def test_clock_far_in_the_future(node_factory: NodeFactory) -> None:
    alice, bob = await pair(node_factory)
    stream = await raw_channel(alice, bob)
    year_2100 = 4_102_444_800_000
    liar = direct(alice, bob, "from the future", sent_at=year_2100)
    await ask(stream, liar)
    await bob.chat.send(alice.public.key, "an answer from now")
    # Bob's answer is ordered 1 ms after the message it answers; a message arriving
    # within that same millisecond would tie with it (either order is right then).
    await asyncio.sleep(0.005)
    later = direct(alice, bob, "then this", seq=2, sent_at=year_2100 + 1)
    await ask(stream, later)
    got = await history(bob, alice.public.key)
    assert [m.text for m in got] == ["from the future", "an answer from now", "then this"]
    assert got[0].order_at < year_2100  # clamped to arrival + the allowed skew
    assert got[0].order_at <= got[0].received_at + wire.MAX_FUTURE_SKEW_MS


# ------------------------------------------------------------ rooms

async def trio(node_factory: NodeFactory) -> tuple[Node, Node, Node]:
    alice, bob = await pair(node_factory)
    carol = await node_factory()
    await carol.set_name("Carol")
    await befriend(alice, carol)
    await befriend(bob, carol)
    return alice, bob, carol


async def test_room_messages_fan_out_and_removed_members_are_ignored(
        node_factory: NodeFactory) -> None:
    alice, bob, carol = await trio(node_factory)
    room = await alice.chat.create_room("eng", [bob.public.key, carol.public.key])
    rid = room.state.room

    async def all_in() -> bool:
        return all(rid in n.chat.rooms and n.chat.rooms[rid].status == "active"
                   for n in (bob, carol))
    await until(all_in)
    await bob.chat.send(rid, "standup moved to 10:15")

    for node in (alice, bob, carol):
        await until(lambda node=node: _count(node, rid, 1))  # type: ignore[misc]

    # Bob is not an admin: his membership change does not happen, and a forged one
    # sent by hand is ignored.
    with pytest.raises(ChatError, match="admins"):
        await bob.chat.change_members(rid, remove=[carol.public.key])
    assert bob.identity is not None
    fake = wire.make_update(bob.identity, rid, 2, "eng", [bob.public.key], [bob.public.key])
    stream = await raw_channel(bob, carol)
    (answer,) = await ask(stream, fake)
    assert isinstance(answer, wire.Ack) and answer.status == "refused"
    assert "admin" in answer.reason
    assert carol.chat.rooms[rid].state.version == 1

    # Alice removes Carol: Carol learns it; what she still sends is ignored.
    await alice.chat.change_members(rid, remove=[carol.public.key])

    async def removed() -> bool:
        return (carol.chat.rooms[rid].status == "removed"
                and bob.chat.rooms[rid].state.version == 2)
    await until(removed)
    assert carol.identity is not None
    late = wire.sign_message(carol.identity, wire.Message(
        os.urandom(16), carol.public.key, rid, 1, 5_000, "am I still here?"))
    for node in (alice, bob):
        s = await raw_channel(carol, node)
        (answer,) = await ask(s, late)
        assert isinstance(answer, wire.Ack) and answer.status == "refused"
    with pytest.raises(ChatError):
        await carol.chat.send(rid, "hello?")
    await alice.chat.send(rid, "without carol")
    await until(lambda: _count(bob, rid, 2))
    await asyncio.sleep(0.2)
    assert len(await history(carol, rid)) == 1  # nothing more reaches her


async def _count(node: Node, rid: bytes, n: int) -> bool:
    return len(await history(node, rid)) == n


async def test_forged_room_message_relayed_by_a_member(node_factory: NodeFactory) -> None:
    alice, bob, carol = await trio(node_factory)
    rid = (await alice.chat.create_room("eng", [bob.public.key, carol.public.key])).state.room
    await until(lambda: _in(bob, rid))
    assert bob.identity is not None
    # Bob signs a message in Alice's name: the signature gives it away.
    forged = wire.Message(os.urandom(16), alice.public.key, rid, 1, 5_000, "from alice?")
    forged = msgspec.structs.replace(wire.sign_message(bob.identity, forged))
    answer = await bob.chat.receive(bob.public, [forged], "sync")
    assert isinstance(answer[0], wire.Ack) and answer[0].status == "refused"
    answers = await carol.chat.receive(bob.public, [forged], "direct")
    assert isinstance(answers[0], wire.Ack) and answers[0].status == "refused"


async def _in(node: Node, rid: bytes) -> bool:
    return rid in node.chat.rooms


async def test_member_offline_catches_up_from_another_member(
        node_factory: NodeFactory) -> None:
    alice, bob, carol = await trio(node_factory)
    rid = (await alice.chat.create_room("eng", [bob.public.key, carol.public.key])).state.room
    await until(lambda: _in(carol, rid))
    await until(lambda: _in(bob, rid))
    carol_home = carol.home
    await carol.aclose()
    await alice.chat.send(rid, "one")
    await bob.chat.send(rid, "two")
    await alice.chat.send(rid, "three")
    await until(lambda: _count(bob, rid, 3))
    # Alice leaves before Carol is back: only Bob can tell Carol what she missed.
    await alice.aclose()
    carol2 = await node_factory(home=carol_home)
    await until(lambda: _count(carol2, rid, 3))
    assert [m.text for m in await history(carol2, rid)] == ["one", "two", "three"]


async def test_leave_a_room(node_factory: NodeFactory) -> None:
    alice, bob, carol = await trio(node_factory)
    rid = (await alice.chat.create_room("eng", [bob.public.key, carol.public.key])).state.room
    await until(lambda: _in(bob, rid))
    await bob.chat.leave_room(rid)

    async def gone() -> bool:
        return (bob.public.key not in alice.chat.rooms[rid].state.members
                and carol.chat.rooms.get(rid) is not None
                and bob.public.key not in carol.chat.rooms[rid].state.members)
    await until(gone)
    assert bob.chat.rooms[rid].status == "left"


async def test_presence_events_only_for_contacts(node_factory: NodeFactory) -> None:
    alice, bob = await pair(node_factory)
    for conn0 in list(bob.sessions):
        await conn0.aclose()
    await until(lambda: _true(not alice.chat.is_online(bob.public.key)))
    await asyncio.sleep(0.1)
    events = alice.events.subscribe()
    stranger = await node_factory()
    conn = await stranger.connect(alice.public, "127.0.0.1", alice.port)
    await conn.aclose()
    await bob.reach(alice.public.key)
    await until(lambda: _true(alice.chat.is_online(bob.public.key)))
    for conn2 in list(bob.sessions):
        await conn2.aclose()
    seen: list[tuple[str, bool]] = []
    async with asyncio.timeout(5):
        while len(seen) < 2:
            e = await events.get()
            assert e is not None
            if e["type"] == "presence.changed":
                seen.append((e["address"], e["online"]))
    assert seen == [(bob.public.address, True), (bob.public.address, False)]
    await asyncio.sleep(0.1)
    while not events.empty():
        e = events.get_nowait()
        assert e is None or e["type"] != "presence.changed", e  # none about the stranger


async def _true(value: bool) -> bool:
    return value


async def test_added_member_gets_the_chain_and_the_history(node_factory: NodeFactory) -> None:
    alice, bob, carol = await trio(node_factory)
    rid = (await alice.chat.create_room("eng", [bob.public.key])).state.room
    await until(lambda: _in(bob, rid))
    await bob.chat.send(rid, "before carol")
    await until(lambda: _count(alice, rid, 1))
    await alice.chat.change_members(rid, add=[carol.public.key])

    async def joined() -> bool:
        room = carol.chat.rooms.get(rid)
        return room is not None and room.status == "active" and room.state.version == 2
    await until(joined)
    await until(lambda: _count(carol, rid, 1))  # the history, from a member
    assert [m.text for m in await history(carol, rid)] == ["before carol"]
    await carol.chat.send(rid, "hello all")
    await until(lambda: _count(bob, rid, 2))


async def test_stopping_in_the_middle_of_a_burst_loses_nothing(
        node_factory: NodeFactory, caplog: pytest.LogCaptureFixture) -> None:
    alice, bob = await pair(node_factory)
    bob_home, alice_home = bob.home, alice.home
    sends = [asyncio.ensure_future(alice.chat.send(bob.public.key, f"burst {i}"))
             for i in range(2000)]
    await asyncio.gather(*sends)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(alice.aclose(), bob.aclose())
    assert loop.time() - started < 5  # no task held the shutdown up
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    # Everything that was stored is delivered once both are back.
    alice2 = await node_factory(home=alice_home)
    bob2 = await node_factory(home=bob_home)
    assert alice2.db is not None and bob2.db is not None

    async def arrived() -> bool:
        rows = await bob2.db.run(bob2.chat.store.conversations)  # type: ignore[union-attr]
        return [r["messages"] for r in rows] == [2000]
    await until(arrived, timeout=30)

    async def all_delivered() -> bool:
        return await alice2.db.run(alice2.chat.store.outbox, bob2.public.key) == []  # type: ignore[union-attr]
    await until(all_delivered, timeout=30)


async def test_mail_delivery_is_answered_with_a_receipt(node_factory: NodeFactory) -> None:
    alice, bob = await pair(node_factory)
    assert alice.db is not None
    # A message Alice stored but could not hand over (as when Bob was away): it reaches
    # Bob through his mailbox instead.
    msg = direct(alice, bob, "via the mailbox", seq=1, sent_at=5_000)
    await alice.db.run(alice.chat.store.store_outgoing, [(msg, [(bob.public.key, b"")])], 5)
    await alice.db.run(alice.chat.store.mark_mailed, bob.public.key, [msg.id])
    assert (await history(alice, bob.public.key))[0].state == "mailed"
    await bob.mail.deliver(alice.public, wire.KIND, wire.encode(msg))
    assert [m.text for m in await history(bob, alice.public.key)] == ["via the mailbox"]

    async def delivered() -> bool:
        return (await history(alice, bob.public.key))[0].state == "delivered"
    await until(delivered)  # Bob's receipt came back over a session


def hold_answers(node: Node, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """``node`` sits on what arrives (and so on its answers) until the event is set."""
    release = asyncio.Event()
    real_receive = node.chat.receive

    async def slow_receive(*args: Any) -> list[wire.Frame]:
        await release.wait()
        return await real_receive(*args)

    monkeypatch.setattr(node.chat, "receive", slow_receive)
    return release


async def test_a_new_message_does_not_wait_for_answers_to_earlier_ones(
        node_factory: NodeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    from sidedoor.services import chat as chat_service

    alice, bob = await pair(node_factory)
    release = hold_answers(bob, monkeypatch)
    writes: list[int] = []
    real_send = chat_service.Link.send_nowait

    def counting_send(self: chat_service.Link, items: list[tuple[bytes, bytes]]) -> Any:
        writes.append(len(items))
        return real_send(self, items)

    # Every write goes through send_nowait (Link.send calls it too).
    monkeypatch.setattr(chat_service.Link, "send_nowait", counting_send)

    async def written(n: int) -> bool:
        return len(writes) >= n

    await alice.chat.send(bob.public.key, "one")
    await until(lambda: written(1), timeout=5)
    await alice.chat.send(bob.public.key, "two")
    await until(lambda: written(2), timeout=5)  # sent while "one" is still unanswered
    release.set()

    async def delivered() -> bool:
        return [m.state for m in await history(alice, bob.public.key)] == ["delivered"] * 2
    await until(delivered)
    assert [m.text for m in await history(bob, alice.public.key)] == ["one", "two"]


async def test_answers_share_the_next_message_s_commit(
        node_factory: NodeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit: a peer's answer waits (up to SETTLE_DELAY) for the next message
    and goes into the same transaction; with no next message it is written alone."""
    from sidedoor.services import chat as chat_service

    monkeypatch.setattr(chat_service, "SETTLE_DELAY", 0.5)
    alice, bob = await pair(node_factory)
    store = alice.chat.store
    writes: list[tuple[list[str], list[int]]] = []
    real_write = store.write

    def recording_write(items: Any, settles: Any, now: int) -> Any:
        writes.append(([m.text for m, _ in items], [len(s[1]) for s in settles]))
        return real_write(items, settles, now)

    monkeypatch.setattr(store, "write", recording_write)
    events = alice.events.subscribe()
    one = await alice.chat.send(bob.public.key, "one")

    async def answer_waits() -> bool:
        return bool(alice.chat._batcher.settles)
    await until(answer_waits, timeout=5)  # Bob stored "one"; Alice holds his answer
    assert (await history(alice, bob.public.key))[0].state == "pending"
    await alice.chat.send(bob.public.key, "two")
    assert writes == [(["one"], []), (["two"], [1])]  # "one" settled with "two"
    states = {m.text: m.state for m in await history(alice, bob.public.key)}
    assert states["one"] == "delivered"
    delivered = []
    while not events.empty():
        event = events.get_nowait()
        assert event is not None
        if event["type"] == "chat.delivered":
            delivered.append(event["id"])
    assert delivered == [one.id.hex()]

    async def two_delivered() -> bool:  # no message follows: written alone, later
        return (await history(alice, bob.public.key))[-1].state == "delivered"
    await until(two_delivered, timeout=5)
    assert writes[2:] == [([], [1])]


async def test_a_message_leaves_before_its_own_commit_and_returns_after_it(
        node_factory: NodeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over an open channel the frame is written first, then the local transaction
    runs, also while earlier messages wait for answers; `send` (the API's POST) still
    returns only once the message is stored here."""
    from sidedoor.services import chat as chat_service

    alice, bob = await pair(node_factory)
    release = hold_answers(bob, monkeypatch)
    order: list[str] = []
    real_send = chat_service.Link.send_nowait

    def recording_send(self: chat_service.Link, items: list[tuple[bytes, bytes]]) -> Any:
        order.append("written")
        return real_send(self, items)

    store = alice.chat.store
    real_write = store.write

    def recording_write(items: Any, settles: Any, now: int) -> Any:
        result = real_write(items, settles, now)
        if items:
            order.append("committed")
        return result

    monkeypatch.setattr(chat_service.Link, "send_nowait", recording_send)
    monkeypatch.setattr(store, "write", recording_write)
    await alice.chat.send(bob.public.key, "one")

    async def written() -> bool:
        return order.count("written") == 1
    await until(written)  # "one" is out and unanswered: the courier waits for its answer
    order.clear()
    sent = await alice.chat.send(bob.public.key, "two")
    assert order == ["written", "committed"]
    assert (await alice.db.run(store.message, sent.id)) is not None  # stored on return
    release.set()

    async def delivered() -> bool:
        return [m.state for m in await history(alice, bob.public.key)] == ["delivered"] * 2
    await until(delivered)
