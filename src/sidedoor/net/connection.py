"""asyncio glue around `proto.session.Session`: a TCP connection to one peer.

Only glue lives here: ``data_received -> receive_data -> drain events ->
transmit -> re-arm the timer``. Every protocol decision is the session's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from sidedoor.errors import (
    ConnectError,
    HandshakeFailed,
    LocalProtocolError,
    MessageError,
    PeerTimeout,
    ProtocolError,
    RemoteProtocolError,
    SidedoorError,
)
from sidedoor.identity import Identity, SignatureDomain
from sidedoor.proto.framing import MESSAGE_HEADER, encode_message
from sidedoor.proto.messages import IdentityProof
from sidedoor.proto.noise import Pattern
from sidedoor.proto.session import LocalKeys, ProofVerifier, Role, Session, SessionConfig, State
from sidedoor.proto.session_events import (
    ChannelAccepted,
    ChannelClosed,
    ChannelEnded,
    ChannelRejected,
    ChannelRequested,
    DataReceived,
    HandshakeComplete,
    PongReceived,
    SessionClosed,
)

log = logging.getLogger(__name__)

# Write in batches of up to 1 MiB, and only while the transport's own buffer is
# nearly empty: asyncio 3.11 moves its whole buffer down after every partial send.
WRITE_HIGH_WATER = 64 << 10
WRITE_BATCH = 1 << 20
CHANNEL_BACKLOG_LIMIT = 1 << 20

# Decides on a channel the peer opens: return None to accept it (the handler then
# owns the stream), or the reason to reject it.
ChannelHandler = Callable[["Connection", "ChannelStream"], str | None]


@contextlib.asynccontextmanager
async def _peer_deadline(timeout: float) -> AsyncIterator[None]:
    """A bound on waiting for the peer: `PeerTimeout` instead of waiting forever."""
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise PeerTimeout(f"the other node did not answer within {timeout:g} s") from None


class ChannelClosedError(SidedoorError):
    """The channel was closed or reset before the operation finished."""


class ChannelStream:
    """One channel of a connection, as a byte stream with backpressure both ways."""

    def __init__(self, conn: Connection, channel: int, kind: str, meta: bytes) -> None:
        self.connection = conn
        self.id = channel
        self.kind = kind
        self.meta = meta
        self._chunks: deque[memoryview] = deque()
        self._buffered = 0
        self._eof = False
        self._closed_reason: str | None = None
        self._reset_reason: str | None = None  # closed before the peer ended it cleanly
        # How much the peer may send before we read; None: the session's default.
        # Set it before accepting (in the channel handler) to accept with less.
        self.receive_window: int | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    # -- called by the connection
    def _feed(self, data: memoryview) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self._readable.set()

    def _feed_eof(self) -> None:
        self._eof = True
        self._readable.set()

    def _closed(self, reason: str) -> None:
        self._closed_reason = reason
        if not self._eof:
            self._reset_reason = reason
        self._eof = True
        self._readable.set()
        self._writable.set()

    def _update_writable(self) -> None:
        if self.connection.session.channel_backlog(self.id) < CHANNEL_BACKLOG_LIMIT:
            self._writable.set()
        else:
            self._writable.clear()

    # -- the application's side
    async def read(self, n: int = -1) -> memoryview:
        """Up to ``n`` bytes (any amount if -1); empty at the end of the stream.

        The bytes come as a read-only memoryview, without a copy; ``bytes()`` it to keep
        a copy, or hand it to anything that takes a buffer (files, msgspec, hashes).
        """
        while not self._chunks:
            if self._reset_reason is not None:
                raise ChannelClosedError(f"the channel was closed: {self._reset_reason}")
            if self._eof:
                return memoryview(b"")
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks.popleft()
        if 0 <= n < len(chunk):
            self._chunks.appendleft(chunk[n:])
            chunk = chunk[:n]
        self._buffered -= len(chunk)
        self.connection._consume(self.id, len(chunk))
        return chunk

    async def read_exactly(self, n: int) -> bytes:
        parts: list[memoryview] = []
        need = n
        while need:
            chunk = await self.read(need)
            if not chunk:
                raise ChannelClosedError(
                    f"the channel ended after {n - need} of {n} expected bytes"
                )
            parts.append(chunk)
            need -= len(chunk)
        return b"".join(parts)

    @property
    def writable(self) -> bool:
        """Open, and not so much queued that `write` would wait."""
        return self._closed_reason is None and self._writable.is_set()

    def write_nowait(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes without waiting: for a caller that saw the stream `writable` (one
        write past the backlog limit is harmless; the next `write` waits)."""
        if self._closed_reason is not None:
            raise ChannelClosedError(f"the channel is closed: {self._closed_reason}")
        self.connection._send(self.id, data)
        self._update_writable()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes; waits while too much is queued and not yet sent (backpressure)."""
        self.write_nowait(data)
        await self.drain()

    async def drain(self) -> None:
        """Wait while too much is queued and not yet sent."""
        while not self._writable.is_set():
            await self._writable.wait()
            if self._closed_reason is not None:
                raise ChannelClosedError(f"the channel is closed: {self._closed_reason}")

    async def write_message(self, data: bytes) -> None:
        """One length-prefixed message (for channels that carry messages, not a byte stream)."""
        await self.write(encode_message(data))

    async def read_message(self, limit: int, timeout: float = 30.0) -> bytes | None:
        """The next length-prefixed message; None at the end of the stream.

        A message announced longer than ``limit`` resets the channel and raises; a peer
        that sends nothing for ``timeout`` seconds raises `PeerTimeout`.
        """
        async with _peer_deadline(timeout):
            header = await self.read_exactly_or_eof(MESSAGE_HEADER.size)
            if header is None:
                return None
            (size,) = MESSAGE_HEADER.unpack(header)
            if size > limit:
                self.reset("message too large")
                raise MessageError(f"the peer sent a {size}-byte message; the limit is {limit}")
            return await self.read_exactly(size)

    async def read_exactly_or_eof(self, n: int) -> bytes | None:
        first = await self.read(n)
        if not first:
            return None
        if len(first) == n:
            return bytes(first)
        return bytes(first) + await self.read_exactly(n - len(first))

    async def read_all(self, limit: int, timeout: float = 30.0) -> bytes:
        """Everything until the peer ends the channel: at most ``limit`` bytes, ``timeout`` s."""
        parts: list[memoryview] = []
        total = 0
        async with _peer_deadline(timeout):
            while chunk := await self.read():
                total += len(chunk)
                if total > limit:
                    self.reset("too much data")
                    raise MessageError(f"the peer sent more than {limit} bytes on a channel")
                parts.append(chunk)
        return b"".join(parts)

    def end(self) -> None:
        """We will write nothing more (the peer's `read` returns b"" after the data)."""
        if self._closed_reason is None:
            self.connection._end(self.id)

    def reset(self, reason: str = "reset") -> None:
        if self._closed_reason is None:
            self.connection._reset(self.id, reason)

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._chunks


class Connection(asyncio.BufferedProtocol):
    """A `Session` on a TCP transport. Reads land straight in the session's frame buffer."""

    def __init__(
        self,
        session: Session,
        *,
        on_made: Callable[[Connection], bool] | None = None,
        on_handshake: Callable[[Connection], None] | None = None,
        on_channel: ChannelHandler | None = None,
        on_closed: Callable[[Connection], None] | None = None,
    ) -> None:
        self.session = session
        self.on_made = on_made
        self.on_handshake = on_handshake
        self.loop = asyncio.get_running_loop()
        self.on_channel = on_channel
        self.on_closed = on_closed
        self.transport: asyncio.Transport | None = None
        self.peername: tuple[Any, ...] | None = None
        self.sockname: tuple[Any, ...] | None = None
        self.handshake: asyncio.Future[HandshakeComplete] = self.loop.create_future()
        self.closed: asyncio.Future[SessionClosed] = self.loop.create_future()
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._streams: dict[int, ChannelStream] = {}
        self._opening: dict[int, asyncio.Future[ChannelStream]] = {}
        self._pings: dict[int, asyncio.Future[float]] = {}
        # How the path was made when the address alone does not say: relayed, punched.
        self.via: str | None = None

    # ------------------------------------------------------------ protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not derive from
        # asyncio's classes.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.peername = transport.get_extra_info("peername")
        self.sockname = transport.get_extra_info("sockname")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if self.on_made is not None and not self.on_made(self):
            transport.abort()
            return
        self.session.start(self.loop.time())
        self._pump()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.session.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.session.buffer_updated(nbytes, self.loop.time())
        self._pump()

    def eof_received(self) -> bool | None:
        self.session.connection_lost("the peer closed the connection")
        self._pump()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"the connection was lost: {exc}" if exc else "the peer closed the connection"
        self.session.connection_lost(reason)
        self._drain_events()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._pump()

    # ---------------------------------------------------------------- glue
    def _pump(self) -> None:
        self._drain_events()
        self._transmit()
        self._arm_timer()

    def _transmit(self) -> None:
        transport = self.transport
        if transport is None:
            return
        session = self.session
        while not self._paused:
            data = session.data_to_send(WRITE_BATCH)
            if not data:
                break
            transport.write(data)
        for stream in self._streams.values():
            stream._update_writable()
        if session.wants_close and not transport.is_closing():
            # Flush what remains (a Close message), then close.
            data = session.data_to_send(1 << 30)
            if data:
                transport.write(data)
            transport.close()

    def _arm_timer(self) -> None:
        when = self.session.get_timer()
        if when is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = self._timer_at = None
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= when:
            return  # an earlier wake-up is armed; it re-arms when it fires
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self.session.handle_timer(self.loop.time())
        self._pump()

    def _drain_events(self) -> None:
        session = self.session
        while (event := session.next_event()) is not None:
            match event:
                case DataReceived(channel=cid, data=data):
                    stream = self._streams.get(cid)
                    if stream is not None:
                        stream._feed(data)
                case HandshakeComplete():
                    if self.on_handshake is not None:
                        # Synchronously: the peer's first channel may be in this same read.
                        self.on_handshake(self)
                    if not self.handshake.done():
                        self.handshake.set_result(event)
                case ChannelRequested(channel=cid, kind=kind, meta=meta):
                    if session.state is State.CLOSED:
                        continue  # refused at the handshake; its channels go with it
                    stream = ChannelStream(self, cid, kind, meta)
                    refusal = (self.on_channel(self, stream) if self.on_channel is not None
                               else "this node does not accept channels")
                    if refusal is not None:
                        session.reject_channel(cid, refusal)
                        continue
                    self._streams[cid] = stream
                    session.accept_channel(cid, stream.receive_window)
                case ChannelAccepted(channel=cid):
                    fut = self._opening.pop(cid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(self._streams[cid])
                case ChannelRejected(channel=cid, reason=reason):
                    self._streams.pop(cid, None)
                    fut = self._opening.pop(cid, None)
                    if fut is not None and not fut.done():
                        fut.set_exception(ChannelClosedError(f"the peer refused: {reason}"))
                case ChannelEnded(channel=cid):
                    stream = self._streams.get(cid)
                    if stream is not None:
                        stream._feed_eof()
                case ChannelClosed(channel=cid, reason=reason):
                    stream = self._streams.pop(cid, None)
                    if stream is not None:
                        stream._closed(reason)
                    fut = self._opening.pop(cid, None)
                    if fut is not None and not fut.done():
                        fut.set_exception(ChannelClosedError(reason))
                case PongReceived(token=token, rtt=rtt):
                    pfut = self._pings.pop(token, None)
                    if pfut is not None and not pfut.done():
                        pfut.set_result(rtt)
                case SessionClosed():
                    self._on_session_closed(event)

    def _on_session_closed(self, event: SessionClosed) -> None:
        if event.error is not None:
            # Debug only: the owner (the node) logs the refusal or closure once, at INFO.
            log.debug("session with %s closed: %s", self.peername, event.error)
        if not self.handshake.done():
            err: ProtocolError = event.error or HandshakeFailed(event.reason)
            self.handshake.set_exception(err)
            self.handshake.exception()  # mark retrieved: callers may have given up waiting
        waiting: list[asyncio.Future[Any]] = [*self._pings.values(), *self._opening.values()]
        for fut in waiting:
            if not fut.done():
                fut.set_exception(ChannelClosedError(f"the session closed: {event.reason}"))
                fut.exception()
        self._pings.clear()
        self._opening.clear()
        if not self.closed.done():
            self.closed.set_result(event)
        if self.on_closed is not None:
            self.on_closed(self)

    # -------------------------------------------------- for ChannelStream
    def _consume(self, cid: int, n: int) -> None:
        if self.session.consume(cid, n):
            self._transmit()

    def _send(self, cid: int, data: bytes | bytearray | memoryview) -> None:
        self.session.send(cid, data)
        self._transmit()

    def _end(self, cid: int) -> None:
        self.session.end_channel(cid)
        self._pump()

    def _reset(self, cid: int, reason: str) -> None:
        self.session.reset_channel(cid, reason)
        self._pump()

    # ------------------------------------------------------------ public
    @property
    def remote_identity(self) -> bytes:
        if self.session.remote_identity is None:
            raise LocalProtocolError("the handshake is not complete")
        return self.session.remote_identity

    @property
    def is_open(self) -> bool:
        return self.session.state is State.OPEN

    async def ping(self, timeout: float = 10.0) -> float:
        """Round-trip time in seconds."""
        token = self.session.ping(self.loop.time())
        fut: asyncio.Future[float] = self.loop.create_future()
        self._pings[token] = fut
        self._pump()
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise PeerTimeout(f"no answer to a ping within {timeout:g} s") from None
        finally:
            self._pings.pop(token, None)

    async def open_channel(self, kind: str, meta: bytes = b"", timeout: float = 10.0
                           ) -> ChannelStream:
        cid = self.session.open_channel(kind, meta)
        stream = ChannelStream(self, cid, kind, meta)
        self._streams[cid] = stream
        fut: asyncio.Future[ChannelStream] = self.loop.create_future()
        self._opening[cid] = fut
        self._pump()
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._abandon(cid, "timed out")
            raise PeerTimeout(f"the peer did not answer a channel request in {timeout:g} s"
                              ) from None
        except asyncio.CancelledError:
            self._abandon(cid, "cancelled")
            raise

    def _abandon(self, cid: int, reason: str) -> None:
        """Give up on a channel we asked for: the peer's late answer finds it reset."""
        self._opening.pop(cid, None)
        self._streams.pop(cid, None)
        if self.transport is not None:
            self._reset(cid, reason)

    def close(self, reason: str = "closed", code: int = 0) -> None:
        self.session.close(reason, code)
        self._pump()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    async def aclose(self, reason: str = "closed") -> None:
        self.close(reason)
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), 5.0)
        except TimeoutError:
            if self.transport is not None:
                self.transport.abort()


def local_keys(identity: Identity) -> LocalKeys:
    """What a session needs of our identity: the Noise static key and its signed proof."""
    proof = IdentityProof(
        identity.public.key, identity.sign(SignatureDomain.NOISE_STATIC, identity.noise_public)
    )
    return LocalKeys(identity.noise_private, proof)


def new_session(
    role: Role,
    keys: LocalKeys,
    verify: ProofVerifier,
    *,
    pattern: Pattern = Pattern.XX,
    expected_remote: bytes | None = None,
    remote_static: bytes | None = None,
    config: SessionConfig | None = None,
) -> Session:
    return Session(
        role, keys, verify, ephemeral_private=os.urandom(32), pattern=pattern,
        expected_remote=expected_remote, remote_static=remote_static, config=config,
    )


async def dial(
    host: str,
    port: int,
    session: Session,
    *,
    timeout: float = 10.0,
    on_handshake: Callable[[Connection], None] | None = None,
    on_channel: ChannelHandler | None = None,
    on_closed: Callable[[Connection], None] | None = None,
    sock: socket.socket | None = None,
    via: str | None = None,
) -> Connection:
    """Connect and complete the handshake; raise `ConnectError` or a `ProtocolError`.

    With ``sock`` (already connected: a relay, a punched hole), ``host:port`` only
    names it in messages. ``via`` says how the path was made ("relayed", "punched").
    """
    loop = asyncio.get_running_loop()

    def make() -> Connection:
        conn = Connection(session, on_handshake=on_handshake, on_channel=on_channel,
                          on_closed=on_closed)
        conn.via = via
        return conn

    try:
        async with asyncio.timeout(timeout):
            if sock is not None:
                _, conn = await loop.create_connection(make, sock=sock)
            else:
                _, conn = await loop.create_connection(make, host, port)
    except BaseException as exc:
        if sock is not None:
            sock.close()  # no transport took it (a cancelled race loser, a timeout)
        if isinstance(exc, TimeoutError):
            raise ConnectError(f"{host}:{port} did not answer within {timeout:g} s") from None
        if isinstance(exc, OSError):
            raise ConnectError(
                f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
        raise
    try:
        async with asyncio.timeout(timeout):
            await conn.handshake
    except TimeoutError:
        conn.close("handshake timeout")
        raise PeerTimeout(f"{host}:{port} did not complete the handshake in {timeout:g} s"
                          ) from None
    except RemoteProtocolError:
        conn.close("handshake failed")
        raise
    return conn
