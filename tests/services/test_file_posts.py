"""Files and chat are one thread: an offer also appears in the conversation, to a contact
or to a room (real in-process nodes on 127.0.0.1)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sidedoor.errors import ContactError, TransferError
from sidedoor.node import Node
from sidedoor.proto import chat as chat_wire
from sidedoor.services.chat_store import StoredMessage
from sidedoor.services.file_posts import offer_text, post_files
from sidedoor.testing.nodes import befriend

NodeFactory = Callable[..., Awaitable[Node]]


async def history(node: Node, conv: bytes) -> list[StoredMessage]:
    assert node.db is not None
    found: list[StoredMessage] = await node.db.run(node.chat.store.history, conv)
    return found


async def first_message(node: Node, conv: bytes, timeout: float = 10.0) -> StoredMessage:
    async with asyncio.timeout(timeout):
        while not (found := await history(node, conv)):  # noqa: ASYNC110 (polling the db)
            await asyncio.sleep(0.02)
    return found[0]


async def named(node_factory: NodeFactory, name: str) -> Node:
    node = await node_factory()
    await node.set_name(name)
    return node


def offered_files(tmp_path: Path) -> list[str]:
    (tmp_path / "out").mkdir()
    report = tmp_path / "out" / "report.pdf"
    report.write_bytes(b"%PDF" + bytes(5000))
    return [str(report)]


async def test_an_offer_to_a_contact_is_a_message_in_their_conversation(
        node_factory: NodeFactory, tmp_path: Path) -> None:
    alice, bob = await named(node_factory, "Alice"), await named(node_factory, "Bob")
    await befriend(alice, bob)
    sent = await post_files(alice, offered_files(tmp_path), "Bob", "Q3 draft")
    assert [t["id"] for t in sent["transfers"]] == [sent["id"]]
    assert sent["message"] is not None and sent["message"]["attachments"] == [sent["id"]]

    got = await first_message(bob, alice.public.key)
    assert got.text == "Sent files: report.pdf (1 file, 5.0 KB)\nQ3 draft"
    assert [a.hex() for a in got.attachments] == [sent["id"]]
    # The attachment names the transfer Bob was offered: the two are one thread.
    async with asyncio.timeout(10):
        while not any(t["id"] == sent["id"] for t in await bob.transfers.all()):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    offer = await bob.transfers.describe_one(sent["id"])
    assert offer["direction"] == "in" and offer["status"] == "offered"
    assert offer["note"] == "Q3 draft"


async def test_an_offer_to_a_room_goes_to_each_member_who_is_a_contact(
        node_factory: NodeFactory, tmp_path: Path) -> None:
    alice, bob, carol = [await named(node_factory, n) for n in ("Alice", "Bob", "Carol")]
    await befriend(alice, bob)
    await befriend(alice, carol)  # Bob and Carol are not each other's contacts
    room = await alice.chat.create_room("eng", [bob.public.key, carol.public.key])
    rid = room.state.room
    async with asyncio.timeout(10):
        while rid not in bob.chat.rooms:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    sent = await post_files(bob, offered_files(tmp_path), "eng")
    assert [t["peer"] for t in sent["transfers"]] == [alice.public.address]
    assert sent["skipped_members"] == [carol.public.address]
    assert sent["conversation_kind"] == "room"

    got = await first_message(alice, rid)
    assert got.sender == bob.public.key and got.text.startswith("Sent files: report.pdf")
    assert [a.hex() for a in got.attachments] == [sent["id"]]
    # The message may come before the offer it names: each travels on its own.
    async with asyncio.timeout(10):
        while not any(t["id"] == sent["id"] and t["direction"] == "in"  # noqa: ASYNC110
                      for t in await alice.transfers.all()):
            await asyncio.sleep(0.02)


async def test_nobody_to_send_to_and_unknown_names_are_clear_errors(
        node_factory: NodeFactory, tmp_path: Path) -> None:
    alice, bob, carol = [await named(node_factory, n) for n in ("Alice", "Bob", "Carol")]
    await befriend(alice, bob)
    await befriend(alice, carol)
    room = await alice.chat.create_room("pair", [carol.public.key])
    async with asyncio.timeout(10):
        while room.state.room not in carol.chat.rooms:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    await alice.chat.change_members(room.state.room, add=[bob.public.key])
    async with asyncio.timeout(10):
        while room.state.room not in bob.chat.rooms:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    files = offered_files(tmp_path)
    # Bob's only fellow member he could send to is Alice; once she leaves, nobody.
    await alice.chat.leave_room(room.state.room)
    async with asyncio.timeout(10):
        while alice.public.key in bob.chat.rooms[room.state.room].state.members:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    with pytest.raises(TransferError, match="nobody in that room is your contact"):
        await post_files(bob, files, "pair")
    with pytest.raises(ContactError, match="no contact or room matches"):
        await post_files(bob, files, "nobody-by-that-name")
    assert await bob.transfers.all() == []


def test_offer_text_names_few_files_and_stays_within_a_message() -> None:
    assert offer_text(["a", "b", "c", "d", "e"], 9, 2_000_000, "") == (
        "Sent files: a, b, c and 2 more (9 files, 2.0 MB)")
    long = offer_text(["x" * 10_000], 1, 1, "note")
    assert len(long.encode()) <= chat_wire.MAX_TEXT_BYTES and long.endswith("…")
