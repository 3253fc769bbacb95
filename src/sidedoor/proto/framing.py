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
    """Splits a byte stream into frames. Feed bytes in any pieces; get whole frames out."""

    def __init__(self, max_frame_len: int = MAX_FRAME_LEN) -> None:
        self.max_frame_len = max_frame_len
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the frames now complete. Raises on a bad length prefix."""
        buf = self._buffer
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        limit = self.max_frame_len
        while end - pos >= HEADER_LEN:
            (length,) = _HEADER.unpack_from(buf, pos)
            if length == 0:
                raise MessageError("the peer sent an empty frame")
            if length > limit:
                raise FrameTooLarge(
                    f"the peer sent a frame of {length} bytes; the limit here is {limit}"
                )
            if end - pos - HEADER_LEN < length:
                break
            start = pos + HEADER_LEN
            frames.append(bytes(buf[start : start + length]))
            pos = start + length
        if pos:
            del buf[:pos]
        return frames
