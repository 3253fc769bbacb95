"""The session's message set: what travels inside Noise transport messages.

Every decrypted transport message starts with one kind byte:

* ``KIND_CONTROL`` (0): the rest is one msgpack-encoded `ControlMessage`
  (an array whose first element is the message's type number);
* ``KIND_DATA`` (1): a 4-byte big-endian channel id, then the channel's bytes.
  Bulk data skips msgpack so a 64 KiB chunk is not copied or parsed twice.

The rule for unknown types (borrowed in spirit from Lightning's "it's OK to be
odd"): a control message whose type number is unknown is **ignored if the
number is odd** and **fatal if it is even**. A later version adds optional
messages with odd numbers; a message every peer must understand gets an even
number and a protocol version bump. An unknown kind byte is fatal.

The Noise handshake payloads (`IdentityProof`) are defined here too.
"""

from __future__ import annotations

import struct
from typing import Final

import msgspec

from sidedoor.errors import MessageError

KIND_CONTROL: Final = 0
KIND_DATA: Final = 1
DATA_HEADER = struct.Struct(">BI")
MAX_REASON_LEN: Final = 512
MAX_KIND_LEN: Final = 64
MAX_META_LEN: Final = 4096


class IdentityProof(msgspec.Struct, array_like=True, frozen=True):
    """Handshake payload: "the X25519 static key of this handshake belongs to this Ed25519 key".

    ``signature`` signs the sender's Noise static public key under
    `SignatureDomain.NOISE_STATIC`.
    """

    identity: bytes
    signature: bytes


class Ping(msgspec.Struct, tag=2, array_like=True, frozen=True):
    token: int


class Pong(msgspec.Struct, tag=4, array_like=True, frozen=True):
    token: int


class Close(msgspec.Struct, tag=6, array_like=True, frozen=True):
    code: int
    reason: str


class ChannelOpen(msgspec.Struct, tag=8, array_like=True, frozen=True):
    """Open a stream channel. ``window`` is how many bytes the peer may send us on it."""

    channel: int
    kind: str
    window: int
    meta: bytes = b""


class ChannelAccept(msgspec.Struct, tag=10, array_like=True, frozen=True):
    channel: int
    window: int


class ChannelReject(msgspec.Struct, tag=12, array_like=True, frozen=True):
    channel: int
    reason: str


class ChannelEnd(msgspec.Struct, tag=14, array_like=True, frozen=True):
    """The sender will send no more data on this channel (a half close)."""

    channel: int


class ChannelReset(msgspec.Struct, tag=16, array_like=True, frozen=True):
    """Abort the channel in both directions."""

    channel: int
    reason: str


class WindowUpdate(msgspec.Struct, tag=18, array_like=True, frozen=True):
    """The receiver has consumed data: the sender may send ``increment`` more bytes."""

    channel: int
    increment: int


ControlMessage = (
    Ping | Pong | Close | ChannelOpen | ChannelAccept | ChannelReject | ChannelEnd
    | ChannelReset | WindowUpdate
)


class UnknownOptional(msgspec.Struct, frozen=True):
    """A control message with an unknown odd type number; the session ignores it."""

    type_number: int


class CloseCode:
    """Why a session ended, in `Close.code`."""

    NORMAL: Final = 0
    PROTOCOL_ERROR: Final = 1
    TIMEOUT: Final = 2
    SHUTTING_DOWN: Final = 3
    NOT_ALLOWED: Final = 4
    BUSY: Final = 5
    # Nothing to carry: closed to free a broker's relay. Both ends are still up and
    # registered with that broker, so neither should show the other as gone.
    IDLE: Final = 6


_encoder = msgspec.msgpack.Encoder()
_control_decoder = msgspec.msgpack.Decoder(ControlMessage)
_proof_decoder = msgspec.msgpack.Decoder(IdentityProof)
_any_decoder = msgspec.msgpack.Decoder()


def encode_control(message: ControlMessage) -> bytes:
    return b"\x00" + _encoder.encode(message)


def encode_data_header(channel: int) -> bytes:
    return DATA_HEADER.pack(KIND_DATA, channel)


def decode_control(body: bytes | memoryview) -> ControlMessage | UnknownOptional:
    """Decode a control message body (without the kind byte)."""
    try:
        return _control_decoder.decode(body)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        type_number = _type_number(body)
        if type_number is None:
            raise MessageError(f"malformed control message: {exc}") from exc
        known = {t.__struct_config__.tag for t in ControlMessage.__args__}
        if type_number in known:
            raise MessageError(f"malformed control message: {exc}") from exc
        if type_number % 2:
            return UnknownOptional(type_number)
        raise MessageError(
            f"the peer sent control message type {type_number}, which this version does not "
            "know and must not ignore; one of you needs to update sidedoor"
        ) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec raises UnicodeDecodeError itself for a str that is not UTF-8.
        raise MessageError(f"undecodable control message: {exc}") from exc


def _type_number(body: bytes | memoryview) -> int | None:
    try:
        value = _any_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if isinstance(value, list) and value and type(value[0]) is int and value[0] >= 0:
        return value[0]
    return None


def encode_proof(proof: IdentityProof) -> bytes:
    return _encoder.encode(proof)


def decode_proof(payload: bytes) -> IdentityProof:
    try:
        proof = _proof_decoder.decode(payload)
    except msgspec.MsgspecError as exc:
        raise MessageError(f"malformed identity proof in the handshake: {exc}") from exc
    if len(proof.identity) != 32 or len(proof.signature) != 64:
        raise MessageError("malformed identity proof in the handshake: wrong key or signature size")
    return proof
