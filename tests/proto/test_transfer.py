"""The transfer messages, the manifest checks, and the receiver machine, without sockets."""

from __future__ import annotations

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidedoor.errors import BadChunk, MessageError, UnsafeFileName
from sidedoor.proto import transfer as wire
from sidedoor.proto.framing import encode_message
from sidedoor.proto.transfer_receiver import Receiver

MiB = 1 << 20


def entry(path: str, data: bytes, mode: int = 0o644) -> wire.FileEntry:
    hashes = b"".join(
        blake3.blake3(data[o:o + wire.chunk_size_for(len(data))]).digest()
        for o in range(0, len(data), wire.chunk_size_for(len(data))))
    return wire.FileEntry(path, len(data), mode, 1, hashes)


def chunks_of(data: bytes) -> list[bytes]:
    size = wire.chunk_size_for(len(data))
    return [data[o:o + size] for o in range(0, len(data), size)]


# ---------------------------------------------------------------- chunk sizes

def test_chunk_sizes_keep_every_hash_list_bounded() -> None:
    assert wire.chunk_size_for(0) == wire.chunk_size_for(10) == MiB
    assert wire.chunk_count(0) == 0 and wire.chunk_count(1) == 1
    assert wire.chunk_count(8 << 30) == 8192
    assert wire.chunk_size_for((8 << 30) + 1) == 2 * MiB
    for size in (1 << 40, 1 << 50, wire.MAX_FILE_SIZE):
        assert wire.chunk_count(size) <= wire.MAX_CHUNKS_PER_FILE
    assert wire.chunk_span(3 * MiB + 5, 3) == (3 * MiB, 5)


@given(st.integers(0, wire.MAX_FILE_SIZE))
def test_chunk_spans_tile_the_file(size: int) -> None:
    count = wire.chunk_count(size)
    assert count <= wire.MAX_CHUNKS_PER_FILE
    if count:
        last_offset, last_len = wire.chunk_span(size, count - 1)
        assert last_offset + last_len == size and 0 < last_len <= wire.chunk_size_for(size)


# ------------------------------------------------------------------- messages

def test_messages_round_trip_and_garbage_is_a_message_error() -> None:
    manifest = wire.Manifest([entry("a.txt", b"hello")], [wire.DirEntry("d", 0o755, 5)])
    offer = wire.Offer(b"t" * 16, "hi", manifest)
    assert wire.decode(wire.Offer, wire.encode(offer)) == offer
    for message in (wire.ChunkRequest(1, 2), wire.ChunkHeader(1, 2, 3), wire.Cancel("x")):
        assert wire.decode_pull(wire.encode(message)) == message
    # Golden bytes: a chunk request is a 3-element array with its tag first.
    assert wire.encode(wire.ChunkRequest(1, 2)) == bytes([0x93, 1, 1, 2])
    with pytest.raises(MessageError):
        wire.decode_pull(b"\xc1garbage")
    with pytest.raises(MessageError):
        wire.decode_pull(wire.encode(wire.OfferReply("accepted")))
    with pytest.raises(MessageError):
        wire.decode(wire.Offer, b"\x93\x01")


# ------------------------------------------------------------------ manifests

def test_a_sound_manifest_passes() -> None:
    wire.check_manifest(wire.Manifest(
        [entry("folder/a.txt", b"a" * 10), entry("b", b""), entry("big", b"x" * (MiB + 1))],
        [wire.DirEntry("folder", 0o755, 1), wire.DirEntry("empty", 0o700, 1)]))


@pytest.mark.parametrize(("manifest", "why"), [
    (wire.Manifest([]), "empty"),
    (wire.Manifest([wire.FileEntry("../../.ssh/authorized_keys", 0, 0o600, 1, b"")]),
     "outside the folder"),
    (wire.Manifest([wire.FileEntry("/etc/passwd", 0, 0o600, 1, b"")]), "absolute"),
    (wire.Manifest([wire.FileEntry("C:\\x", 0, 0o600, 1, b"")]), "drive letter"),
    (wire.Manifest([wire.FileEntry("con", 0, 0o600, 1, b"")]), "device name"),
    (wire.Manifest([wire.FileEntry("a\x00b", 0, 0o600, 1, b"")]), "control character"),
    (wire.Manifest([wire.FileEntry("a\nb", 0, 0o600, 1, b"")]), "control character"),
    (wire.Manifest([wire.FileEntry("huge", 1 << 60, 0o600, 1,
                                   b"\0" * 32 * wire.chunk_count(1 << 60))] * 1),
     None),  # 1 EB alone is a consistent manifest: the disk-space check refuses it
    (wire.Manifest([wire.FileEntry("huge", 1 << 63, 0o600, 1, b"")]), "impossible size"),
    (wire.Manifest([wire.FileEntry(f"f{i}", 1 << 61, 0o600, 1,
                                   b"\0" * 32 * wire.chunk_count(1 << 61)) for i in range(3)]),
     "more bytes than any disk"),
    (wire.Manifest([wire.FileEntry("short", 5 * MiB, 0o600, 1, b"\0" * 32)]),
     "hash list does not match"),
    (wire.Manifest([wire.FileEntry("a", 0, 0o600, 1, b""), wire.FileEntry("a", 0, 0o600, 1,
                                                                          b"")]), "twice"),
    (wire.Manifest([wire.FileEntry("a", 0, 0o600, 1, b""),
                    wire.FileEntry("a/b", 0, 0o600, 1, b"")]), "both as a file and a folder"),
    (wire.Manifest([wire.FileEntry("a", 0, 0o4755, 1, b"")]), "permission bits"),
    (wire.Manifest([wire.FileEntry("a", 0, 0o644, -1, b"")]), "modification time"),
])
def test_bad_manifests_are_refused(manifest: wire.Manifest, why: str | None) -> None:
    if why is None:
        wire.check_manifest(manifest)
        assert manifest.total_size == 1 << 60
        return
    with pytest.raises(MessageError, match=why):
        wire.check_manifest(manifest)


def test_hostile_names_raise_unsafe_file_name() -> None:
    with pytest.raises(UnsafeFileName):
        wire.check_manifest(wire.Manifest([wire.FileEntry("../x", 0, 0o600, 1, b"")]))


def test_the_sender_refuses_requests_out_of_range() -> None:
    manifest = wire.Manifest([entry("a", b"x" * (2 * MiB + 1)), entry("b", b"")])
    assert wire.check_request(manifest, wire.ChunkRequest(0, 2)).path == "a"
    for bad in (wire.ChunkRequest(0, 3), wire.ChunkRequest(0, -1), wire.ChunkRequest(2, 0),
                wire.ChunkRequest(-1, 0), wire.ChunkRequest(1, 0)):
        with pytest.raises(MessageError, match="request for"):
            wire.check_request(manifest, bad)


# ------------------------------------------------------------- the receiver

def deliver(machine: Receiver, files: list[bytes]) -> int:
    """Play an honest sender until the machine is complete; returns requests answered."""
    answered = 0
    for _ in range(10_000):
        if machine.complete:
            return answered
        for request in machine.requests():
            data = chunks_of(files[request.file])[request.chunk]
            size = machine.on_header(wire.ChunkHeader(request.file, request.chunk, len(data)))
            assert size == len(data)
            machine.on_digest(request.file, request.chunk, blake3.blake3(data).digest())
            answered += 1
    raise AssertionError("did not complete")


def test_the_window_bounds_what_is_in_flight() -> None:
    files = [b"a" * (40 * MiB), b"b" * 100]
    machine = Receiver(wire.Manifest([entry("a", files[0]), entry("b", files[1])]),
                       window_bytes=8 * MiB, max_requests=100)
    first = machine.requests()
    assert [(r.file, r.chunk) for r in first] == [(0, i) for i in range(8)]
    assert machine.in_flight_bytes == 8 * MiB and machine.requests() == []
    header = wire.ChunkHeader(0, 0, MiB)
    machine.on_header(header)
    assert machine.requests() == []  # arrived, but not verified yet: still in flight
    machine.on_digest(0, 0, blake3.blake3(chunks_of(files[0])[0]).digest())
    assert [(r.file, r.chunk) for r in machine.requests()] == [(0, 8)]
    assert machine.complete_files() == []


def test_small_files_are_limited_by_the_request_count() -> None:
    files = [bytes([i]) * 100 for i in range(50)]
    machine = Receiver(wire.Manifest([entry(f"f{i}", d) for i, d in enumerate(files)]),
                       max_requests=16)
    assert len(machine.requests()) == 16
    machine.on_disconnect()
    assert deliver(machine, files) == 50 and machine.verified_bytes == 5000


def test_verified_chunks_are_not_asked_for_again() -> None:
    data = b"z" * (5 * MiB)
    manifest = wire.Manifest([entry("a", data), entry("empty", b"")])
    machine = Receiver(manifest, verified={(0, 0), (0, 3)})
    assert [(r.file, r.chunk) for r in machine.requests()] == [(0, 1), (0, 2), (0, 4)]
    assert machine.verified_bytes == 2 * MiB
    assert machine.complete_files() == [1]  # the empty file needs nothing


@pytest.mark.parametrize(("header", "why"), [
    (wire.ChunkHeader(5, 0, 10), "not in the offer"),
    (wire.ChunkHeader(0, 1, MiB), "not asked for"),  # a real chunk, not requested
    (wire.ChunkHeader(0, 0, MiB + 1), "which has"),
    (wire.ChunkHeader(0, 0, 10), "which has"),
])
def test_a_chunk_not_asked_for_or_of_the_wrong_size_is_refused(
        header: wire.ChunkHeader, why: str) -> None:
    machine = Receiver(wire.Manifest([entry("a", b"q" * (3 * MiB))]), max_requests=1)
    machine.requests()
    with pytest.raises(BadChunk, match=why):
        machine.on_header(header)


def test_a_chunk_that_does_not_match_its_hash_is_refused() -> None:
    data = b"q" * (2 * MiB)
    machine = Receiver(wire.Manifest([entry("a", data)]))
    machine.requests()
    machine.on_header(wire.ChunkHeader(0, 0, MiB))
    with pytest.raises(BadChunk, match="does not match its hash"):
        machine.on_digest(0, 0, blake3.blake3(b"evil" * (MiB // 4)).digest())
    assert machine.verified_bytes == 0 and not machine.file_complete(0)


def test_a_sender_that_goes_away_leaves_its_chunks_missing() -> None:
    data = b"r" * (4 * MiB)
    machine = Receiver(wire.Manifest([entry("a", data)]))
    machine.requests()
    machine.on_header(wire.ChunkHeader(0, 0, MiB))  # stopped in the middle of this one
    machine.on_disconnect()
    assert machine.in_flight_bytes == 0
    assert [(r.file, r.chunk) for r in machine.requests()] == [(0, i) for i in range(4)]
    with pytest.raises(BadChunk):
        machine.on_digest(0, 0, b"")  # nothing is arriving any more


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 3 * MiB), min_size=1, max_size=6), st.data())
def test_any_resume_point_completes_with_each_chunk_verified_once(
        sizes: list[int], data: st.DataObject) -> None:
    files = [bytes([i + 1]) * size for i, size in enumerate(sizes)]
    manifest = wire.Manifest([entry(f"f{i}", d) for i, d in enumerate(files)])
    refs = [(f, c) for f, e in enumerate(manifest.files) for c in range(e.chunks)]
    done = data.draw(st.sets(st.sampled_from(refs))) if refs else set()
    machine = Receiver(manifest, verified=done, window_bytes=2 * MiB)
    assert deliver(machine, files) == len(refs) - len(done)
    assert machine.verified_bytes == sum(sizes)
    assert machine.complete_files() == list(range(len(files)))


def _pull_stream() -> tuple[bytes, list[object]]:
    """Two chunks (headers and raw bytes) then a cancel, as a sender writes them."""
    parts: list[bytes] = []
    expected: list[object] = []
    for file, data in ((0, b"a" * 5), (3, bytes(range(256)) * 3)):
        header = wire.ChunkHeader(file, 0, len(data))
        parts += [encode_message(wire.encode(header)), data]
        expected += [header, data]
    parts.append(encode_message(wire.encode(wire.Cancel("bye"))))
    expected.append(wire.Cancel("bye"))
    return b"".join(parts), expected


def _joined(items: list[wire.PullMessage | memoryview]) -> list[object]:
    """Messages as they are, consecutive byte pieces joined."""
    out: list[object] = []
    for item in items:
        if isinstance(item, memoryview):
            if out and isinstance(out[-1], bytes):
                out[-1] += bytes(item)
            else:
                out.append(bytes(item))
        else:
            out.append(item)
    return out


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 1 << 20])
def test_the_pull_reader_finds_messages_and_bytes_however_the_stream_is_cut(step: int) -> None:
    stream, expected = _pull_stream()
    reader = wire.PullReader(with_data=True)
    items: list[wire.PullMessage | memoryview] = []
    for start in range(0, len(stream), step):
        items += reader.feed(memoryview(stream)[start:start + step])
    assert _joined(items) == expected
    assert not reader.mid_message


def test_the_pull_reader_refuses_oversized_messages_and_bad_sizes() -> None:
    reader = wire.PullReader(with_data=False)
    assert reader.feed(b"\x00\x00") == [] and reader.mid_message
    with pytest.raises(MessageError, match="limit"):
        reader.feed(b"\x10\x01")
    bad = encode_message(wire.encode(wire.ChunkHeader(0, 0, -5)))
    with pytest.raises(MessageError, match="-5 bytes"):
        wire.PullReader(with_data=True).feed(bad)
    with pytest.raises(MessageError):
        wire.PullReader(with_data=False).feed(encode_message(b"\xc1garbage"))
