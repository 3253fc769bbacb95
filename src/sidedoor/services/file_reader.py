"""The sender's disk: reading the chunks a receiver asks for (blocking; one worker thread).

A file is checked when it is opened: if its size or modification time is no longer
what the manifest says, it changed since it was offered, and the transfer stops
with that reason (the receiver would reject its chunks anyway).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import NamedTuple

from sidedoor.errors import TransferError
from sidedoor.proto.transfer import Manifest, chunk_span

MAX_OPEN_FILES = 32


class FilesRun(NamedTuple):
    """Whole files ``first`` to ``first + number - 1`` (one chunk each), ``length`` bytes
    in all: the answer to a `FilesRequest`."""

    first: int
    number: int
    length: int


Piece = tuple[int, int, int, int]  # (file, chunk, offset within the chunk, length)


class SourceFiles:
    def __init__(self, manifest: Manifest, sources: list[str]) -> None:
        self.manifest = manifest
        self.sources = sources
        self._open: OrderedDict[int, int] = OrderedDict()

    def _fd(self, file: int) -> int:
        fd = self._open.get(file)
        if fd is not None:
            self._open.move_to_end(file)
            return fd
        fd = self._open[file] = self._open_unchanged(file)
        while len(self._open) > MAX_OPEN_FILES:
            os.close(self._open.popitem(last=False)[1])
        return fd

    def _open_unchanged(self, file: int) -> int:
        """A descriptor of ``file``'s source; `TransferError` if it changed since the offer."""
        entry, path = self.manifest.files[file], self.sources[file]
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise TransferError(f"{path} can no longer be read: {exc.strerror}") from exc
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
            os.close(fd)
            raise TransferError(f"{path} changed since it was offered; send it again")
        return fd

    def read(self, pieces: list[Piece]) -> list[bytes]:
        """The bytes of each (file, chunk, offset within the chunk, length)."""
        out = []
        for file, chunk, offset, length in pieces:
            start, _ = chunk_span(self.manifest.files[file].size, chunk)
            try:
                data = os.pread(self._fd(file), length, start + offset)
            except OSError as exc:
                raise TransferError(f"cannot read {self.sources[file]}: {exc.strerror}") \
                    from exc
            if len(data) != length:
                raise TransferError(f"{self.sources[file]} got shorter since it was offered")
            out.append(data)
        return out

    def read_mixed(self, items: list[Piece | FilesRun]) -> list[bytes | bytearray]:
        """`read` for pieces and `read_files` for runs of files, in one trip."""
        return [self.read_files(item) if isinstance(item, FilesRun) else self.read([item])[0]
                for item in items]

    def read_files(self, run: FilesRun) -> bytearray:
        """The bytes of a run of whole files, one after another in one buffer.

        Each file is opened, checked and closed here (not kept open: it is read once).
        """
        buffer = bytearray(run.length)
        view = memoryview(buffer)
        at = 0
        files = self.manifest.files
        for file in range(run.first, run.first + run.number):
            entry, path = files[file], self.sources[file]
            fd = self._open_unchanged(file)
            try:
                start = at
                end = at + entry.size
                while at < end:
                    n = os.preadv(fd, [view[at:end]], at - start)
                    if n == 0:
                        raise TransferError(f"{path} got shorter since it was offered")
                    at += n
            except OSError as exc:
                raise TransferError(f"cannot read {path}: {exc.strerror}") from exc
            finally:
                os.close(fd)
        if at != run.length:
            raise TransferError("the files asked for are not the size the offer says")
        return buffer

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()
