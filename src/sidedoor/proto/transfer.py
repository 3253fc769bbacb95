"""Messages of file transfers, the manifest, and the rules both sides check (sans-I/O).

Channel kinds, all opened between contacts only:

* ``file-offer`` (sender -> receiver): the sender writes one `Offer` message (the
  transfer id, a note, the `Manifest`); the receiver answers one `OfferReply`
  (``waiting`` for its user, ``accepted`` at once, or ``declined``) and ends.
* ``file-pull`` (receiver -> sender): the meta is a `PullMeta` naming the transfer.
  The receiver writes `ChunkRequest` messages, a window of them in flight; the
  sender answers each with a `ChunkHeader` message followed by exactly ``size``
  raw bytes (no copy through msgpack). Consecutive files of one chunk each (small
  files) are asked for together with one `FilesRequest`, answered by one
  `FilesHeader` and the files' bytes one after another: a message each way per
  hundred small files instead of per file. Either side may send `Cancel` and end.
* ``file-notice`` (either way): the meta is a `Notice` (declined, cancelled, done);
  the receiver of the notice ends the channel.

Every message on a channel is length-prefixed (`proto.framing.encode_message`).
The receiver derives each file's chunk size from its size (`chunk_size_for`), so a
manifest's hash lists can be checked against its sizes before anything is written.
"""

from __future__ import annotations

import struct
from typing import Final

import blake3
import msgspec

from sidedoor.errors import MessageError, UnsafeFileName
from sidedoor.proto.codec import decode as decode  # the services call wire.decode
from sidedoor.proto.file_names import PathChecker

KIND_OFFER: Final = "file-offer"
KIND_PULL: Final = "file-pull"
KIND_NOTICE: Final = "file-notice"

HASH_LEN: Final = 32
TRANSFER_ID_LEN: Final = 16
# Chunks are at least 1 MiB (few messages per byte, resume loses little) and grow by
# powers of two so that no file has more than MAX_CHUNKS_PER_FILE of them: a file's
# hash list stays under 256 KiB however large the file, so manifests are bounded by
# the number of files, not their size (a 1 TiB file has 128 MiB chunks). A big chunk
# costs no memory: both sides stream it in pieces.
MIN_CHUNK: Final = 1 << 20
MAX_CHUNKS_PER_FILE: Final = 8192
MAX_FILE_SIZE: Final = 1 << 62
MAX_FILES: Final = 100_000
MAX_DIRS: Final = 100_000
MAX_NOTE_LEN: Final = 280
MAX_REASON_LEN: Final = 200
MAX_OFFER_BYTES: Final = 64 << 20
MAX_CONTROL_MESSAGE: Final = 4096
# One `FilesRequest` names at most this many files and bytes: the sender reads them all
# before it answers (so a file that changed is refused before any of the answer is
# written), and a file of one chunk always fits.
MAX_FILES_PER_REQUEST: Final = 1024
MAX_FILES_REQUEST_BYTES: Final = MIN_CHUNK

_MODE_BITS: Final = 0o777


def chunk_size_for(size: int) -> int:
    """The chunk size of a file of ``size`` bytes (both sides compute it the same way)."""
    chunk = MIN_CHUNK
    while size > chunk * MAX_CHUNKS_PER_FILE:
        chunk <<= 1
    return chunk


def chunk_count(size: int) -> int:
    """How many chunks a file of ``size`` bytes has (an empty file has none)."""
    chunk = chunk_size_for(size)
    return -(-size // chunk)


def chunk_span(size: int, index: int) -> tuple[int, int]:
    """(offset, length) of chunk ``index`` of a file of ``size`` bytes."""
    chunk = chunk_size_for(size)
    offset = index * chunk
    return offset, min(chunk, size - offset)


def file_id(hashes: bytes) -> bytes:
    """A file's id: the BLAKE3 hash of its chunk-hash list."""
    return blake3.blake3(hashes).digest()


class FileEntry(msgspec.Struct, array_like=True, frozen=True):
    path: str  # relative, "/" between parts, checked by `check_path`
    size: int
    mode: int  # permission bits only (0o777)
    mtime_ns: int
    hashes: bytes  # the BLAKE3 hash of each chunk, concatenated

    def hash_of(self, index: int) -> bytes:
        return self.hashes[index * HASH_LEN:(index + 1) * HASH_LEN]

    @property
    def chunks(self) -> int:
        return len(self.hashes) // HASH_LEN


class DirEntry(msgspec.Struct, array_like=True, frozen=True):
    path: str
    mode: int
    mtime_ns: int


class Manifest(msgspec.Struct, array_like=True, frozen=True):
    files: list[FileEntry]
    dirs: list[DirEntry] = []
    # The sender answers `FilesRequest`. Nodes from before it existed send no such
    # field (it decodes as False), and ignore it when they receive it: a receiver asks
    # them one file at a time. Kept in the manifest because the receiver stores that.
    batches: bool = False

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


class Offer(msgspec.Struct, array_like=True, frozen=True):
    transfer_id: bytes
    note: str
    manifest: Manifest


class OfferReply(msgspec.Struct, array_like=True, frozen=True):
    status: str  # waiting, accepted, declined
    reason: str = ""


class PullMeta(msgspec.Struct, array_like=True, frozen=True):
    transfer_id: bytes


class Notice(msgspec.Struct, array_like=True, frozen=True):
    transfer_id: bytes
    what: str  # declined, cancelled, done
    reason: str = ""


class ChunkRequest(msgspec.Struct, tag=1, array_like=True, frozen=True):
    file: int
    chunk: int


class ChunkHeader(msgspec.Struct, tag=2, array_like=True, frozen=True):
    file: int
    chunk: int
    size: int


class Cancel(msgspec.Struct, tag=3, array_like=True, frozen=True):
    reason: str


class FilesRequest(msgspec.Struct, tag=4, array_like=True, frozen=True):
    """Files ``first`` to ``first + count - 1``, each whole and of exactly one chunk."""

    first: int
    count: int


class FilesHeader(msgspec.Struct, tag=5, array_like=True, frozen=True):
    """The answer to a `FilesRequest`: ``size`` raw bytes follow, the files' bytes in
    order, each as long as the manifest says (so no per-file framing is needed)."""

    first: int
    count: int
    size: int


PullMessage = ChunkRequest | ChunkHeader | Cancel | FilesRequest | FilesHeader
NOTICE_KINDS: Final = ("declined", "cancelled", "done")
REPLY_STATUSES: Final = ("waiting", "accepted", "declined")

_encoder = msgspec.msgpack.Encoder()
_pull_decoder = msgspec.msgpack.Decoder(PullMessage)


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode_pull(data: bytes | memoryview) -> PullMessage:
    try:
        message: PullMessage = _pull_decoder.decode(data)
    except (msgspec.MsgspecError, UnicodeDecodeError) as exc:
        raise MessageError(f"malformed transfer message: {exc}") from exc
    return message


_LENGTH = struct.Struct(">I")  # the length prefix of `proto.framing.encode_message`


class PullReader:
    """Splits what arrives on a pull channel into messages and chunk bytes (sans-I/O).

    `feed` takes whatever a read returned and gives back, in order, the messages it
    completes and, after each `ChunkHeader` or `FilesHeader` (with ``with_data``), views
    of the raw bytes that follow it, without copying them. One read of many small messages thus
    costs one call, not one read per message: with thousands of small files in
    flight, that per-message overhead was the sender's and the receiver's main cost.
    The caller must judge each header (`Receiver.on_header`, `Receiver.on_files_header`)
    before using the bytes after it: a header's size is trusted here only to find where
    the next message starts.
    """

    def __init__(self, *, with_data: bool) -> None:
        self.with_data = with_data
        self._pending = bytearray()  # a message begun and not yet complete
        self._data_left = 0  # chunk bytes still owed after the last header

    @property
    def mid_message(self) -> bool:
        """Part of a message or of a chunk's bytes has arrived, and not the rest."""
        return bool(self._pending) or self._data_left > 0

    def feed(self, data: bytes | memoryview) -> list[PullMessage | memoryview]:
        out: list[PullMessage | memoryview] = []
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        pending = self._pending
        while view:
            if self._data_left:
                n = min(len(view), self._data_left)
                out.append(view[:n])
                view = view[n:]
                self._data_left -= n
                continue
            if len(pending) < _LENGTH.size:
                take = _LENGTH.size - len(pending)
                pending += view[:take]
                view = view[take:]
                if len(pending) < _LENGTH.size:
                    break
            (length,) = _LENGTH.unpack_from(pending)
            if length > MAX_CONTROL_MESSAGE:
                raise MessageError(f"the peer sent a {length}-byte message on a transfer "
                                   f"channel; the limit is {MAX_CONTROL_MESSAGE}")
            take = _LENGTH.size + length - len(pending)
            pending += view[:take]
            view = view[take:]
            if len(pending) < _LENGTH.size + length:
                break
            message = decode_pull(bytes(pending[_LENGTH.size:]))
            pending.clear()
            out.append(message)
            if isinstance(message, ChunkHeader | FilesHeader) and self.with_data:
                if message.size <= 0:
                    raise MessageError(f"a chunk header announcing {message.size} bytes")
                self._data_left = message.size
        return out


def check_manifest(manifest: Manifest) -> None:
    """Everything a receiver checks of a manifest before accepting it; `MessageError` if not.

    Names must be safe (`check_path`), unique, and no file may sit where another
    entry needs a folder; sizes, modes and times must be in range; each hash list
    must have exactly one hash per chunk of the stated size.
    """
    if len(manifest.files) > MAX_FILES or len(manifest.dirs) > MAX_DIRS:
        raise MessageError(f"the offer names more than {MAX_FILES} files or folders")
    if not manifest.files and not manifest.dirs:
        raise MessageError("the offer is empty")
    check = PathChecker()
    # Paths as strings: a checked path has one spelling, so equal strings are equal paths.
    file_paths: set[str] = set()
    dir_paths: set[str] = set()
    folders: set[tuple[str, ...]] = set()
    total = 0
    for entry in manifest.files:
        parts = check(entry.path)
        if entry.path in file_paths:
            raise MessageError(f"the offer names {entry.path!r} twice")
        file_paths.add(entry.path)
        if len(parts) > 1 and parts[:-1] not in folders:
            folders.add(parts[:-1])
            dir_paths.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if not 0 <= entry.size <= MAX_FILE_SIZE:
            raise MessageError(f"{entry.path!r} claims an impossible size ({entry.size} bytes)")
        total += entry.size
        if total > MAX_FILE_SIZE:
            raise MessageError("the offer claims more bytes than any disk holds")
        if len(entry.hashes) != chunk_count(entry.size) * HASH_LEN:
            raise MessageError(f"{entry.path!r}: the hash list does not match its size")
        _check_mode_time(entry.path, entry.mode, entry.mtime_ns)
    for directory in manifest.dirs:
        parts = check(directory.path)
        _check_mode_time(directory.path, directory.mode, directory.mtime_ns)
        dir_paths.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    clash = file_paths & dir_paths
    if clash:
        raise UnsafeFileName(f"{min(clash)!r} is offered both as a file and a folder")


def _check_mode_time(path: str, mode: int, mtime_ns: int) -> None:
    if mode & ~_MODE_BITS or mode < 0:
        raise MessageError(f"{path!r}: mode {mode:o} is not permission bits")
    if not 0 <= mtime_ns < 1 << 63:
        raise MessageError(f"{path!r}: impossible modification time")


def check_request(manifest: Manifest, request: ChunkRequest) -> FileEntry:
    """The sender's check of a chunk request; `MessageError` for one out of range."""
    if not 0 <= request.file < len(manifest.files):
        raise MessageError(f"a request for file #{request.file}, which the offer does not have")
    entry = manifest.files[request.file]
    if not 0 <= request.chunk < entry.chunks:
        raise MessageError(f"a request for chunk {request.chunk} of {entry.path!r}, which has "
                           f"{entry.chunks}")
    return entry


def hash_files(data: bytes | memoryview, sizes: list[int]) -> list[bytes]:
    """The BLAKE3 hash of each file whose bytes follow one another in ``data`` (the
    answer to a `FilesRequest`): each file is one chunk, so this is its hash list."""
    view = memoryview(data)
    digests = []
    at = 0
    for size in sizes:
        digests.append(blake3.blake3(view[at:at + size]).digest())
        at += size
    return digests


def check_files_request(manifest: Manifest, request: FilesRequest) -> int:
    """The sender's check of a `FilesRequest`: the bytes its answer carries; `MessageError`
    for files out of range, too many at once, or one that is not a single chunk."""
    first, count = request.first, request.count
    if not 1 <= count <= MAX_FILES_PER_REQUEST:
        raise MessageError(f"a request for {count} files at once; at most "
                           f"{MAX_FILES_PER_REQUEST} may be asked for together")
    if not 0 <= first <= len(manifest.files) - count:
        raise MessageError(f"a request for files #{first} to #{first + count - 1}, which the "
                           "offer does not have")
    total = 0
    for entry in manifest.files[first:first + count]:
        if entry.chunks != 1:
            raise MessageError(f"a request for {entry.path!r} whole among other files; it "
                               f"has {entry.chunks} chunks")
        total += entry.size
    if total > MAX_FILES_REQUEST_BYTES:
        raise MessageError(f"a request for {total} bytes of files at once; at most "
                           f"{MAX_FILES_REQUEST_BYTES} may be asked for together")
    return total
