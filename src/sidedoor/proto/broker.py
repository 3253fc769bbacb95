"""The broker protocol: what a node and a broker say to each other.

A node holds one Noise session with each broker it uses (the broker's key is pinned
by its address, ``sidedoor-broker://HOST:PORT/ADDRESS``) and opens one channel of
kind ``broker`` on it. Both sides write length-prefixed msgpack messages on it:
requests from the node carry a request id ``rid`` that the answer repeats; the broker
also pushes messages of its own (``rid`` 0): a relay or punch to join, mail to take.

Relays do not use the session: each peer opens a fresh TCP connection to the broker
and starts it with ``RELAY_PREAMBLE || token``; the broker pairs the two connections
that present the same token and copies bytes between them. The peers then run their
own Noise handshake over it, end to end, so the broker forwards ciphertext only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import msgspec

from sidedoor.errors import InvalidBrokerAddress, MessageError
from sidedoor.identity import PublicIdentity
from sidedoor.proto.envelope import MAX_ENVELOPE

KIND_BROKER: Final = "broker"
URL_SCHEME: Final = "sidedoor-broker"
RELAY_PREAMBLE: Final = b"sdrl"
RELAY_TOKEN_LEN: Final = 16
MAX_MESSAGE: Final = 400 << 10  # an envelope plus its framing
MAX_ADDRS: Final = 8
MAX_ALLOW: Final = 4096
REGISTRATION_TTL: Final = 90.0  # the node refreshes at a third of it


# --------------------------------------------------------------- node -> broker
class Register(msgspec.Struct, tag="register", array_like=True, frozen=True):
    """Soft state: who may look us up and dial us, and where we listen."""

    rid: int
    listen_addrs: list[str]
    listen_port: int
    allow: list[bytes]  # identities that may look us up, relay and punch to us
    strangers: bool  # whether anyone who names our address may reach us for an introduction


class Lookup(msgspec.Struct, tag="lookup", array_like=True, frozen=True):
    rid: int
    target: bytes


class RelayRequest(msgspec.Struct, tag="relay", array_like=True, frozen=True):
    rid: int
    target: bytes


class PunchRequest(msgspec.Struct, tag="punch", array_like=True, frozen=True):
    rid: int
    target: bytes


class Deposit(msgspec.Struct, tag="deposit", array_like=True, frozen=True):
    rid: int
    recipient: bytes
    envelope: bytes


class MailAck(msgspec.Struct, tag="ack", array_like=True, frozen=True):
    ids: list[int]


class ClaimNameplate(msgspec.Struct, tag="claim", array_like=True, frozen=True):
    rid: int


class ReleaseNameplate(msgspec.Struct, tag="release", array_like=True, frozen=True):
    nameplate: int


class UseNameplate(msgspec.Struct, tag="use", array_like=True, frozen=True):
    rid: int
    nameplate: int


class Ping(msgspec.Struct, tag="ping", array_like=True, frozen=True):
    rid: int


# --------------------------------------------------------------- broker -> node
class Ok(msgspec.Struct, tag="ok", array_like=True, frozen=True):
    rid: int


class Refused(msgspec.Struct, tag="refused", array_like=True, frozen=True):
    rid: int
    reason: str


class Registered(msgspec.Struct, tag="registered", array_like=True, frozen=True):
    rid: int
    observed: str  # HOST:PORT this node's session comes from, as the broker sees it
    ttl: float
    mail_waiting: int


class Found(msgspec.Struct, tag="found", array_like=True, frozen=True):
    rid: int
    listen_addrs: list[str]
    observed: str
    listen_port: int


class RelayReady(msgspec.Struct, tag="relay-ready", array_like=True, frozen=True):
    rid: int
    token: bytes


class RelayIncoming(msgspec.Struct, tag="relay-in", array_like=True, frozen=True):
    """Pushed to the target: ``peer`` waits for you at the broker with ``token``."""

    peer: bytes
    token: bytes


class PunchAt(msgspec.Struct, tag="punch-at", array_like=True, frozen=True):
    """Dial ``addr`` from your listening port ``delay`` seconds after this arrives."""

    rid: int  # the request's id for the peer that asked, 0 for the other
    peer: bytes
    addr: str
    delay: float


class Deposited(msgspec.Struct, tag="deposited", array_like=True, frozen=True):
    rid: int
    mail_id: int


class MailItem(msgspec.Struct, tag="mail", array_like=True, frozen=True):
    mail_id: int
    envelope: bytes


class Claimed(msgspec.Struct, tag="claimed", array_like=True, frozen=True):
    rid: int
    nameplate: int


class NameplateOwner(msgspec.Struct, tag="owner", array_like=True, frozen=True):
    rid: int
    owner: bytes


class Pong(msgspec.Struct, tag="pong", array_like=True, frozen=True):
    rid: int


ToBroker = (Register | Lookup | RelayRequest | PunchRequest | Deposit | MailAck
            | ClaimNameplate | ReleaseNameplate | UseNameplate | Ping)
FromBroker = (Ok | Refused | Registered | Found | RelayReady | RelayIncoming | PunchAt
              | Deposited | MailItem | Claimed | NameplateOwner | Pong)

_encoder = msgspec.msgpack.Encoder()
_to_broker: msgspec.msgpack.Decoder[ToBroker] = msgspec.msgpack.Decoder(ToBroker)
_from_broker: msgspec.msgpack.Decoder[FromBroker] = msgspec.msgpack.Decoder(FromBroker)


def encode(message: ToBroker | FromBroker) -> bytes:
    return _encoder.encode(message)


def decode_to_broker(data: bytes | memoryview) -> ToBroker:
    try:
        message = _to_broker.decode(data)
    except (msgspec.MsgspecError, UnicodeDecodeError) as exc:
        raise MessageError(f"malformed broker request: {exc}") from exc
    _check_request(message)
    return message


def decode_from_broker(data: bytes | memoryview) -> FromBroker:
    try:
        return _from_broker.decode(data)
    except (msgspec.MsgspecError, UnicodeDecodeError) as exc:
        raise MessageError(f"malformed broker message: {exc}") from exc


def _check_request(message: ToBroker) -> None:
    """Sizes the types alone do not bound."""
    for name in ("target", "recipient"):
        value = getattr(message, name, None)
        if value is not None and len(value) != 32:
            raise MessageError(f"{name} must be a 32-byte identity")
    if isinstance(message, Register):
        if len(message.listen_addrs) > MAX_ADDRS or any(
                len(a) > 64 for a in message.listen_addrs):
            raise MessageError("too many or too long listening addresses")
        if len(message.allow) > MAX_ALLOW or any(len(a) != 32 for a in message.allow):
            raise MessageError("the allow list holds a bad identity or is too long")
        if not 0 <= message.listen_port < 65536:
            raise MessageError("bad listening port")
    if isinstance(message, Deposit) and len(message.envelope) > MAX_ENVELOPE:
        raise MessageError(f"an envelope over {MAX_ENVELOPE} bytes")
    if isinstance(message, MailAck) and len(message.ids) > 1024:
        raise MessageError("too many acknowledgements at once")


# ------------------------------------------------------------------ addresses
_URL = re.compile(r"^sidedoor-broker://(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):"
                  r"(?P<port>\d{1,5})/(?P<address>[A-Za-z0-9-]+)/?$")


@dataclass(frozen=True)
class BrokerAddress:
    """Where a broker listens and the key it must prove: ``sidedoor-broker://HOST:PORT/KEY``."""

    host: str
    port: int
    identity: PublicIdentity

    @classmethod
    def parse(cls, text: str) -> BrokerAddress:
        match = _URL.match(text.strip())
        if match is None:
            raise InvalidBrokerAddress(
                f"not a broker address: {text.strip()[:80]!r}; it looks like "
                "sidedoor-broker://HOST:PORT/sd... (the broker prints it when it starts)")
        port = int(match["port"])
        if not 0 < port < 65536:
            raise InvalidBrokerAddress(f"bad port {port} in the broker address")
        try:
            identity = PublicIdentity.from_address(match["address"])
        except ValueError as exc:
            raise InvalidBrokerAddress(f"the broker's key in the address: {exc}") from exc
        return cls(match["host"].strip("[]"), port, identity)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{URL_SCHEME}://{host}:{self.port}/{self.identity.address}"

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"
