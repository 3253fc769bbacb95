"""Writing a large file's chunks around the page cache (``O_DIRECT``).

Why: copying a received file into the page cache is kernel work that can cost more
CPU than decrypting and hashing it together (on this project's VM, 3.3 s of kernel
time a GiB when the memory comes back from the host, 0.5 s when it was freed a
moment before), and it pushes out what the cache held for the
user's programs, for a file that is usually not read again soon. A direct write
hands the buffer to the disk instead: about 0.3 s of kernel time a GiB here, at
1 to 1.5 GB/s.

Direct I/O wants the buffer, the file position and the length aligned to the
device's block size. Chunks start at multiples of 1 MiB, so each chunk is copied
into an aligned buffer (a page-aligned anonymous mapping, reused) and written a
buffer at a time; a file's last block is written padded with zeros, and the file
is cut to its size when it is finished. Where the filesystem refuses (``EINVAL``:
tmpfs on older kernels, some network filesystems, devices with larger blocks), the
same bytes go through the page cache instead, and so does everything after.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os

ALIGN = 4096  # a multiple of every common logical block size (512, 4096)
STAGE_SIZE = 1 << 20  # one chunk of a file up to 8 GiB: written as soon as it is whole
DIRECT_FLAG: int = getattr(os, "O_DIRECT", 0)  # Linux and the BSDs; 0 elsewhere


def pwrite_all(fd: int, pieces: list[memoryview], position: int) -> None:
    """Write every piece at ``position`` on: pwritev may write less than asked.

    ``pieces`` is left as it was (a caller may need to write the same bytes again)."""
    pieces = list(pieces)
    while pieces:
        n = os.pwritev(fd, pieces, position)
        position += n
        while pieces and n >= len(pieces[0]):
            n -= len(pieces[0])
            pieces.pop(0)
        if pieces and n:
            pieces[0] = pieces[0][n:]


class DirectChunk:
    """One chunk's bytes, added in order from ``position`` on, written a stage at a time
    with ``fd`` (opened with ``O_DIRECT``).

    When a direct write is refused, the descriptor is switched to ordinary writes
    (Linux lets ``F_SETFL`` clear ``O_DIRECT``), the stage is written again that way,
    and `refused` tells the caller to leave its next chunks to the page cache.
    """

    def __init__(self, stage: mmap.mmap, position: int, fd: int, align: int = ALIGN) -> None:
        if position % align or len(stage) % align:
            raise ValueError("a direct chunk starts at an aligned position, with a stage "
                             "of whole blocks")
        self.align = align
        self.stage = stage
        self._view = memoryview(stage)
        self.position = position  # where the stage's first byte goes
        self.filled = 0
        self.fd = fd
        self.refused = False

    @property
    def at(self) -> int:
        """The file position the next byte added goes to."""
        return self.position + self.filled

    def add(self, pieces: list[memoryview]) -> None:
        """Copy ``pieces`` into the stage; a full stage is written when more must go in
        (a chunk of one stage is written by `end`, which a caller may run elsewhere)."""
        view, size = self._view, len(self._view)
        for piece in pieces:
            while piece:
                if self.filled == size:
                    self._flush()
                n = min(len(piece), size - self.filled)
                view[self.filled:self.filled + n] = piece[:n]
                self.filled += n
                piece = piece[n:]

    def end(self) -> None:
        """Write what is staged: the chunk is whole. Its last block is padded with
        zeros to the alignment (only a file's last chunk can end unaligned)."""
        if self.filled:
            self._flush()

    def release(self) -> mmap.mmap:
        """Give up the stage (written or not): the caller may reuse it."""
        self._view.release()
        return self.stage

    def _flush(self) -> None:
        length = self.filled
        if not self.refused:
            padded = -(-length // self.align) * self.align
            if padded != length:
                self._view[length:padded] = bytes(padded - length)
            try:
                pwrite_all(self.fd, [self._view[:padded]], self.position)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.refused = True
                fcntl.fcntl(self.fd, fcntl.F_SETFL,
                            fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~DIRECT_FLAG)
        if self.refused:
            # Whatever the refused write left is overwritten here.
            pwrite_all(self.fd, [self._view[:length]], self.position)
        self.position += length
        self.filled = 0
