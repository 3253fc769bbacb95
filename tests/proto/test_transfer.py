"""The transfer messages, the manifest checks, and the receiver machine, without sockets."""

from __future__ import annotations

import blake3
import msgspec
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
    for message in (wire.ChunkRequest(1, 2), wire.ChunkHeader(1, 2, 3), wire.Cancel("x"),
                    wire.FilesRequest(4, 5), wire.FilesHeader(4, 5, 6)):
        assert wire.decode_pull(wire.encode(message)) == message
    # Golden bytes: a chunk request is a 3-element array with its tag first.
    assert wire.encode(wire.ChunkRequest(1, 2)) == bytes([0x93, 1, 1, 2])
    assert wire.encode(wire.FilesRequest(1, 2)) == bytes([0x93, 4, 1, 2])
    assert wire.encode(wire.FilesHeader(1, 2, 3)) == bytes([0x94, 5, 1, 2, 3])
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


def small_files_manifest(sizes: list[int]) -> wire.Manifest:
    return wire.Manifest([entry(f"f{i}", bytes([i % 256]) * size)
                          for i, size in enumerate(sizes)])


def test_the_sender_refuses_files_requests_out_of_range_or_too_big() -> None:
    manifest = small_files_manifest([10, 20, 2 * MiB, 30, 0, MiB, MiB, 5])
    assert wire.check_files_request(manifest, wire.FilesRequest(0, 2)) == 30
    assert wire.check_files_request(manifest, wire.FilesRequest(5, 1)) == MiB
    assert wire.check_files_request(manifest, wire.FilesRequest(7, 1)) == 5
    for bad, why in [
        (wire.FilesRequest(0, 0), "0 files at once"),
        (wire.FilesRequest(0, -3), "-3 files at once"),
        (wire.FilesRequest(0, wire.MAX_FILES_PER_REQUEST + 1), "files at once"),
        (wire.FilesRequest(-1, 2), "which the offer does not have"),
        (wire.FilesRequest(7, 2), "which the offer does not have"),
        (wire.FilesRequest(8, 1), "which the offer does not have"),
        (wire.FilesRequest(1 << 62, 1), "which the offer does not have"),
        (wire.FilesRequest(1, 2), "has 2 chunks"),  # a large file, not one chunk
        (wire.FilesRequest(3, 2), "has 0 chunks"),  # an empty file: nothing to send
        (wire.FilesRequest(5, 2), "bytes of files at once"),
    ]:
        with pytest.raises(MessageError, match=why):
            wire.check_files_request(manifest, bad)


# ------------------------------------------------------------- the receiver

def answer(machine: Receiver, files: list[bytes],
           request: wire.ChunkRequest | wire.FilesRequest) -> None:
    """What an honest sender and the caller do for one request."""
    if isinstance(request, wire.FilesRequest):
        datas = files[request.first:request.first + request.count]
        sizes = machine.on_files_header(wire.FilesHeader(
            request.first, request.count, sum(map(len, datas))))
        assert sizes == [len(d) for d in datas]
        for file, data in enumerate(datas, request.first):
            machine.on_digest(file, 0, blake3.blake3(data).digest())
        return
    data = chunks_of(files[request.file])[request.chunk]
    size = machine.on_header(wire.ChunkHeader(request.file, request.chunk, len(data)))
    assert size == len(data)
    machine.on_digest(request.file, request.chunk, blake3.blake3(data).digest())


def deliver(machine: Receiver, files: list[bytes]) -> int:
    """Play an honest sender until the machine is complete; returns chunks answered."""
    answered = 0
    for _ in range(10_000):
        if machine.complete:
            return answered
        for request in machine.requests():
            answer(machine, files, request)
            answered += request.count if isinstance(request, wire.FilesRequest) else 1
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
                       max_requests=16, small_runs=False)
    assert len(machine.requests()) == 16
    machine.on_disconnect()
    assert deliver(machine, files) == 50 and machine.verified_bytes == 5000


def test_small_files_are_asked_for_in_runs_of_consecutive_missing_files() -> None:
    sizes = [100] * 10 + [3 * MiB] + [100] * 5 + [0] + [100] * 4
    manifest = small_files_manifest(sizes)
    verified = {(3, 0), (12, 0)}
    machine = Receiver(manifest, verified)
    requests = machine.requests()
    # Verified files, a large file and an empty one end a run; the large one's chunks
    # are asked for one by one.
    # A file alone is asked for as a chunk.
    assert requests == [wire.FilesRequest(0, 3), wire.FilesRequest(4, 6),
                        *(wire.ChunkRequest(10, c) for c in range(3)),
                        wire.ChunkRequest(11, 0), wire.FilesRequest(13, 3),
                        wire.FilesRequest(17, 4)]
    assert machine.awaiting_headers and not machine.complete
    files = [bytes([i % 256]) * size for i, size in enumerate(sizes)]
    for request in requests:
        answer(machine, files, request)
    assert machine.complete and machine.verified_bytes == sum(sizes)


def test_older_senders_say_nothing_of_batches_and_ignore_the_flag() -> None:
    """Nodes from before `FilesRequest` encode manifests of two fields: theirs decode
    with ``batches`` False (the receiver then asks one file at a time), and ours decode
    in their shape, the flag ignored."""

    class OldManifest(msgspec.Struct, array_like=True, frozen=True):
        files: list[wire.FileEntry]
        dirs: list[wire.DirEntry] = []

    files = [entry(f"f{i}", b"x" * 100) for i in range(5)]
    old = wire.decode(wire.Manifest, msgspec.msgpack.encode(OldManifest(files)))
    assert old == wire.Manifest(files) and not old.batches
    ours = wire.Manifest(files, batches=True)
    assert msgspec.msgpack.decode(wire.encode(ours), type=OldManifest).files == files


def test_runs_are_bounded_by_count_bytes_and_the_window() -> None:
    count = wire.MAX_FILES_PER_REQUEST + 10
    machine = Receiver(small_files_manifest([10] * count), max_requests=10_000)
    assert machine.requests() == [wire.FilesRequest(0, wire.MAX_FILES_PER_REQUEST),
                                  wire.FilesRequest(wire.MAX_FILES_PER_REQUEST, 10)]
    half = MiB // 2
    machine = Receiver(small_files_manifest([half, half, 1, MiB, 7]))
    assert machine.requests() == [wire.FilesRequest(0, 2), wire.ChunkRequest(2, 0),
                                  wire.ChunkRequest(3, 0), wire.ChunkRequest(4, 0)]
    machine = Receiver(small_files_manifest([100] * 50), max_requests=16)
    assert machine.requests() == [wire.FilesRequest(0, 16)]
    assert machine.requests() == []  # 16 files in flight: the limit
    machine = Receiver(small_files_manifest([MiB] * 5), window_bytes=2 * MiB)
    assert machine.requests() == [wire.ChunkRequest(0, 0), wire.ChunkRequest(1, 0)]
    assert machine.in_flight_bytes == 2 * MiB and machine.requests() == []


@pytest.mark.parametrize(("header", "why"), [
    (wire.FilesHeader(1, 3, 300), "not asked for together"),  # inside a run
    (wire.FilesHeader(0, 2, 200), "not asked for together"),  # part of a run
    (wire.FilesHeader(0, 5, 500), "not asked for together"),  # more than the run
    (wire.FilesHeader(4, 1, 100), "not asked for together"),  # never asked for
    (wire.FilesHeader(0, 4, 401), "which have 400"),
    (wire.FilesHeader(0, 4, 1), "which have 400"),
    (wire.FilesHeader(5, 1, 100), "not all in the offer"),
    (wire.FilesHeader(-1, 2, 100), "not all in the offer"),
    (wire.FilesHeader(3, 9, 900), "not all in the offer"),
    (wire.FilesHeader(0, 0, 1), "not all in the offer"),
])
def test_files_not_asked_for_or_of_the_wrong_size_are_refused(
        header: wire.FilesHeader, why: str) -> None:
    machine = Receiver(small_files_manifest([100] * 5), max_requests=4)
    assert machine.requests() == [wire.FilesRequest(0, 4)]
    with pytest.raises(BadChunk, match=why):
        machine.on_files_header(header)


def test_a_run_is_answered_once_and_its_files_are_judged_one_by_one() -> None:
    files = [bytes([i]) * size for i, size in enumerate([10, 20, 30])]
    machine = Receiver(small_files_manifest([10, 20, 30]))
    assert machine.requests() == [wire.FilesRequest(0, 3)]
    with pytest.raises(BadChunk, match="was not asked for"):
        machine.on_header(wire.ChunkHeader(1, 0, 20))  # a file of the run, as a chunk
    machine.on_files_header(wire.FilesHeader(0, 3, 60))
    with pytest.raises(BadChunk, match="not asked for together"):
        machine.on_files_header(wire.FilesHeader(0, 3, 60))  # the same answer again
    assert machine.on_digest(0, 0, blake3.blake3(files[0]).digest())
    with pytest.raises(BadChunk, match="does not match its hash"):
        machine.on_digest(1, 0, blake3.blake3(b"evil").digest())
    assert machine.verified_bytes == 10 and not machine.file_complete(1)
    # The damaged file is missing again, the others are not.
    assert machine.on_digest(2, 0, blake3.blake3(files[2]).digest())
    assert machine.requests() == [wire.ChunkRequest(1, 0)]


def test_a_sender_that_goes_away_leaves_its_runs_missing() -> None:
    files = [bytes([i]) * 10 for i in range(8)]
    machine = Receiver(small_files_manifest([10] * 8), max_requests=3)
    assert machine.requests() == [wire.FilesRequest(0, 3)]
    machine.on_files_header(wire.FilesHeader(0, 3, 30))
    assert machine.on_digest(0, 0, blake3.blake3(files[0]).digest())
    assert machine.requests() == [wire.ChunkRequest(3, 0)]  # one verified: room for one
    machine.on_disconnect()  # files 1 and 2 arriving, 3 asked for
    assert machine.in_flight_bytes == 0 and not machine.awaiting_headers
    assert machine.requests() == [wire.FilesRequest(1, 3)]
    with pytest.raises(BadChunk):
        machine.on_header(wire.ChunkHeader(3, 0, 10))  # the old request is gone
    machine.on_disconnect()
    assert deliver(machine, files) == 7 and machine.verified_bytes == 80


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
@given(st.lists(st.one_of(st.integers(0, 3 * MiB), st.integers(0, 300)), min_size=1,
                max_size=12), st.data(), st.booleans())
def test_any_resume_point_completes_with_each_chunk_verified_once(
        sizes: list[int], data: st.DataObject, small_runs: bool) -> None:
    files = [bytes([i + 1]) * size for i, size in enumerate(sizes)]
    manifest = wire.Manifest([entry(f"f{i}", d) for i, d in enumerate(files)])
    refs = [(f, c) for f, e in enumerate(manifest.files) for c in range(e.chunks)]
    done = data.draw(st.sets(st.sampled_from(refs))) if refs else set()
    machine = Receiver(manifest, verified=done, window_bytes=2 * MiB, max_requests=5,
                       small_runs=small_runs)
    assert deliver(machine, files) == len(refs) - len(done)
    assert machine.verified_bytes == sum(sizes)
    assert machine.complete_files() == list(range(len(files)))


def _pull_stream() -> tuple[bytes, list[object]]:
    """Two chunks and a run of files (headers and raw bytes) then a cancel, as a sender
    writes them."""
    parts: list[bytes] = []
    expected: list[object] = []
    for file, data in ((0, b"a" * 5), (3, bytes(range(256)) * 3)):
        header = wire.ChunkHeader(file, 0, len(data))
        parts += [encode_message(wire.encode(header)), data]
        expected += [header, data]
    files = wire.FilesHeader(4, 3, 300)
    parts += [encode_message(wire.encode(files)), b"x" * 100 + b"y" * 200]
    expected += [files, b"x" * 100 + b"y" * 200]
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
    for size in (0, -1):
        bad = encode_message(wire.encode(wire.FilesHeader(0, 1, size)))
        with pytest.raises(MessageError, match=f"{size} bytes"):
            wire.PullReader(with_data=True).feed(bad)
    # On the sender's side a header is a message like any other (refused by its caller).
    assert wire.PullReader(with_data=False).feed(
        encode_message(wire.encode(wire.FilesHeader(0, 1, 5)))) == [wire.FilesHeader(0, 1, 5)]
    with pytest.raises(MessageError):
        wire.PullReader(with_data=False).feed(encode_message(b"\xc1garbage"))


def test_the_files_of_a_run_are_hashed_one_by_one() -> None:
    assert wire.hash_files(b"abbccc", [1, 2, 3]) == [
        blake3.blake3(part).digest() for part in (b"a", b"bb", b"ccc")]
    assert wire.hash_files(memoryview(b"xy"), []) == []
