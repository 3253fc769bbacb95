"""What a `Session` tells the layer above it."""

from __future__ import annotations

from dataclasses import dataclass

from sidedoor.errors import ProtocolError


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    remote_identity: bytes
    """The peer's Ed25519 public key, proven in the handshake."""
    remote_static: bytes
    """The peer's X25519 static key: lets the next dial use the faster IK pattern."""
    pattern: str
    handshake_hash: bytes


@dataclass(frozen=True, slots=True)
class ChannelRequested:
    """The peer wants to open a channel; call `accept_channel` or `reject_channel`."""

    channel: int
    kind: str
    meta: bytes


@dataclass(frozen=True, slots=True)
class ChannelAccepted:
    channel: int


@dataclass(frozen=True, slots=True)
class ChannelRejected:
    channel: int
    reason: str


@dataclass(frozen=True, slots=True)
class DataReceived:
    channel: int
    data: memoryview
    """A read-only view of the received bytes (no copy); ``bytes(data)`` to copy."""


@dataclass(frozen=True, slots=True)
class ChannelEnded:
    """The peer will send no more on this channel; we may still send."""

    channel: int


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """The channel is gone in both directions (ended by both sides, or reset)."""

    channel: int
    reason: str


@dataclass(frozen=True, slots=True)
class PongReceived:
    token: int
    rtt: float


@dataclass(frozen=True, slots=True)
class SessionClosed:
    code: int
    reason: str
    by_peer: bool
    error: ProtocolError | None = None


SessionEvent = (
    HandshakeComplete | ChannelRequested | ChannelAccepted | ChannelRejected | DataReceived
    | ChannelEnded | ChannelClosed | PongReceived | SessionClosed
)
