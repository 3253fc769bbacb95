"""A relay joined in the kernel: bytes go socket -> pipe -> socket with splice(2).

The relay's Python copy (read into a bytes object, write it out) cost the broker
about as much CPU as the two peers' encryption, on machines where they share cores.
Once both halves of a relay are there and nothing needs to look at the bytes (no
tap), the broker hands the two sockets to a `SplicedRelay`: for each direction a
pipe, filled from one socket and emptied into the other by `os.splice`, driven by
the event loop's readiness callbacks. The bytes never enter Python; the broker only
counts them.

Each spliced relay holds six descriptors (two sockets, two pipes) where a copied one
holds two; the broker raises its soft descriptor limit to the hard one at start.

Back-pressure: a direction stops reading its source while its pipe cannot be
emptied into the destination, and waits for the destination to become writable.
A half-close (EOF) is passed on with ``shutdown(SHUT_WR)``; the relay ends when
both directions have ended, on any socket error, or when `abort` is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable

# Pipes start at the kernel's default (64 KiB) and grow to BULK_PIPE_SIZE once a
# direction fills one, so only relays that carry bulk data take big pipes: an
# unprivileged user has 64 MiB of pipe buffers in all (fs/pipe-user-pages-soft),
# which 512 relays of 1 MiB pipes would exceed 16 times over.
BULK_PIPE_SIZE = 1 << 20
SPLICE_MAX = 1 << 20
ROUNDS_PER_WAKE = 8  # splices per readiness callback, so one relay cannot starve the rest
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)

AVAILABLE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")


class _Direction:
    """One way of a relay: ``src`` -> pipe -> ``dst``, starting with ``first`` (bytes
    already read from ``src`` before the relay was spliced)."""

    def __init__(self, relay: SplicedRelay, src: socket.socket, dst: socket.socket,
                 first: bytes) -> None:
        self.relay = relay
        self.src, self.dst = src, dst
        self.first = memoryview(first)
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.pipe_size = fcntl.fcntl(self.pipe_w, fcntl.F_GETPIPE_SZ)
        self.grown = False
        self.in_pipe = 0
        self.ended = False
        self.reading = False
        self.waiting_write = False

    def start(self) -> None:
        if self._drain():
            self._read_again()

    def _read_again(self) -> None:
        if not self.reading and not self.ended:
            self.relay.loop.add_reader(self.src.fileno(), self._readable)
            self.reading = True

    def _stop_reading(self) -> None:
        if self.reading:
            self.relay.loop.remove_reader(self.src.fileno())
            self.reading = False

    def _readable(self) -> None:
        try:
            for _ in range(ROUNDS_PER_WAKE):
                if not self._drain():
                    return
                try:
                    moved = os.splice(self.src.fileno(), self.pipe_w, SPLICE_MAX, flags=_FLAGS)
                except BlockingIOError:
                    return  # the pipe was empty, so the source is: wait for more
                if moved == 0:
                    self._end()
                    return
                self.in_pipe += moved
                self.relay.moved(moved)
                if moved >= self.pipe_size and not self.grown:
                    self._grow()
            self._drain()
        except OSError as exc:
            self.relay.abort(exc)

    def _grow(self) -> None:
        self.grown = True  # once: past the user's pipe quota the kernel says no
        with contextlib.suppress(OSError):
            self.pipe_size = fcntl.fcntl(self.pipe_w, fcntl.F_SETPIPE_SZ, BULK_PIPE_SIZE)

    def _drain(self) -> bool:
        """Empty what is pending into ``dst``; False (and wait for it) if it is full."""
        try:
            while self.first:
                sent = self.dst.send(self.first)
                self.first = self.first[sent:]
            while self.in_pipe:
                moved = os.splice(self.pipe_r, self.dst.fileno(), self.in_pipe, flags=_FLAGS)
                if moved <= 0:
                    raise OSError("the relay's pipe gave nothing back")
                self.in_pipe -= moved
        except BlockingIOError:
            self._stop_reading()
            if not self.waiting_write:
                self.relay.loop.add_writer(self.dst.fileno(), self._writable)
                self.waiting_write = True
            return False
        return True

    def _writable(self) -> None:
        self.relay.loop.remove_writer(self.dst.fileno())
        self.waiting_write = False
        try:
            if self._drain():
                self._read_again()
                self._readable()
        except OSError as exc:
            self.relay.abort(exc)

    def _end(self) -> None:
        self._stop_reading()
        self.ended = True
        with contextlib.suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)
        self.relay.direction_ended()

    def close(self) -> None:
        self._stop_reading()
        if self.waiting_write:
            self.relay.loop.remove_writer(self.dst.fileno())
            self.waiting_write = False
        for fd in (self.pipe_r, self.pipe_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class SplicedRelay:
    """Two connected sockets joined both ways until both ends finish or one fails.

    ``a_first`` / ``b_first``: bytes already read from ``a`` (for ``b``) and from
    ``b`` (for ``a``). ``on_bytes(n)`` counts what moves; ``on_end(relay)`` is called
    once, when the relay is over and its sockets are closed.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, a: socket.socket, b: socket.socket,
                 a_first: bytes, b_first: bytes, *, on_bytes: Callable[[int], None],
                 on_end: Callable[[SplicedRelay], None]) -> None:
        self.loop = loop
        self.sockets = (a, b)
        for sock in self.sockets:
            sock.setblocking(False)
        self.on_bytes, self.on_end = on_bytes, on_end
        self.last_active = time.monotonic()
        self.closed = False
        self.error: OSError | None = None
        first = _Direction(self, a, b, a_first)
        try:
            second = _Direction(self, b, a, b_first)
        except OSError:
            first.close()  # out of descriptors: give the first pipe back
            raise
        self._directions = (first, second)

    def start(self) -> None:
        try:
            for direction in self._directions:
                if not self.closed:
                    direction.start()
        except OSError as exc:
            self.abort(exc)

    def moved(self, count: int) -> None:
        self.last_active = time.monotonic()
        self.on_bytes(count)

    def direction_ended(self) -> None:
        if all(d.ended for d in self._directions):
            self.abort()

    def abort(self, exc: OSError | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.error = exc
        for direction in self._directions:
            direction.close()
        for sock in self.sockets:
            sock.close()
        self.on_end(self)
