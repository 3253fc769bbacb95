"""One authenticated, encrypted connection to one peer, as a sans-I/O machine.

Bytes from the socket go in with `receive_data(data, now)`; events come out of
`next_event()`; bytes for the socket come out of `data_to_send()`; one timer
(`get_timer()` / `handle_timer(now)`) drives the handshake timeout, keepalive
and idle timeout. Nothing here reads a clock or draws random numbers.

On the wire, in order:

1. a 6-byte preamble each way: ``b"sdor"``, the protocol version, and (from the
   initiator) the Noise pattern, 1 = XX, 2 = IK. The initiator's preamble is the
   Noise prologue, so a tampered preamble fails the handshake;
2. the Noise handshake (XX: 3 messages, IK: 2), each in a length-prefixed frame;
   the payloads carry `IdentityProof`s binding each side's X25519 static key to
   its Ed25519 identity;
3. transport messages, each one frame, holding a control message or channel data
   (see `messages`).

Channels: the initiator numbers the channels it opens 1, 3, 5...; the responder
2, 4, 6.... Each direction of a channel has a credit window: a side may send only
as many bytes as the other has granted (`ChannelOpen.window`, `ChannelAccept.window`,
then `WindowUpdate`s as the receiver `consume()`s). `data_to_send()` takes
control messages first, then one frame from each channel with data in turn, so a
bulk stream cannot starve a chat channel beside it.

A protocol error by the peer never escapes `receive_data`: the session closes,
sends a `Close` with the reason when it can, and emits `SessionClosed` with the
error attached.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sidedoor.errors import (
    FlowControlError,
    HandshakeFailed,
    IdentityMismatch,
    LocalProtocolError,
    MessageError,
    PeerTimeout,
    RemoteProtocolError,
    VersionMismatch,
)
from sidedoor.names import clean_name
from sidedoor.proto import messages as m
from sidedoor.proto.framing import MAX_FRAME_LEN, FrameDecoder, frame_header
from sidedoor.proto.noise import TAG_LEN, CipherState, HandshakeState, Pattern
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
    SessionEvent,
)

PROTOCOL_VERSION = 1
MAGIC = b"sdor"
PREAMBLE_LEN = 6
_PATTERN_CODES = {Pattern.XX: 1, Pattern.IK: 2}
_CODE_PATTERNS = {v: k for k, v in _PATTERN_CODES.items()}

MAX_PLAINTEXT = MAX_FRAME_LEN - 16
MAX_DATA_CHUNK = MAX_PLAINTEXT - m.DATA_HEADER.size
HANDSHAKE_FRAME_LIMIT = 1024
RECEIVE_BUFFER = 1 << 20  # once open: reads of up to 1 MiB go straight into it
MAX_PENDING_PINGS = 16
MAX_CONTROL_BACKLOG = 1 << 20
MAX_RESET_MEMORY = 1024
_FRAME_OVERHEAD = 2 + TAG_LEN  # length prefix and AEAD tag

# Verifies an identity proof: (identity key, signature, signed noise static) -> ok?
ProofVerifier = Callable[[bytes, bytes, bytes], bool]


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class State(enum.Enum):
    PREAMBLE = "preamble"
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class SessionConfig:
    handshake_timeout: float = 10.0
    keepalive_interval: float = 15.0
    idle_timeout: float = 45.0
    channel_window: int = 4 << 20
    max_channels: int = 64
    # Bytes read at once once open; a broker holding thousands of idle sessions
    # keeps this small (frames larger than it grow the buffer for a moment).
    receive_buffer: int = RECEIVE_BUFFER


@dataclass(frozen=True, slots=True)
class LocalKeys:
    """What the session needs of our identity: no signing key, just the finished proof."""

    static_private: bytes
    proof: m.IdentityProof


class _ChannelState(enum.Enum):
    OPENING = "opening"  # we sent ChannelOpen, no answer yet
    REQUESTED = "requested"  # the peer sent ChannelOpen, we have not answered
    OPEN = "open"


@dataclass(slots=True)
class _Channel:
    id: int
    kind: str
    state: _ChannelState
    send_credit: int = 0
    recv_remaining: int = 0
    recv_window: int = 0
    unacked: int = 0
    pending: deque[memoryview] = field(default_factory=deque)
    pending_bytes: int = 0
    local_ended: bool = False  # we called end_channel
    end_sent: bool = False
    remote_ended: bool = False


class Session:
    def __init__(
        self,
        role: Role,
        keys: LocalKeys,
        verify_proof: ProofVerifier,
        *,
        ephemeral_private: bytes,
        pattern: Pattern = Pattern.XX,
        expected_remote: bytes | None = None,
        remote_static: bytes | None = None,
        config: SessionConfig | None = None,
    ) -> None:
        if role is Role.RESPONDER and (expected_remote or remote_static):
            raise LocalProtocolError("a responder does not know whom it is talking to yet")
        if pattern is Pattern.IK and role is Role.INITIATOR and remote_static is None:
            raise LocalProtocolError("the IK pattern needs the peer's static key")
        self.role = role
        self.config = config or SessionConfig()
        self._keys = keys
        self._verify_proof = verify_proof
        self._ephemeral = ephemeral_private
        self.pattern = pattern
        self.expected_remote = expected_remote
        self._remote_static_hint = remote_static
        self.state = State.PREAMBLE
        self.remote_identity: bytes | None = None
        self.remote_static: bytes | None = None
        self.handshake_hash: bytes | None = None
        self.close_reason: str | None = None
        self._hs: HandshakeState | None = None
        self._send_cipher: CipherState | None = None
        self._recv_cipher: CipherState | None = None
        self._preamble_buf = bytearray()
        self._scratch = bytearray(4096)
        self._scratch_used = False
        self._frames = FrameDecoder(HANDSHAKE_FRAME_LIMIT, buffer_size=0)
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._control: deque[bytes] = deque()
        self._control_bytes = 0
        self._close_after_flush = False
        self._events: deque[SessionEvent] = deque()
        self._channels: dict[int, _Channel] = {}
        self._next_channel = 1 if role is Role.INITIATOR else 2
        self.channels_opened = 0  # by either side, ever: how busy the session has been
        self._rr: deque[int] = deque()  # channels with data waiting, round robin
        # Channels we reset: the peer may still have messages for them in flight.
        self._reset_ids: dict[int, None] = {}
        self._pings: dict[int, float] = {}
        self._next_ping = 1
        self._deadline: float | None = None
        self._last_received = 0.0
        self._keepalive_sent = False
        self.bytes_received = 0
        self.bytes_sent = 0

    # ----------------------------------------------------------------- start

    def start(self, now: float) -> None:
        if self.state is not State.PREAMBLE or self._deadline is not None:
            raise LocalProtocolError("the session has already started")
        self._deadline = now + self.config.handshake_timeout
        self._last_received = now
        if self.role is Role.INITIATOR:
            preamble = MAGIC + bytes([PROTOCOL_VERSION, _PATTERN_CODES[self.pattern]])
            self._hs = HandshakeState(
                self.pattern, True, self._keys.static_private, self._ephemeral,
                prologue=preamble, remote_static=self._remote_static_hint,
            )
            payload = m.encode_proof(self._keys.proof) if self.pattern is Pattern.IK else b""
            self._queue_raw(preamble)
            self._queue_frame(self._hs.write_message(payload))

    # ----------------------------------------------------------- receiving

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        if self.state is State.CLOSED or not data:
            return
        self.bytes_received += len(data)
        self._last_received = now
        self._keepalive_sent = False
        try:
            if self.state is State.PREAMBLE:
                data = self._receive_preamble(data, now)
                if not data:
                    return
            if self.state is State.HANDSHAKE:
                data = self._receive_handshake_bytes(data, now)
            for frame in self._frames.feed(data):
                if self.state is State.HANDSHAKE:
                    self._receive_handshake(frame, now)
                elif self.state is State.OPEN:
                    self._receive_transport(frame, now)
                else:
                    return
        except RemoteProtocolError as exc:
            self._fail(exc)

    def get_buffer(self) -> memoryview:
        """Free space for the transport to read the next bytes into; then `buffer_updated`.

        Once the session is open this is the frame decoder's own buffer, so bulk
        data goes from the socket to the decryptor without a copy.
        """
        if self.state is State.OPEN:
            self._scratch_used = False
            return self._frames.get_buffer()
        self._scratch_used = True
        return memoryview(self._scratch)

    def buffer_updated(self, n: int, now: float) -> None:
        """``n`` bytes were read into the last `get_buffer()`."""
        if self._scratch_used:
            self.receive_data(bytes(self._scratch[:n]), now)
            return
        if self.state is not State.OPEN or n <= 0:
            return
        self.bytes_received += n
        self._last_received = now
        self._keepalive_sent = False
        try:
            for frame in self._frames.buffer_updated(n):
                if self.state is not State.OPEN:
                    return
                self._receive_transport(frame, now)
        except RemoteProtocolError as exc:
            self._fail(exc)

    def _receive_preamble(
        self, data: bytes | bytearray | memoryview, now: float
    ) -> bytes | bytearray | memoryview:
        need = PREAMBLE_LEN - len(self._preamble_buf)
        self._preamble_buf += data[:need]
        rest = data[need:]
        if len(self._preamble_buf) < PREAMBLE_LEN:
            if not MAGIC.startswith(bytes(self._preamble_buf[:4])):
                raise HandshakeFailed("the peer is not a sidedoor node (wrong greeting)")
            return b""
        preamble = bytes(self._preamble_buf)
        if preamble[:4] != MAGIC:
            raise HandshakeFailed("the peer is not a sidedoor node (wrong greeting)")
        version = preamble[4]
        if self.role is Role.RESPONDER:
            self._queue_raw(MAGIC + bytes([PROTOCOL_VERSION, 0]))
            if version != PROTOCOL_VERSION:
                raise VersionMismatch(_version_message(version))
            pattern = _CODE_PATTERNS.get(preamble[5])
            if pattern is None:
                raise HandshakeFailed(
                    f"the peer asked for an unknown handshake pattern {preamble[5]}"
                )
            self.pattern = pattern
            self._hs = HandshakeState(
                pattern, False, self._keys.static_private, self._ephemeral, prologue=preamble
            )
        elif version != PROTOCOL_VERSION:
            raise VersionMismatch(_version_message(version))
        self.state = State.HANDSHAKE
        return rest

    def _receive_handshake_bytes(
        self, data: bytes | bytearray | memoryview, now: float
    ) -> bytes | bytearray | memoryview:
        """Feed handshake bytes until the handshake ends; return the bytes after it.

        The 1 KiB handshake frame limit must stop exactly where the handshake ends:
        transport frames (up to 64 KiB) may follow in the same read, and
        `FrameDecoder.feed` checks every frame header it is given. So the bytes go in
        one at a time; that is bounded, as a handshake frame is at most 1026 bytes and
        a side reads at most two of them before it opens or fails.
        """
        i = 0
        while self.state is State.HANDSHAKE and i < len(data):
            for frame in self._frames.feed(data[i : i + 1]):
                self._receive_handshake(frame, now)
            i += 1
        return data[i:]

    def _receive_handshake(self, frame: memoryview, now: float) -> None:
        hs = self._hs
        assert hs is not None
        if hs.is_my_turn:
            raise MessageError("the peer sent a handshake message out of turn")
        payload = hs.read_message(bytes(frame))
        if hs.remote_static is not None and payload:
            self._check_proof(payload, hs.remote_static)
        elif hs.remote_static is not None and self.remote_identity is None:
            raise HandshakeFailed("the peer did not prove its identity in the handshake")
        if not hs.complete:
            # XX message 2 (responder) and 3 (initiator), IK message 2: carry our proof.
            own = m.encode_proof(self._keys.proof)
            self._queue_frame(hs.write_message(own))
        if hs.complete:
            self._finish_handshake(now)

    def _check_proof(self, payload: bytes, remote_static: bytes) -> None:
        try:
            proof = m.decode_proof(payload)
        except MessageError as exc:
            raise HandshakeFailed(str(exc)) from exc
        if not self._verify_proof(proof.identity, proof.signature, remote_static):
            raise HandshakeFailed("the peer's identity proof has a bad signature")
        if self.expected_remote is not None and proof.identity != self.expected_remote:
            raise IdentityMismatch(
                "the peer at this address is not the one you asked for: it proved another "
                "identity (the address may be stale, or someone is in between)"
            )
        self.remote_identity = proof.identity

    def _finish_handshake(self, now: float) -> None:
        hs = self._hs
        assert hs is not None and hs.remote_static is not None
        if self.remote_identity is None:
            raise HandshakeFailed("the peer did not prove its identity in the handshake")
        self._send_cipher, self._recv_cipher = hs.split()
        self.remote_static = hs.remote_static
        self.handshake_hash = hs.handshake_hash
        self._hs = None
        self.state = State.OPEN
        self._frames.grow(MAX_FRAME_LEN, self.config.receive_buffer)
        self._deadline = None
        self._last_received = now
        self._events.append(
            HandshakeComplete(
                self.remote_identity, self.remote_static, self.pattern.value, self.handshake_hash
            )
        )

    def _receive_transport(self, frame: memoryview, now: float) -> None:
        assert self._recv_cipher is not None
        plain = self._recv_cipher.decrypt(frame)
        if not plain:
            raise MessageError("the peer sent an empty transport message")
        kind = plain[0]
        if kind == m.KIND_DATA:
            if len(plain) < m.DATA_HEADER.size:
                raise MessageError("a data message too short for its header")
            _, channel_id = m.DATA_HEADER.unpack_from(plain)
            self._receive_channel_data(channel_id, memoryview(plain)[m.DATA_HEADER.size :])
        elif kind == m.KIND_CONTROL:
            msg = m.decode_control(memoryview(plain)[1:])
            self._receive_control(msg, now)
        else:
            raise MessageError(f"unknown transport message kind {kind}")

    def _receive_channel_data(self, channel_id: int, data: memoryview) -> None:
        ch = self._channels.get(channel_id)
        if ch is None and channel_id in self._reset_ids:
            return  # in flight when we reset the channel
        if ch is None or ch.state is not _ChannelState.OPEN:
            raise MessageError(f"the peer sent data on channel {channel_id}, which is not open")
        if ch.remote_ended:
            raise MessageError(f"the peer sent data on channel {channel_id} after ending it")
        if len(data) > ch.recv_remaining:
            raise FlowControlError(
                f"the peer sent {len(data)} bytes on channel {channel_id} with only "
                f"{ch.recv_remaining} bytes of credit"
            )
        ch.recv_remaining -= len(data)
        if data:
            self._events.append(DataReceived(channel_id, data))

    def _receive_control(self, msg: m.ControlMessage | m.UnknownOptional, now: float) -> None:
        match msg:
            case m.Ping(token=token):
                self._queue_control(m.Pong(token))
            case m.Pong(token=token):
                sent = self._pings.pop(token, None)
                if sent is not None:
                    self._events.append(PongReceived(token, now - sent))
            case m.Close(code=code, reason=reason):
                reason = clean_name(reason, m.MAX_REASON_LEN)
                self._terminate(code, reason, by_peer=True, error=None)
            case m.ChannelOpen(channel=cid, kind=kind, window=window, meta=meta):
                self._receive_channel_open(cid, kind, window, meta)
            case m.ChannelAccept(channel=cid, window=window):
                ch = self._channels.get(cid)
                if ch is None and cid in self._reset_ids:
                    return
                if ch is None or ch.state is not _ChannelState.OPENING:
                    raise MessageError(f"the peer accepted channel {cid}, which we did not offer")
                _check_window(window)
                ch.state = _ChannelState.OPEN
                ch.send_credit = window
                self._events.append(ChannelAccepted(cid))
                self._schedule(ch)
            case m.ChannelReject(channel=cid, reason=reason):
                ch = self._channels.get(cid)
                if ch is None and cid in self._reset_ids:
                    return
                if ch is None or ch.state is not _ChannelState.OPENING:
                    raise MessageError(f"the peer rejected channel {cid}, which we did not offer")
                del self._channels[cid]
                self._events.append(ChannelRejected(cid, clean_name(reason, m.MAX_REASON_LEN)))
            case m.ChannelEnd(channel=cid):
                if cid not in self._channels and cid in self._reset_ids:
                    return
                ch = self._open_channel_or_fail(cid)
                if ch.remote_ended:
                    raise MessageError(f"the peer ended channel {cid} twice")
                ch.remote_ended = True
                self._events.append(ChannelEnded(cid))
                self._maybe_forget(ch)
            case m.ChannelReset(channel=cid, reason=reason):
                self._reset_ids.pop(cid, None)  # the peer sends nothing more on it
                if self._channels.pop(cid, None) is not None:
                    self._events.append(ChannelClosed(cid, clean_name(reason, m.MAX_REASON_LEN)))
            case m.WindowUpdate(channel=cid, increment=increment):
                ch = self._channels.get(cid)
                if ch is None:
                    return  # the channel closed while the update was in flight
                if increment <= 0 or ch.send_credit + increment > 1 << 40:
                    raise FlowControlError(f"the peer sent a bad window update ({increment})")
                ch.send_credit += increment
                self._schedule(ch)
            case m.UnknownOptional():
                pass

    def _receive_channel_open(self, cid: int, kind: str, window: int, meta: bytes) -> None:
        peer_parity = 0 if self.role is Role.INITIATOR else 1
        if cid <= 0 or cid % 2 != peer_parity or cid >= 1 << 32:
            raise MessageError(f"the peer opened channel {cid}, a number it may not use")
        if cid in self._channels:
            raise MessageError(f"the peer opened channel {cid} twice")
        self._reset_ids.pop(cid, None)  # the peer saw our reset and reuses the number
        if len(kind) > m.MAX_KIND_LEN or len(meta) > m.MAX_META_LEN:
            raise MessageError("the peer's channel request is over the size limits")
        _check_window(window)
        if len(self._channels) >= self.config.max_channels:
            self._queue_control(m.ChannelReject(cid, "too many channels open"))
            return
        self._channels[cid] = _Channel(cid, kind, _ChannelState.REQUESTED, send_credit=window)
        self.channels_opened += 1
        self._events.append(ChannelRequested(cid, kind, meta))

    def _open_channel_or_fail(self, cid: int) -> _Channel:
        ch = self._channels.get(cid)
        if ch is None or ch.state is not _ChannelState.OPEN:
            raise MessageError(f"the peer used channel {cid}, which is not open")
        return ch

    # ------------------------------------------------------------ channels

    def open_channel(self, kind: str, meta: bytes = b"") -> int:
        self._require_open()
        if len(kind) > m.MAX_KIND_LEN or len(meta) > m.MAX_META_LEN:
            raise LocalProtocolError("channel kind or meta over the size limits")
        cid = self._next_channel
        self._next_channel += 2
        self.channels_opened += 1
        window = self.config.channel_window
        self._channels[cid] = _Channel(
            cid, kind, _ChannelState.OPENING, recv_remaining=window, recv_window=window
        )
        self._queue_control(m.ChannelOpen(cid, kind, window, meta))
        return cid

    def accept_channel(self, cid: int, window: int | None = None) -> None:
        """Accept a channel the peer asked for; ``window`` caps what it may send unread."""
        if self.state is State.CLOSED:
            return
        ch = self._channels.get(cid)
        if ch is None or ch.state is not _ChannelState.REQUESTED:
            raise LocalProtocolError(f"channel {cid} is not waiting to be accepted")
        window = self.config.channel_window if window is None else window
        ch.state = _ChannelState.OPEN
        ch.recv_remaining = ch.recv_window = window
        self._queue_control(m.ChannelAccept(cid, window))
        self._schedule(ch)

    def reject_channel(self, cid: int, reason: str) -> None:
        if self.state is State.CLOSED:
            return
        ch = self._channels.get(cid)
        if ch is None or ch.state is not _ChannelState.REQUESTED:
            raise LocalProtocolError(f"channel {cid} is not waiting to be accepted")
        del self._channels[cid]
        self._queue_control(m.ChannelReject(cid, reason[: m.MAX_REASON_LEN]))

    def send(self, cid: int, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes on a channel; they leave as the peer grants credit."""
        ch = self._channels.get(cid)
        if ch is None or ch.state is _ChannelState.REQUESTED:
            raise LocalProtocolError(f"channel {cid} is not open")
        if ch.local_ended:
            raise LocalProtocolError(f"channel {cid} was ended; nothing more can be sent on it")
        if not data:
            return
        ch.pending.append(memoryview(data).cast("B"))
        ch.pending_bytes += len(data)
        self._schedule(ch)

    def end_channel(self, cid: int) -> None:
        """Half-close: we send nothing more. Queued data still goes first."""
        ch = self._channels.get(cid)
        if ch is None or ch.state is _ChannelState.REQUESTED:
            raise LocalProtocolError(f"channel {cid} is not open")
        if ch.local_ended:
            return
        ch.local_ended = True
        self._schedule(ch)

    def reset_channel(self, cid: int, reason: str) -> None:
        if self._channels.pop(cid, None) is None:
            return
        self._reset_ids[cid] = None
        if len(self._reset_ids) > MAX_RESET_MEMORY:
            del self._reset_ids[next(iter(self._reset_ids))]
        if self.state is State.OPEN:
            self._queue_control(m.ChannelReset(cid, reason[: m.MAX_REASON_LEN]))
        self._events.append(ChannelClosed(cid, reason))

    def consume(self, cid: int, n: int) -> bool:
        """The application has processed ``n`` received bytes: give the peer credit again.

        Credit is returned in batches of a quarter window; True when a `WindowUpdate`
        was queued (the glue then has something to transmit).
        """
        ch = self._channels.get(cid)
        if ch is None or ch.remote_ended or n <= 0:
            return False
        ch.unacked += n
        if ch.unacked < ch.recv_window // 4:
            return False
        ch.recv_remaining += ch.unacked
        self._queue_control(m.WindowUpdate(cid, ch.unacked))
        ch.unacked = 0
        return True

    def channel_backlog(self, cid: int) -> int:
        """Bytes queued on a channel and not yet handed to `data_to_send`."""
        ch = self._channels.get(cid)
        return ch.pending_bytes if ch is not None else 0

    def channel_kind(self, cid: int) -> str | None:
        ch = self._channels.get(cid)
        return ch.kind if ch is not None else None

    @property
    def open_channels(self) -> int:
        return len(self._channels)

    def _schedule(self, ch: _Channel) -> None:
        if ch.id not in self._rr and self._has_output(ch):
            self._rr.append(ch.id)

    @staticmethod
    def _has_output(ch: _Channel) -> bool:
        if ch.state is not _ChannelState.OPEN:
            return False
        if ch.pending_bytes and ch.send_credit > 0:
            return True
        return ch.local_ended and not ch.end_sent and not ch.pending_bytes

    def _maybe_forget(self, ch: _Channel) -> None:
        if ch.end_sent and ch.remote_ended:
            self._channels.pop(ch.id, None)
            self._events.append(ChannelClosed(ch.id, "ended"))

    # ------------------------------------------------------------ sending

    def ping(self, now: float) -> int:
        self._require_open()
        token = self._next_ping
        self._next_ping += 1
        if len(self._pings) >= MAX_PENDING_PINGS:
            self._pings.pop(next(iter(self._pings)))
        self._pings[token] = now
        self._queue_control(m.Ping(token))
        return token

    def close(self, reason: str = "closed", code: int = m.CloseCode.NORMAL) -> None:
        """Say goodbye to the peer; the session is closed once `data_to_send` is drained."""
        if self.state is State.CLOSED:
            return
        if self.state is State.OPEN:
            self._queue_control(m.Close(code, reason[: m.MAX_REASON_LEN]))
        self._terminate(code, reason, by_peer=False, error=None)

    def connection_lost(self, reason: str = "the connection was lost") -> None:
        """The transport is gone (EOF, reset)."""
        if self.state is State.CLOSED:
            return
        error: RemoteProtocolError | None = None
        if self.state is not State.OPEN:
            error = HandshakeFailed(f"the connection closed during the handshake ({reason})")
        self._terminate(m.CloseCode.PROTOCOL_ERROR if error else m.CloseCode.NORMAL,
                        str(error) if error else reason, by_peer=True, error=error)

    def data_to_send(self, limit: int = 1 << 20) -> bytes | bytearray:
        """Bytes for the transport, at most about ``limit`` (whole frames only).

        Transport messages are laid out in one buffer and encrypted in place, in
        nonce order: control messages first, then channel data round robin.
        """
        plan: list[tuple[bytes, list[memoryview], int]] = []
        size = self._out_bytes
        control = self._control
        while control and (size < limit or not (plan or self._out)):
            body = control.popleft()
            self._control_bytes -= len(body)
            plan.append((body, [], 0))
            size += len(body) + _FRAME_OVERHEAD
        if self.state is State.OPEN and not self._close_after_flush:
            size = self._plan_channels(plan, size, limit)
        if not plan and not self._out:
            return b""
        buf = bytearray(size)
        view = memoryview(buf)
        pos = 0
        for piece in self._out:
            view[pos : pos + len(piece)] = piece
            pos += len(piece)
        self._out = []
        self._out_bytes = 0
        cipher = self._send_cipher
        for head, payload, n in plan:
            assert cipher is not None
            body_len = len(head) + n + TAG_LEN
            view[pos : pos + 2] = frame_header(body_len)
            start = pos = pos + 2
            view[pos : pos + len(head)] = head
            pos += len(head)
            for part in payload:
                view[pos : pos + len(part)] = part
                pos += len(part)
            cipher.encrypt_in_place(view[start : start + body_len])
            pos = start + body_len
        view.release()
        assert pos == size
        self.bytes_sent += size
        return buf

    def _plan_channels(
        self, plan: list[tuple[bytes, list[memoryview], int]], size: int, limit: int
    ) -> int:
        rr = self._rr
        while rr and size < limit:
            cid = rr.popleft()
            ch = self._channels.get(cid)
            if ch is None:
                continue
            if ch.pending_bytes and ch.send_credit > 0:
                n = min(MAX_DATA_CHUNK, ch.send_credit, ch.pending_bytes)
                plan.append((m.encode_data_header(cid), self._take(ch, n), n))
                size += m.DATA_HEADER.size + n + _FRAME_OVERHEAD
            elif ch.local_ended and not ch.end_sent and not ch.pending_bytes:
                ch.end_sent = True
                body = m.encode_control(m.ChannelEnd(cid))
                plan.append((body, [], 0))
                size += len(body) + _FRAME_OVERHEAD
                self._maybe_forget(ch)
            if self._has_output(ch):
                rr.append(cid)
        return size

    @staticmethod
    def _take(ch: _Channel, n: int) -> list[memoryview]:
        parts: list[memoryview] = []
        need = n
        pending = ch.pending
        while need:
            head = pending[0]
            if len(head) <= need:
                parts.append(head)
                pending.popleft()
                need -= len(head)
            else:
                parts.append(head[:need])
                pending[0] = head[need:]
                need = 0
        ch.pending_bytes -= n
        ch.send_credit -= n
        return parts

    def _queue_raw(self, data: bytes) -> None:
        """Bytes that leave as they are: the preamble and handshake frames."""
        self._out.append(data)
        self._out_bytes += len(data)

    def _queue_frame(self, body: bytes) -> None:
        self._queue_raw(frame_header(len(body)) + body)

    def _queue_control(self, msg: m.ControlMessage) -> None:
        if self.state is State.CLOSED:
            return
        body = m.encode_control(msg)
        self._control.append(body)
        self._control_bytes += len(body)
        if self._control_bytes > MAX_CONTROL_BACKLOG:
            # The peer keeps asking (pings, window updates) and never reads the answers.
            self._fail(RemoteProtocolError("the peer is not reading what we send; closing"))

    @property
    def wants_close(self) -> bool:
        """True once the session is closed: the glue closes the transport after flushing."""
        return self.state is State.CLOSED

    # -------------------------------------------------------------- events

    def next_event(self) -> SessionEvent | None:
        return self._events.popleft() if self._events else None

    # -------------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        if self.state is State.CLOSED:
            return None
        if self.state is not State.OPEN:
            return self._deadline
        cfg = self.config
        if self._keepalive_sent:
            return self._last_received + cfg.idle_timeout
        return self._last_received + min(cfg.keepalive_interval, cfg.idle_timeout)

    def handle_timer(self, now: float) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is not State.OPEN:
            if self._deadline is not None and now >= self._deadline:
                self._fail(PeerTimeout("the peer did not complete the handshake in time"),
                           code=m.CloseCode.TIMEOUT)
            return
        idle = now - self._last_received
        if idle >= self.config.idle_timeout:
            self._fail(PeerTimeout(f"the peer has been silent for {idle:.0f} s"),
                       code=m.CloseCode.TIMEOUT)
        elif idle >= self.config.keepalive_interval and not self._keepalive_sent:
            self._keepalive_sent = True
            self.ping(now)

    # ------------------------------------------------------------- helpers

    def _require_open(self) -> None:
        if self.state is not State.OPEN:
            raise LocalProtocolError(f"the session is {self.state.value}, not open")

    def _fail(self, exc: RemoteProtocolError, code: int = m.CloseCode.PROTOCOL_ERROR) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is State.OPEN:
            self._control.clear()
            self._control_bytes = 0
            self._queue_control(m.Close(code, str(exc)[: m.MAX_REASON_LEN]))
        self._terminate(code, str(exc), by_peer=False, error=exc)

    def _terminate(
        self, code: int, reason: str, *, by_peer: bool, error: RemoteProtocolError | None
    ) -> None:
        self.state = State.CLOSED
        self.close_reason = reason
        self._close_after_flush = True
        self._rr.clear()
        for cid in list(self._channels):
            self._events.append(ChannelClosed(cid, reason))
        self._channels.clear()
        self._events.append(SessionClosed(code, reason, by_peer, error))


def _check_window(window: int) -> None:
    if not 0 <= window <= 1 << 32:
        raise FlowControlError(f"the peer offered a bad channel window ({window})")


def _version_message(version: int) -> str:
    newer = "newer" if version > PROTOCOL_VERSION else "older"
    return (
        f"the peer speaks sidedoor protocol v{version} and this node speaks "
        f"v{PROTOCOL_VERSION}; the peer runs a {newer} sidedoor, so one of you needs to update"
    )
