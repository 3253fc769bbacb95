"""The receiving side of a transfer as a state machine (sans-I/O).

It decides which chunks to ask for, keeps a window of requests in flight, and judges
what arrives: a `ChunkHeader` must answer a request still open and announce the
chunk's exact size; a `FilesHeader` must answer a `FilesRequest` still open, for
exactly the same files, and announce their exact total size; a chunk's hash
(computed by the caller, off the event loop) must match the manifest. Anything else
raises `BadChunk`, and the caller cuts the sender off. The caller does the I/O: it
sends `requests()`, reads the bytes a header announces, hashes them (for a
`FilesHeader`, each file's own bytes: a file of one chunk is its only chunk), and
reports each digest with `on_digest`.

Runs of two or more consecutive missing files of one chunk each (small files) are
asked for with one `FilesRequest` (``small_runs``); every other chunk with a
`ChunkRequest`.

States of one chunk::

    missing --requests()--> requested --on_header--> arriving --on_digest--> verified
        ^                       |                        |
        +---- on_disconnect ----+------------------------+
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Final

from sidedoor.errors import BadChunk
from sidedoor.proto.transfer import (
    MAX_FILES_PER_REQUEST,
    MAX_FILES_REQUEST_BYTES,
    ChunkHeader,
    ChunkRequest,
    FilesHeader,
    FilesRequest,
    Manifest,
    chunk_span,
)

# At most this many bytes asked for and not yet verified: what a restart may re-send.
WINDOW_BYTES: Final = 16 << 20
# And at most this many chunks (small files: many chunks fill few bytes). A run of small
# files asked for at once counts each of its files.
MAX_REQUESTS: Final = 2048

Ref = tuple[int, int]  # (file index, chunk index)


class Receiver:
    def __init__(self, manifest: Manifest, verified: Iterable[Ref] = (), *,
                 window_bytes: int = WINDOW_BYTES, max_requests: int = MAX_REQUESTS,
                 small_runs: bool = True) -> None:
        self.manifest = manifest
        self.window_bytes = window_bytes
        self.max_requests = max_requests
        self.small_runs = small_runs
        done = set(verified)
        self._missing: deque[Ref] = deque()
        self._left: list[int] = []  # chunks not yet verified, per file
        self.verified_bytes = 0
        for index, entry in enumerate(manifest.files):
            left = 0
            for chunk in range(entry.chunks):
                if (index, chunk) in done:
                    self.verified_bytes += chunk_span(entry.size, chunk)[1]
                else:
                    self._missing.append((index, chunk))
                    left += 1
            self._left.append(left)
        self._requested: dict[Ref, int] = {}
        # Open `FilesRequest`s: first file -> (count, total size).
        self._runs: dict[int, tuple[int, int]] = {}
        self._arriving: dict[Ref, int] = {}
        self._in_flight = 0
        self._open = 0  # chunks asked for and not yet verified

    # ------------------------------------------------------------ queries
    @property
    def complete(self) -> bool:
        return (not self._missing and not self._requested and not self._arriving
                and not self._runs)

    @property
    def awaiting_headers(self) -> bool:
        """Requests are open that the sender has not begun to answer."""
        return bool(self._requested) or bool(self._runs)

    @property
    def in_flight_bytes(self) -> int:
        return self._in_flight

    def file_complete(self, index: int) -> bool:
        return self._left[index] == 0

    def chunks_left(self, index: int) -> int:
        """Chunks of file ``index`` not verified yet (arriving ones included)."""
        return self._left[index]

    def complete_files(self) -> list[int]:
        """Files with every chunk verified (empty files from the start)."""
        return [i for i, left in enumerate(self._left) if left == 0]

    # ------------------------------------------------------------ inputs
    def requests(self) -> list[ChunkRequest | FilesRequest]:
        """New requests to send now: as many as the window has room for."""
        out: list[ChunkRequest | FilesRequest] = []
        files = self.manifest.files
        missing = self._missing
        while (missing and self._in_flight < self.window_bytes
               and self._open < self.max_requests):
            ref = missing.popleft()
            entry = files[ref[0]]
            if not self.small_runs or entry.chunks != 1:
                size = chunk_span(entry.size, ref[1])[1]
                self._requested[ref] = size
                self._in_flight += size
                self._open += 1
                out.append(ChunkRequest(*ref))
                continue
            # A file of one chunk: with the missing files of one chunk right after it.
            first = ref[0]
            count, total = 1, entry.size
            while (missing and count < MAX_FILES_PER_REQUEST
                   and self._open + count < self.max_requests
                   and self._in_flight + total < self.window_bytes):
                file = missing[0][0]
                size = files[file].size
                if (file != first + count or files[file].chunks != 1
                        or total + size > MAX_FILES_REQUEST_BYTES):
                    break
                missing.popleft()
                count += 1
                total += size
            self._in_flight += total
            self._open += count
            if count == 1:  # alone: no cheaper than a chunk request
                self._requested[ref] = total
                out.append(ChunkRequest(*ref))
            else:
                self._runs[first] = (count, total)
                out.append(FilesRequest(first, count))
        return out

    def on_header(self, header: ChunkHeader) -> int:
        """A chunk is about to arrive: how many bytes to read for it; `BadChunk` if unasked."""
        ref = (header.file, header.chunk)
        size = self._requested.get(ref)
        if size is None:
            if not 0 <= header.file < len(self.manifest.files):
                raise BadChunk(f"the sender sent data for file #{header.file}, which is not "
                               "in the offer")
            raise BadChunk(f"the sender sent chunk {header.chunk} of "
                           f"{self.manifest.files[header.file].path!r}, which was not asked for")
        if header.size != size:
            raise BadChunk(f"the sender sent {header.size} bytes for chunk {header.chunk} of "
                           f"{self.manifest.files[header.file].path!r}, which has {size}")
        del self._requested[ref]
        self._arriving[ref] = size
        return size

    def on_files_header(self, header: FilesHeader) -> list[int]:
        """Files are about to arrive: the size of each, in order (their bytes follow one
        after another); `BadChunk` unless they answer an open `FilesRequest` exactly."""
        first, count = header.first, header.count
        run = self._runs.get(first)
        files = self.manifest.files
        if run is None or run[0] != count:
            if not 0 <= first < len(files) or not 0 < count <= len(files) - first:
                raise BadChunk(f"the sender sent data for files #{first} to "
                               f"#{first + count - 1}, which are not all in the offer")
            raise BadChunk(f"the sender sent files #{first} to #{first + count - 1} "
                           f"({files[first].path!r}, ...), which were not asked for together")
        if header.size != run[1]:
            raise BadChunk(f"the sender sent {header.size} bytes for files #{first} to "
                           f"#{first + count - 1}, which have {run[1]}")
        del self._runs[first]
        sizes = [files[file].size for file in range(first, first + count)]
        for file, size in enumerate(sizes, first):
            self._arriving[(file, 0)] = size
        return sizes

    def on_digest(self, file: int, chunk: int, digest: bytes) -> bool:
        """The hash of an arrived chunk; True when it completes its file. `BadChunk` if wrong."""
        ref = (file, chunk)
        size = self._arriving.pop(ref, None)
        if size is None:
            raise BadChunk(f"chunk {chunk} of file #{file} was not arriving")  # caller's bug
        self._in_flight -= size
        self._open -= 1
        entry = self.manifest.files[file]
        if entry.hash_of(chunk) != digest:
            self._missing.appendleft(ref)
            raise BadChunk(f"chunk {chunk} of {entry.path!r} does not match its hash: the "
                           "data was damaged or the sender lied")
        self.verified_bytes += size
        self._left[file] -= 1
        return self._left[file] == 0

    def on_disconnect(self) -> None:
        """The sender went away: what was asked for and not verified is missing again."""
        lost = sorted([*self._requested, *self._arriving, *(
            (file, 0) for first, (count, _) in self._runs.items()
            for file in range(first, first + count))])
        self._requested.clear()
        self._arriving.clear()
        self._runs.clear()
        self._in_flight = 0
        self._open = 0
        self._missing.extendleft(reversed(lost))

    def reopen_file(self, file: int) -> None:
        """A completed file failed its final check on disk: ask for all of it again."""
        entry = self.manifest.files[file]
        for chunk in reversed(range(entry.chunks)):
            self._missing.appendleft((file, chunk))
            self.verified_bytes -= chunk_span(entry.size, chunk)[1]
        self._left[file] = entry.chunks
