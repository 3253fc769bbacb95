"""File transfers between real in-process nodes on 127.0.0.1.

Happy paths (a file, a folder, auto-accept, name collisions), resume after the
sender or the receiver stops, queueing for an offline contact, and the bad input
of the issue played by a hand-written peer: each gets a clear error, nothing
outside the destination, and no damaged file under a final name.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest

from sidedoor.errors import DiskFull, TransferError
from sidedoor.identity import PublicIdentity
from sidedoor.net.connection import ChannelClosedError, ChannelStream
from sidedoor.node import Node
from sidedoor.proto import transfer as wire
from sidedoor.proto.framing import encode_message
from sidedoor.services import file_writer
from sidedoor.services import transfers as transfers_module
from sidedoor.services.transfers import SETTING_AUTO_ACCEPT
from sidedoor.testing.disks import cached_bytes, fincore_missing, on_tmpfs
from sidedoor.testing.nodes import befriend

NodeFactory = Callable[..., Any]


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.02)


async def status_of(node: Node, tid: str) -> dict[str, Any]:
    return await node.transfers.describe_one(tid)


async def until_status(node: Node, tid: str, *statuses: str, timeout: float = 10.0
                       ) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        try:
            info = await status_of(node, tid)
        except TransferError:
            return None  # not there yet
        return info if info["status"] in statuses else None
    result: dict[str, Any] = await wait_for(check, timeout)
    return result


def make_file(path: Path, size: int, seed: int = 1, mode: int = 0o640,
              mtime: int = 1_600_000_000) -> bytes:
    data = (seed.to_bytes(4, "big") * (size // 4 + 1))[:size]
    data = bytes(b ^ (i * 7 & 0xFF) for i, b in enumerate(data[:4096])) + data[4096:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime * 10**9 + 123, mtime * 10**9 + 123))
    return data


@pytest.fixture
async def pair(node_factory: NodeFactory) -> tuple[Node, Node]:
    a: Node = await node_factory()
    b: Node = await node_factory()
    await befriend(a, b)
    return a, b


async def test_a_file_offered_accepted_and_arriving_whole(pair: tuple[Node, Node],
                                                          tmp_path: Path) -> None:
    alice, bob = pair
    data = make_file(tmp_path / "src" / "report.pdf", 5 * (1 << 20) + 123)
    sent = await alice.transfers.send([str(tmp_path / "src" / "report.pdf")],
                                      bob.public.address, "Q3 draft")
    tid = sent["id"]
    offer = await until_status(bob, tid, "offered")
    assert offer["direction"] == "in" and offer["note"] == "Q3 draft"
    assert offer["names"] == ["report.pdf"] and offer["total_bytes"] == len(data)
    await until_status(alice, tid, "offered")
    dest = tmp_path / "in"
    await bob.transfers.accept(tid[:8], str(dest))
    await until_status(bob, tid, "done")
    done = await until_status(alice, tid, "done")
    got = dest / "report.pdf"
    assert got.read_bytes() == data
    assert got.stat().st_mode & 0o777 == 0o640
    assert got.stat().st_mtime_ns == 1_600_000_000 * 10**9 + 123
    assert sorted(p.name for p in dest.iterdir()) == ["report.pdf"]
    assert done["bytes_sent"] == len(data)


# ------------------------------------------------------------ more happy paths

async def test_with_fsync_on_each_file_reaches_the_disk_before_its_name(
        pair: tuple[Node, Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = pair
    assert bob.db is not None
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    make_file(tmp_path / "src" / "box" / "big.bin", 3 * (1 << 20) + 5)
    for i in range(3):
        make_file(tmp_path / "src" / "box" / f"small{i}.txt", 100 + i, seed=i)
    await bob.db.run(bob.db.set_setting, SETTING_AUTO_ACCEPT, alice.public.address)

    async def send_box(dest: Path) -> None:
        await bob.db.run(bob.db.set_setting, "downloads", str(dest))
        sent = await alice.transfers.send([str(tmp_path / "src" / "box")], bob.public.address)
        await until_status(bob, sent["id"], "done")

    await send_box(tmp_path / "plain")  # the default: off
    assert synced == []
    await bob.db.run(bob.db.set_setting, "fsync", "on")
    await send_box(tmp_path / "durable")
    box = tmp_path / "durable" / "box"
    assert sorted(p.name for p in box.iterdir()) == ["big.bin", "small0.txt", "small1.txt",
                                                     "small2.txt"]
    # Synced before named: a partial file (the big one) or an unnamed one (small files,
    # O_TMPFILE: /proc shows "#inode (deleted)").
    files = [Path(p) for p in synced if ".part" in p or p.endswith(" (deleted)")]
    assert len(files) == 4 and all(p.parent == box for p in files)
    assert str(box) in synced and str(tmp_path / "durable") in synced


async def test_a_large_file_is_written_around_the_page_cache_unless_switched_off(
        pair: tuple[Node, Node], tmp_path: Path) -> None:
    alice, bob = pair
    assert bob.db is not None
    if fincore_missing() or on_tmpfs(tmp_path):
        pytest.skip("needs fincore, and a disk that is not a tmpfs")
    make_file(tmp_path / "src" / "big.bin", file_writer.DIRECT_MIN + 100)
    await bob.db.run(bob.db.set_setting, SETTING_AUTO_ACCEPT, alice.public.address)

    async def send_to(dest: Path) -> Path:
        await bob.db.run(bob.db.set_setting, "downloads", str(dest))
        sent = await alice.transfers.send([str(tmp_path / "src" / "big.bin")],
                                          bob.public.address)
        await until_status(bob, sent["id"], "done", timeout=30)
        return dest / "big.bin"

    direct = await send_to(tmp_path / "direct")  # the default: on
    assert cached_bytes(direct) <= 4096
    await bob.db.run(bob.db.set_setting, "direct-writes", "off")
    cached = await send_to(tmp_path / "cached")
    assert cached_bytes(cached) == -(-(file_writer.DIRECT_MIN + 100) // 4096) * 4096
    source = (tmp_path / "src" / "big.bin").read_bytes()
    assert direct.read_bytes() == source and cached.read_bytes() == source


async def test_auto_accept_collisions_and_links_in_the_destination(
        pair: tuple[Node, Node], tmp_path: Path) -> None:
    alice, bob = pair
    assert bob.db is not None
    dest = tmp_path / "dl"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    dest.mkdir()
    (dest / "report.pdf").write_text("an older report")
    (dest / "photos").symlink_to(outside)  # a link where a folder will arrive
    await bob.db.run(bob.db.set_setting, "downloads", str(dest))
    await bob.db.run(bob.db.set_setting, SETTING_AUTO_ACCEPT, alice.public.address)
    data = make_file(tmp_path / "src" / "report.pdf", 1000)
    inner = make_file(tmp_path / "src" / "photos" / "a.jpg", 3000)
    make_file(tmp_path / "src" / "photos" / "keep", 10)
    sent = await alice.transfers.send(
        [str(tmp_path / "src" / "report.pdf"), str(tmp_path / "src" / "photos")],
        bob.public.address)
    await until_status(alice, sent["id"], "done")
    info = await until_status(bob, sent["id"], "done")
    assert (dest / "report (1).pdf").read_bytes() == data
    assert (dest / "report.pdf").read_text() == "an older report"
    assert info["roots"] == {"photos": "photos (1)"}
    assert (dest / "photos (1)" / "a.jpg").read_bytes() == inner
    assert sorted(p.name for p in outside.iterdir()) == ["keep"]
    assert (outside / "keep").read_text() == "mine"


async def test_an_offer_to_an_offline_contact_waits_then_goes(
        node_factory: NodeFactory, tmp_path: Path) -> None:
    alice: Node = await node_factory()
    bob_home = tmp_path / "bob-home"
    bob_home.mkdir()
    bob: Node = await node_factory(home=bob_home)
    await befriend(alice, bob)
    port = bob.port
    await bob.aclose()
    make_file(tmp_path / "q.txt", 100)
    sent = await alice.transfers.send([str(tmp_path / "q.txt")], bob.public.address)

    async def waiting() -> bool:
        info = await status_of(alice, sent["id"])
        return info["status"] == "queued" and "to be online" in info["activity"]
    await wait_for(waiting)
    bob = await node_factory(home=bob_home, port=port)
    await until_status(bob, sent["id"], "offered", timeout=15)
    await until_status(alice, sent["id"], "offered")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder for sources and destinations only (node homes live beside it)."""
    path = tmp_path / "w"
    path.mkdir()
    return path


# ------------------------------------------------------------------ bad input

async def offer_by_hand(sender: Node, receiver: Node, manifest: wire.Manifest,
                        tid: bytes = b"T" * 16) -> wire.OfferReply:
    conn = await sender.reach(receiver.public.key)
    stream = await conn.open_channel(wire.KIND_OFFER)
    await stream.write_message(wire.encode(wire.Offer(tid, "", manifest)))
    raw = await stream.read_message(4096, timeout=5)
    assert raw is not None
    return wire.decode(wire.OfferReply, raw)


def hashes_of(data: bytes) -> bytes:
    size = wire.chunk_size_for(len(data))
    return b"".join(blake3.blake3(data[o:o + size]).digest()
                    for o in range(0, len(data), size))


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize(("path", "why"), [
    ("../../.ssh/authorized_keys", "outside the folder"),
    ("/etc/passwd", "absolute"),
    ("C:\\x", "drive letter"),
    ("con", "device name"),
    ("a\x00b", "control character"),
    ("evil\nname", "control character"),
])
async def test_hostile_names_are_declined_and_nothing_is_written(
        pair: tuple[Node, Node], work: Path, path: str, why: str) -> None:
    alice, bob = pair
    assert bob.db is not None
    dest = work / "dl"
    await bob.db.run(bob.db.set_setting, "downloads", str(dest))
    await bob.db.run(bob.db.set_setting, SETTING_AUTO_ACCEPT, alice.public.address)
    manifest = wire.Manifest([wire.FileEntry(path, 3, 0o644, 1, hashes_of(b"abc"))])
    reply = await offer_by_hand(alice, bob, manifest)
    assert reply.status == "declined" and why in reply.reason
    assert await bob.transfers.all() == []
    assert not dest.exists()
    assert tree(work) == []


async def test_a_contact_flooding_offers_is_told_no_past_the_cap(
        pair: tuple[Node, Node], work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = pair
    monkeypatch.setattr(transfers_module, "MAX_WAITING_OFFERS", 3)
    manifest = wire.Manifest([wire.FileEntry("a.txt", 3, 0o644, 1, hashes_of(b"abc"))])
    replies = [await offer_by_hand(alice, bob, manifest, tid=bytes([i]) * 16)
               for i in range(5)]
    assert [r.status for r in replies] == ["waiting"] * 3 + ["declined"] * 2
    assert "3 of your offers are still waiting" in replies[3].reason
    assert len(await bob.transfers.all()) == 3
    # Once Bob answers one, there is room for one more.
    await bob.transfers.decline(bytes([0]).hex() * 16)
    assert (await offer_by_hand(alice, bob, manifest, tid=b"\x09" * 16)).status == "waiting"


async def test_a_manifest_claiming_1_eb_is_refused_for_lack_of_room(
        pair: tuple[Node, Node], work: Path) -> None:
    alice, bob = pair
    size = 1 << 60
    manifest = wire.Manifest([wire.FileEntry("huge.iso", size, 0o644, 1,
                                             b"\0" * 32 * wire.chunk_count(size))])
    reply = await offer_by_hand(alice, bob, manifest)
    assert reply.status == "waiting"
    with pytest.raises(DiskFull, match=r"not enough room .* need 1.2 EB"):
        await bob.transfers.accept(b"T".hex() * 16, str(work / "dl"))
    info = await status_of(bob, b"T".hex() * 16)
    assert info["status"] == "offered"  # still waiting: another folder may have room
    assert tree(work / "dl") == []


class EvilSender:
    """Takes the place of Alice's pull handler and answers the first request as told
    (``answer(request, content)`` gives the parts: bytes, ``END`` or ``STALL``)."""

    expects: type[wire.ChunkRequest | wire.FilesRequest] = wire.ChunkRequest

    def __init__(self, node: Node, answer: Callable[[Any, Any], list[bytes]]) -> None:
        self.node = node
        self.answer = answer
        self.content: Any = b""
        self.requests: list[wire.ChunkRequest | wire.FilesRequest] = []
        node.add_channel_handler(wire.KIND_PULL, self.serve)

    async def serve(self, remote: PublicIdentity, stream: ChannelStream) -> None:
        raw = await stream.read_message(4096, timeout=5)
        assert raw is not None
        request = wire.decode_pull(raw)
        assert isinstance(request, self.expects)
        self.requests.append(request)
        for part in self.answer(request, self.content):
            if part == b"END":
                stream.end()
                await asyncio.sleep(0.5)
                return
            if part == b"STALL":
                await asyncio.sleep(2)
                return
            await stream.write(part)
        await asyncio.sleep(0.2)

    def restore(self) -> None:
        self.node.add_channel_handler(wire.KIND_PULL, self.node.transfers._on_pull)


def header(file: int, chunk: int, size: int) -> bytes:
    return encode_message(wire.encode(wire.ChunkHeader(file, chunk, size)))


async def offered_and_accepted(alice: Node, bob: Node, work: Path, size: int
                               ) -> tuple[str, bytes, Path]:
    data = make_file(work / "src" / "file.bin", size)
    sent = await alice.transfers.send([str(work / "src" / "file.bin")], bob.public.address)
    await until_status(bob, sent["id"], "offered")
    dest = work / "dl"
    await bob.transfers.accept(sent["id"], str(dest))
    return sent["id"], data, dest


@pytest.mark.parametrize(("answer", "why"), [
    (lambda r, data: [header(r.file, r.chunk, len(data)), b"x" * len(data)],
     "does not match its hash"),
    (lambda r, data: [header(99, 0, 10), b"x" * 10], "file #99, which is not in the offer"),
    (lambda r, data: [header(r.file, r.chunk, len(data) + 1), data + b"!"],
     "which has 1000"),
    (lambda r, data: [header(r.file, r.chunk + 1, len(data)), data], "not asked for"),
])
async def test_a_lying_sender_is_cut_off_and_its_data_discarded(
        pair: tuple[Node, Node], work: Path,
        answer: Callable[[wire.ChunkRequest, bytes], list[bytes]], why: str) -> None:
    alice, bob = pair
    evil = EvilSender(alice, answer)
    evil.content = make_file(work / "src" / "file.bin", 1000)
    tid, _, dest = await offered_and_accepted(alice, bob, work, 1000)
    info = await until_status(bob, tid, "failed")
    assert "the sender sent bad data and was cut off" in info["error"] and why in info["error"]
    assert tree(dest) == []  # nothing under the final name, no partial junk
    assert tree(work) == ["dl", "src", "src/file.bin"]
    await until_status(alice, tid, "cancelled")  # Alice is told


class RunLiar(EvilSender):
    """An `EvilSender` for a request of several small files at once (a `FilesRequest`);
    its content is the list of the files' bytes."""

    expects = wire.FilesRequest


def files_header(first: int, count: int, size: int) -> bytes:
    return encode_message(wire.encode(wire.FilesHeader(first, count, size)))


def damaged(contents: list[bytes], index: int) -> bytes:
    """All the files' bytes, file ``index`` with one byte changed."""
    parts = list(contents)
    parts[index] = b"!" + parts[index][1:]
    return b"".join(parts)


async def folder_offered_and_accepted(alice: Node, bob: Node, work: Path, liar: RunLiar
                                      ) -> tuple[str, Path]:
    liar.content = [make_file(work / "src" / "folder" / f"f{i}.txt", 1000, seed=i)
                     for i in range(5)]
    sent = await alice.transfers.send([str(work / "src" / "folder")], bob.public.address)
    await until_status(bob, sent["id"], "offered")
    dest = work / "dl"
    await bob.transfers.accept(sent["id"], str(dest))
    return sent["id"], dest


@pytest.mark.parametrize(("answer", "why"), [
    (lambda r, files: [files_header(0, 5, 5000), damaged(files, 2)],
     "'folder/f2.txt' does not match its hash"),
    (lambda r, files: [files_header(99, 2, 20), b"x" * 20], "not all in the offer"),
    (lambda r, files: [files_header(0, 5, 5001), b"".join(files) + b"!"], "which have 5000"),
    (lambda r, files: [files_header(1, 4, 4000), b"".join(files[1:])],
     "not asked for together"),
    (lambda r, files: [files_header(0, 4, 4000), b"".join(files[:4])],
     "not asked for together"),
    (lambda r, files: [header(0, 0, 1000), files[0]], "not asked for"),
    (lambda r, files: [files_header(0, 5, -1)], "-1 bytes"),
])
async def test_a_sender_lying_about_a_run_of_files_is_cut_off(
        pair: tuple[Node, Node], work: Path,
        answer: Callable[[wire.FilesRequest, list[bytes]], list[bytes]], why: str) -> None:
    alice, bob = pair
    liar = RunLiar(alice, answer)
    tid, dest = await folder_offered_and_accepted(alice, bob, work, liar)
    info = await until_status(bob, tid, "failed")
    assert "the sender sent bad data and was cut off" in info["error"] and why in info["error"]
    assert liar.requests == [wire.FilesRequest(0, 5)]
    # Files whose bytes hashed right may be in place, whole; nothing else is.
    for path in dest.rglob("*"):
        if path.is_file():
            index = int(path.name[1])
            assert path.name == f"f{index}.txt" and index != 2
            assert path.read_bytes() == liar.content[index]
    assert not [p for p in dest.rglob("*") if p.name.startswith(".")]
    assert tree(work / "src") == ["folder", *(f"folder/f{i}.txt" for i in range(5))]
    await until_status(alice, tid, "cancelled")


async def interrupted_with_nothing_kept(bob: Node, tid: str) -> None:
    """Bob's transfer waits for the sender to come back, with nothing verified yet."""
    async def interrupted() -> bool:
        info = await status_of(bob, tid)
        return "went away" in info["activity"]
    await wait_for(interrupted)
    info = await status_of(bob, tid)
    assert info["status"] == "receiving" and info["done_bytes"] == 0


async def test_a_sender_stopping_in_a_run_of_files_is_resumed_from_what_arrived(
        pair: tuple[Node, Node], work: Path) -> None:
    alice, bob = pair
    liar = RunLiar(alice, lambda r, files: [files_header(0, 5, 5000),
                                            b"".join(files)[:2500], b"END"])
    tid, dest = await folder_offered_and_accepted(alice, bob, work, liar)
    await interrupted_with_nothing_kept(bob, tid)
    assert tree(dest) == ["folder"]  # a run is written once all of it has arrived
    liar.restore()
    await until_status(bob, tid, "done", timeout=15)
    assert [(dest / "folder" / f"f{i}.txt").read_bytes() for i in range(5)] == liar.content
    assert tree(dest) == ["folder", *(f"folder/f{i}.txt" for i in range(5))]


async def bad_request_is_cut_off(alice: Node, bob: Node, source: Path,
                                 request: wire.ChunkRequest | wire.FilesRequest,
                                 match: str) -> None:
    """Bob pulls ``source``, offered by Alice, with ``request``: Alice ends the channel
    saying why (``match``), fails the transfer and has sent nothing."""
    sent = await alice.transfers.send([str(source)], bob.public.address)
    await until_status(alice, sent["id"], "offered")
    conn = await bob.reach(alice.public.key)
    stream = await conn.open_channel(wire.KIND_PULL, wire.encode(
        wire.PullMeta(bytes.fromhex(sent["id"]))))
    await stream.write_message(wire.encode(request))
    with pytest.raises(ChannelClosedError, match=match):
        await stream.read_all(1 << 20, timeout=5)
    info = await until_status(alice, sent["id"], "failed")
    assert "the receiver misbehaved and was cut off" in info["error"]
    assert info["bytes_sent"] == 0


async def test_a_receiver_asking_for_a_bad_run_of_files_is_cut_off(
        pair: tuple[Node, Node], work: Path) -> None:
    alice, bob = pair
    make_file(work / "folder" / "a.txt", 10)
    make_file(work / "folder" / "b.bin", 3 << 20)
    make_file(work / "folder" / "c.txt", 10)
    await bad_request_is_cut_off(alice, bob, work / "folder", wire.FilesRequest(0, 3),
                                 r"'folder/b\.bin' whole")


async def test_a_sender_stopping_mid_chunk_leaves_no_file_and_resumes_later(
        pair: tuple[Node, Node], work: Path) -> None:
    alice, bob = pair
    evil = EvilSender(alice, lambda r, data: [header(r.file, r.chunk, 1 << 20),
                                              data[:5000], b"END"])
    evil.content = make_file(work / "src" / "file.bin", 3 << 20)
    tid, data, dest = await offered_and_accepted(alice, bob, work, 3 << 20)
    await interrupted_with_nothing_kept(bob, tid)
    assert not (dest / "file.bin").exists()
    evil.restore()
    await until_status(bob, tid, "done", timeout=15)
    assert (dest / "file.bin").read_bytes() == data
    assert tree(dest) == ["file.bin"]


async def test_a_receiver_asking_out_of_range_is_cut_off(
        pair: tuple[Node, Node], work: Path) -> None:
    alice, bob = pair
    make_file(work / "f.bin", 2000)
    await bad_request_is_cut_off(alice, bob, work / "f.bin", wire.ChunkRequest(0, 7),
                                 "request for chunk 7")


async def test_a_stranger_cannot_pull_someone_elses_transfer(
        pair: tuple[Node, Node], node_factory: NodeFactory, work: Path) -> None:
    alice, bob = pair
    carol: Node = await node_factory()
    await befriend(alice, carol)
    make_file(work / "secret.bin", 2000)
    sent = await alice.transfers.send([str(work / "secret.bin")], bob.public.address)
    await until_status(alice, sent["id"], "offered")
    conn = await carol.reach(alice.public.key)
    stream = await conn.open_channel(wire.KIND_PULL, wire.encode(
        wire.PullMeta(bytes.fromhex(sent["id"]))))
    raw = await stream.read_message(4096, timeout=5)
    assert raw is not None and wire.decode_pull(raw) == wire.Cancel("no such transfer")


@pytest.fixture
def small_disk(work: Path, tmpfs: Callable[[Path, str], Path]) -> Path:
    """A 24 MiB tmpfs, mounted for the test and unmounted after it."""
    return tmpfs(work / "small", "24m")


async def test_a_disk_too_small_is_refused_before_accepting(
        pair: tuple[Node, Node], work: Path, small_disk: Path) -> None:
    alice, bob = pair
    make_file(work / "big.bin", 30 << 20)
    sent = await alice.transfers.send([str(work / "big.bin")], bob.public.address)
    await until_status(bob, sent["id"], "offered")
    with pytest.raises(DiskFull, match=r"not enough room in .*small: the files need 31\.5 MB"):
        await bob.transfers.accept(sent["id"], str(small_disk))
    assert tree(small_disk) == []


async def test_a_disk_filling_up_fails_cleanly(
        pair: tuple[Node, Node], work: Path, small_disk: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = pair
    release = asyncio.Event()
    real = alice.transfers._on_pull

    async def held(remote: PublicIdentity, stream: ChannelStream) -> None:
        await release.wait()
        await real(remote, stream)

    alice.add_channel_handler(wire.KIND_PULL, held)
    monkeypatch.setattr("sidedoor.services.transfers.FREE_SPACE_MARGIN", 0)
    data = make_file(work / "src" / "f.bin", 6 << 20)
    make_file(work / "src" / "g.bin", 100)
    sent = await alice.transfers.send([str(work / "src" / "g.bin"),
                                       str(work / "src" / "f.bin")], bob.public.address)
    await until_status(bob, sent["id"], "offered")
    await bob.transfers.accept(sent["id"], str(small_disk))
    # Someone else fills the disk after the check: the writes hit ENOSPC.
    (small_disk / "filler").write_bytes(b"\0" * (20 << 20))
    release.set()
    info = await until_status(bob, sent["id"], "failed")
    assert "is full" in info["error"] and str(small_disk) in info["error"]
    assert tree(small_disk) == ["filler", "g.bin"]  # the file that fitted is whole
    assert len(data) == 6 << 20
    await until_status(alice, sent["id"], "cancelled")


async def test_a_resumed_file_is_read_back_whole_and_damage_is_fetched_again(
        node_factory: NodeFactory, work: Path, tmp_path: Path) -> None:
    alice: Node = await node_factory()
    bob_home = tmp_path / "bob-home"
    bob_home.mkdir()
    bob: Node = await node_factory(home=bob_home)
    await befriend(alice, bob)
    port = bob.port
    # Alice answers the first request honestly, then stops.
    evil = EvilSender(alice, lambda r, data: [
        header(r.file, r.chunk, 1 << 20), data[r.chunk << 20:(r.chunk + 1) << 20], b"END"])
    evil.content = make_file(work / "src" / "file.bin", 3 << 20)
    tid, data, dest = await offered_and_accepted(alice, bob, work, 3 << 20)

    async def first_chunk_kept() -> bool:
        return (await status_of(bob, tid))["done_bytes"] == 1 << 20
    await wait_for(first_chunk_kept)
    await bob.aclose()
    (partial,) = dest.glob(".sidedoor-*")
    with partial.open("r+b") as f:  # the disk damages the verified chunk while Bob is off
        f.write(b"rot")
    evil.restore()
    bob = await node_factory(home=bob_home, port=port)
    await until_status(bob, tid, "done", timeout=15)
    assert (dest / "file.bin").read_bytes() == data
    assert tree(dest) == ["file.bin"]
    info = await until_status(alice, tid, "done")
    assert info["bytes_sent"] >= (1 << 20) + (3 << 20)  # the damaged file came again whole


async def test_a_sender_going_silent_mid_chunk_is_given_up_on(
        pair: tuple[Node, Node], work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = pair
    monkeypatch.setattr(bob.transfers, "stall_timeout", 0.3)
    evil = EvilSender(alice, lambda r, data: [header(r.file, r.chunk, 1 << 20),
                                              data[:5000], b"STALL"])
    evil.content = make_file(work / "src" / "file.bin", 2 << 20)
    tid, data, dest = await offered_and_accepted(alice, bob, work, 2 << 20)

    async def given_up() -> bool:
        return "went away" in (await status_of(bob, tid))["activity"]
    await wait_for(given_up, timeout=5)
    assert not (dest / "file.bin").exists()
    evil.restore()
    await until_status(bob, tid, "done", timeout=15)
    assert (dest / "file.bin").read_bytes() == data


async def test_a_bulk_transfer_does_not_stall_other_channels(
        pair: tuple[Node, Node], work: Path) -> None:
    alice, bob = pair

    async def echo(remote: PublicIdentity, stream: ChannelStream) -> None:
        await stream.write(await stream.read_all(1024, timeout=5))
        stream.end()

    bob.add_channel_handler("test-echo", echo)
    make_file(work / "big.bin", 96 << 20)
    sent = await alice.transfers.send([str(work / "big.bin")], bob.public.address)
    await until_status(bob, sent["id"], "offered")
    await bob.transfers.accept(sent["id"], str(work / "dl"))
    conn = await alice.reach(bob.public.key)
    loop = asyncio.get_running_loop()
    latencies = []
    began = loop.time()
    while (await status_of(bob, sent["id"]))["status"] != "done":
        start = loop.time()
        stream = await conn.open_channel("test-echo", timeout=5)
        await stream.write(b"ping")
        stream.end()
        assert await stream.read_all(1024, timeout=5) == b"ping"
        latencies.append(loop.time() - start)
    took = loop.time() - began
    # A channel starved by the bulk would wait about as long as the transfer itself.
    assert len(latencies) >= 3, (took, latencies)
    assert max(latencies) < max(0.5, took / 4), (took, latencies)


async def test_files_renamed_before_a_crash_recorded_them_are_not_fetched_again(
        node_factory: NodeFactory, work: Path, tmp_path: Path) -> None:
    alice: Node = await node_factory()
    bob_home = tmp_path / "bob-home"
    bob_home.mkdir()
    bob: Node = await node_factory(home=bob_home)
    await befriend(alice, bob)
    port = bob.port
    for i in range(30):
        make_file(work / "src" / "docs" / f"f{i}.txt", 100 + i, seed=i)
    make_file(work / "src" / "docs" / "empty.txt", 0)
    sent = await alice.transfers.send([str(work / "src" / "docs")], bob.public.address)
    await until_status(bob, sent["id"], "offered")
    dest = work / "dl"
    await bob.transfers.accept(sent["id"], str(dest))
    await until_status(bob, sent["id"], "done")
    await until_status(alice, sent["id"], "done")
    before = sorted(p.name for p in (dest / "docs").iterdir())
    await bob.aclose()
    # As if Bob had died after the renames and before his records of them.
    assert bob.db is not None
    tid = bytes.fromhex(sent["id"])
    db = sqlite3.connect(bob_home / "sidedoor.db")
    with db:
        db.execute("DELETE FROM transfer_files WHERE transfer = ?", (tid,))
        db.execute("DELETE FROM transfer_chunks WHERE transfer = ?", (tid,))
        db.execute("UPDATE transfers SET status = 'receiving', notice = '' WHERE id = ?",
                   (tid,))
    db.close()
    bob = await node_factory(home=bob_home, port=port)
    info = await until_status(bob, sent["id"], "done")
    assert sorted(p.name for p in (dest / "docs").iterdir()) == before  # no "f1 (1).txt"
    assert info["bytes_received"] == sum(100 + i for i in range(30))  # nothing came twice
