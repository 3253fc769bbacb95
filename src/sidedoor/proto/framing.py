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


# Messages on a channel (invites, and later chat): a 4-byte big-endian length, then the
# message. Channels are byte streams; services that exchange messages frame them so.
MESSAGE_HEADER = struct.Struct(">I")


def encode_message(body: bytes) -> bytes:
    return MESSAGE_HEADER.pack(len(body)) + body


MIN_BUFFER = 4096  # the smallest read buffer: a handshake message, a small control message


class FrameDecoder:
    """Splits a byte stream into frames, in a buffer of its own.

    Two ways in: `feed(data)` copies bytes in; or `get_buffer()` hands out the free
    part of the buffer for a socket to read into directly, and `buffer_updated(n)`
    says how many bytes landed. Both return the frames now complete as memoryviews
    into the buffer: they are valid until the next call, so the caller must use
    them (decrypt them) before it asks for more. A frame split across two reads is
    moved to the front of the buffer once, when the buffer is next handed out.

    The length of a frame is checked as soon as its 2-byte header is in, before its
    body is waited for. The buffer is ``buffer_size`` bytes; when a frame larger than
    that is on its way it grows to hold it, and shrinks back once it is empty, so a
    broker's idle sessions hold a few KiB each while a node's bulk reads get 1 MiB.
    """

    def __init__(self, max_frame_len: int = MAX_FRAME_LEN, buffer_size: int = 1 << 20) -> None:
        self.max_frame_len = max_frame_len
        self._base = max(buffer_size, MIN_BUFFER)
        self._buf = bytearray(self._base)
        self._start = 0
        self._end = 0

    def grow(self, max_frame_len: int, buffer_size: int) -> None:
        """Raise the frame limit and the buffer size (a session that just opened).

        Until then a connection that has not authenticated holds only a small buffer.
        """
        pending = self._buf[self._start : self._end]
        self._base = max(buffer_size, MIN_BUFFER, len(pending))
        self._buf = bytearray(self._base)
        self._buf[: len(pending)] = pending
        self._start, self._end = 0, len(pending)
        self.max_frame_len = max_frame_len

    @property
    def buffered(self) -> int:
        return self._end - self._start

    def get_buffer(self) -> memoryview:
        """The free space to read into: room for at least the rest of the next frame."""
        start, end = self._start, self._end
        if start:
            pending = end - start
            self._buf[:pending] = self._buf[start:end]
            self._start, self._end = 0, pending
        pending = self._end
        if pending == 0 and len(self._buf) > self._base:
            self._buf = bytearray(self._base)  # a big frame came and went
        elif pending >= HEADER_LEN:
            need = HEADER_LEN + ((self._buf[0] << 8) | self._buf[1])
            if need > len(self._buf):
                bigger = bytearray(need)
                bigger[:pending] = self._buf[:pending]
                self._buf = bigger
        elif len(self._buf) - pending < HEADER_LEN:
            self._buf.extend(bytes(HEADER_LEN))
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, n: int) -> list[memoryview]:
        """``n`` bytes were written at the start of the last `get_buffer()`."""
        self._end += n
        view = memoryview(self._buf)
        pos, end = self._start, self._end
        frames: list[memoryview] = []
        limit = self.max_frame_len
        while end - pos >= HEADER_LEN:
            length = (view[pos] << 8) | view[pos + 1]
            if length == 0:
                raise MessageError("the peer sent an empty frame")
            if length > limit:
                raise FrameTooLarge(
                    f"the peer sent a frame of {length} bytes; the limit here is {limit}"
                )
            body = pos + HEADER_LEN
            if end - body < length:
                break
            frames.append(view[body : body + length])
            pos = body + length
        if pos == end:
            self._start = self._end = 0
        else:
            self._start = pos
        return frames

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview]:
        """Add bytes; return the frames now complete. Raises on a bad length prefix."""
        view = memoryview(data).cast("B")
        if len(view) <= len(self._buf) - self._end:
            room = memoryview(self._buf)[self._end :]
            room[: len(view)] = view
            return self.buffer_updated(len(view))
        frames: list[memoryview] = []
        while view:
            room = self.get_buffer()
            n = min(len(room), len(view))
            room[:n] = view[:n]
            view = view[n:]
            # Earlier frames would be overwritten by the next get_buffer: copy them out.
            frames.extend(memoryview(bytes(f)) for f in self.buffer_updated(n))
        return frames
