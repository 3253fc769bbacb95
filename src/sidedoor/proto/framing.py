"""Length-prefixed frames on a byte stream.

A frame is a 2-byte big-endian length followed by that many bytes (one Noise
message). The length is checked against the decoder's current limit before
any byte of the body is buffered, so a peer cannot make us allocate more than
one frame's worth of memory. Zero-length frames are not allowed: no Noise
message is empty.
"""

from __future__ import annotations

import struct

from sidedoor.errors import FrameTooLarge, MessageError

HEADER_LEN = 2
MAX_FRAME_LEN = 65535
_HEADER = struct.Struct(">H")


def encode_frame(body: bytes) -> bytes:
    if not 0 < len(body) <= MAX_FRAME_LEN:
        raise ValueError(f"a frame body is 1..{MAX_FRAME_LEN} bytes, got {len(body)}")
    return _HEADER.pack(len(body)) + body


def frame_header(body_len: int) -> bytes:
    return _HEADER.pack(body_len)


class FrameDecoder:
    """Splits a byte stream into frames. Feed bytes in any pieces; get whole frames out.

    Frames wholly inside one ``feed`` come back as memoryviews of the bytes fed
    (no copy: bulk data passes through at memory speed); only a frame split across
    two feeds is copied together. The fed ``bytes`` must not be mutated afterwards.
    """

    def __init__(self, max_frame_len: int = MAX_FRAME_LEN) -> None:
        self.max_frame_len = max_frame_len
        self._partial = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._partial)

    def _check(self, length: int) -> int:
        if length == 0:
            raise MessageError("the peer sent an empty frame")
        if length > self.max_frame_len:
            raise FrameTooLarge(
                f"the peer sent a frame of {length} bytes; the limit here is {self.max_frame_len}"
            )
        return length

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview]:
        """Add bytes; return the frames now complete. Raises on a bad length prefix."""
        view = memoryview(data)
        end = len(view)
        pos = 0
        frames: list[memoryview] = []
        partial = self._partial
        if partial:
            if len(partial) < HEADER_LEN:
                take = min(HEADER_LEN - len(partial), end)
                partial += view[:take]
                pos = take
                if len(partial) < HEADER_LEN:
                    return frames
            length = self._check((partial[0] << 8) | partial[1])
            take = min(HEADER_LEN + length - len(partial), end - pos)
            partial += view[pos : pos + take]
            pos += take
            if len(partial) < HEADER_LEN + length:
                return frames
            frames.append(memoryview(bytes(partial[HEADER_LEN:])))
            partial.clear()
        check = self._check
        while end - pos >= HEADER_LEN:
            length = check((view[pos] << 8) | view[pos + 1])
            start = pos + HEADER_LEN
            if end - start < length:
                break
            frames.append(view[start : start + length])
            pos = start + length
        if pos < end:
            partial += view[pos:]
            if len(partial) >= HEADER_LEN:
                check((partial[0] << 8) | partial[1])
        return frames
