"""Chat on the wire: messages, receipts, room membership and history sync (sans-I/O).

Channels of kind ``chat`` carry length-prefixed msgpack frames (`Frame`, a tagged
union). The node that opened the channel sends requests (`Message`, `Receipt`,
`RoomUpdate`, `Leave`, `SyncRequest`); the other answers each one, in order, with
an `Ack` (or a `SyncResponse` to a `SyncRequest`). ``Ack(status="stored")`` means
the receiver has the thing in its database: the sender may forget it. The same
request frames, encoded alone, are the payloads of ``chat`` mail (store and
forward through a broker); mail has no `Ack`, so a message that arrives that way
is answered with a ``delivered`` `Receipt` instead. Unknown frame types, or frames
that do not decode, reset the channel: the peer speaks something we do not.

Who sent what
    A direct message is authenticated by its path: the session's proven identity,
    or the signature the mail layer checked. Its ``sender`` must be that identity.
    A room message is also signed by its sender (`SignatureDomain.CHAT_MESSAGE`),
    because any member may pass it on to a member who missed it (history sync).

Rooms
    A room's membership is a chain of `RoomUpdate` snapshots, version 1, 2, 3, ...
    Version 1 is signed by its creator, who is its first admin; version n+1 must be
    signed by an admin of version n. Every member applies the chain in order and
    ignores an update that is not the next version or not signed by an admin.

Ordering (the rule every view uses)
    Within one sender, messages are shown in the order of their sequence numbers
    (``seq``, 1, 2, 3, ... per sender and conversation): always, whatever the clocks.
    Across senders, by ``order_at``, then the sender's key, then ``seq``, where::

        effective(m) = min(m.sent_at, m.received_at + MAX_FUTURE_SKEW_MS)
        order_at(m)  = max(effective(m') for m' from the same sender with m'.seq <= m.seq)

    The clamp keeps a sender whose clock is far in the future from pinning its
    messages below everything said after them: a message sorts at most
    `MAX_FUTURE_SKEW_MS` after the moment it arrived. The running maximum keeps
    each sender's messages in ``seq`` order even if its clock goes backwards.
    ``order_at`` does not depend on the order in which messages arrive. Senders
    stamp ``sent_at`` with a hybrid logical clock (`next_sent_at`): never below
    the newest ``order_at`` they have seen in the conversation, so a reply sorts
    after what it answers even when the replier's clock is behind.
    Two nodes may differ on the order of messages sent within the same few
    milliseconds (their receive times differ); each node's order is stable.

Times are milliseconds since the epoch, as integers; ``now`` is always an argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import msgspec

from sidedoor.errors import ChatRefused, MessageError
from sidedoor.identity import Identity, PublicIdentity, SignatureDomain

KIND: Final = "chat"
ID_LEN: Final = 16
KEY_LEN: Final = 32
ID_RANDOM: Final = 10       # the random part of a message id (see message_id)
_ID_TIME_MASK: Final = (1 << 48) - 1
MAX_TEXT_BYTES: Final = 16 << 10
MAX_ATTACHMENTS: Final = 16
MAX_ATTACHMENT_REF: Final = 64
MAX_ROOM_NAME: Final = 64
MAX_ROOM_MEMBERS: Final = 256
MAX_RECEIPT_IDS: Final = 1024
MAX_SYNC_MESSAGES: Final = 500
MAX_SYNC_SENDERS: Final = MAX_ROOM_MEMBERS * 4
# Frames on the channel may be larger than the text limit, so that an over-size
# message is read whole and refused with an answer, not cut off with a reset.
MAX_FRAME: Final = 64 << 10
MAX_SYNC_FRAME: Final = 16 << 20
MAX_FUTURE_SKEW_MS: Final = 60_000
MAX_REASON: Final = 200


# ------------------------------------------------------------------ frames

class Message(msgspec.Struct, tag="msg", array_like=True, frozen=True):
    """One chat message. ``to`` is the recipient's key (direct) or a room id."""

    id: bytes
    sender: bytes
    to: bytes
    seq: int
    sent_at: int
    text: str
    reply_to: bytes = b""
    attachments: tuple[bytes, ...] = ()
    signature: bytes = b""  # room messages only

    @property
    def is_room(self) -> bool:
        return len(self.to) == ID_LEN


class Receipt(msgspec.Struct, tag="receipt", array_like=True, frozen=True):
    """The receiver tells the sender it stored (``delivered``) or showed (``read``) messages."""

    id: bytes
    conversation: bytes  # the sender's view: our key (direct) or the room id
    state: Literal["delivered", "read"]
    messages: tuple[bytes, ...]


class RoomUpdate(msgspec.Struct, tag="room", array_like=True, frozen=True):
    """Version ``version`` of a room's membership, signed by one of its admins."""

    room: bytes
    version: int
    name: str
    admins: tuple[bytes, ...]
    members: tuple[bytes, ...]
    signer: bytes
    signature: bytes = b""


class Leave(msgspec.Struct, tag="leave", array_like=True, frozen=True):
    """A member asks the room's admins to remove it (sent over an authenticated path)."""

    id: bytes
    room: bytes


class SyncRequest(msgspec.Struct, tag="sync", array_like=True, frozen=True):
    """What the asker has of a room: its version and, per sender, the highest seq
    below which it has every message. The answer holds what it lacks."""

    id: bytes
    room: bytes
    version: int
    have: tuple[tuple[bytes, int], ...]


class SyncResponse(msgspec.Struct, tag="synced", array_like=True, frozen=True):
    id: bytes
    updates: tuple[RoomUpdate, ...]
    messages: tuple[Message, ...]
    more: bool = False


class Ack(msgspec.Struct, tag="ack", array_like=True, frozen=True):
    """The answer to one request: ``stored`` (kept, or kept before), or ``refused``."""

    id: bytes
    status: Literal["stored", "refused"]
    reason: str = ""


Request = Message | Receipt | RoomUpdate | Leave | SyncRequest
Frame = Message | Receipt | RoomUpdate | Leave | SyncRequest | SyncResponse | Ack

def ref(frame: Request) -> bytes:
    """What the answer to ``frame`` names it by: its id (a room update: room and version)."""
    if isinstance(frame, RoomUpdate):
        return frame.room + frame.version.to_bytes(8, "big")
    return frame.id


_encoder = msgspec.msgpack.Encoder()
_frame_decoder = msgspec.msgpack.Decoder(Frame)


def encode(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def decode(data: bytes | memoryview) -> Frame:
    """One frame; `MessageError` for anything malformed (invalid UTF-8 included)."""
    try:
        frame: Frame = _frame_decoder.decode(data)
    except (msgspec.MsgspecError, UnicodeDecodeError) as exc:
        raise MessageError(f"malformed chat frame: {exc}") from exc
    return frame


class FrameSplitter:
    """Cuts a channel's byte stream into length-prefixed frames (4-byte big-endian length).

    Whatever arrived is fed in; every complete frame comes out at once, so a busy
    channel is handled in batches. A length over ``limit`` raises `MessageError`
    before anything of the frame is buffered.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos, end = 0, len(buf)
        while end - pos >= 4:
            size = int.from_bytes(buf[pos : pos + 4], "big")
            if size > self.limit:
                raise MessageError(f"a {size}-byte chat frame; the limit is {self.limit}")
            if end - pos - 4 < size:
                break
            frames.append(bytes(buf[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        del buf[:pos]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)


# ------------------------------------------------------------- validation

def _need(ok: bool, reason: str) -> None:
    if not ok:
        raise ChatRefused(reason)


def message_id(sent_at: int, nonce: bytes) -> bytes:
    """The id a sender gives its message: the send time (6 bytes of milliseconds, big
    endian) then ``nonce`` (`ID_RANDOM` random bytes).

    Why the time first: ids are the key of a unique index on every node that stores
    the message. Random keys land each on a different page of that index, so a burst
    of messages dirtied (and its commit rewrote) one page per message; ids that grow
    with time are appended, a third less work per message stored. 80 random bits a
    millisecond keep them unique, and the time is no secret: the message carries it.
    Receivers treat ids as opaque; only their uniqueness matters.
    """
    if len(nonce) != ID_RANDOM:
        raise ValueError(f"a message id nonce is {ID_RANDOM} bytes")
    return (sent_at & _ID_TIME_MASK).to_bytes(ID_LEN - ID_RANDOM, "big") + nonce


def check_message(msg: Message) -> None:
    """Raise `ChatRefused` with the reason the sender will see if ``msg`` breaks a limit."""
    # Every message goes through here: the common case is decided with a few compares.
    if not (len(msg.id) == ID_LEN and len(msg.sender) == KEY_LEN
            and len(msg.to) in (ID_LEN, KEY_LEN) and msg.seq >= 1 and msg.sent_at >= 0):
        _need(len(msg.id) == ID_LEN, "a message id is 16 bytes")
        _need(len(msg.sender) == KEY_LEN, "a sender is a 32-byte key")
        _need(len(msg.to) in (ID_LEN, KEY_LEN), "a message goes to a contact or a room")
        _need(msg.seq >= 1, "sequence numbers start at 1")
        _need(msg.sent_at >= 0, "a negative timestamp")
    if len(msg.text) * 4 > MAX_TEXT_BYTES:  # else it fits whatever its characters
        size = len(msg.text.encode("utf-8", "surrogatepass"))
        _need(size <= MAX_TEXT_BYTES,
              f"the message is {size} bytes; the limit is {MAX_TEXT_BYTES} bytes of text")
    _need((not msg.text.isspace() and msg.text != "") or bool(msg.attachments), "an empty message")
    if msg.reply_to or msg.attachments or msg.signature:
        _need(len(msg.reply_to) in (0, ID_LEN), "reply_to is a message id")
        _need(len(msg.attachments) <= MAX_ATTACHMENTS,
              f"at most {MAX_ATTACHMENTS} attachments per message")
        _need(all(0 < len(a) <= MAX_ATTACHMENT_REF for a in msg.attachments),
              "an attachment reference is 1 to 64 bytes")
        _need(msg.is_room or msg.signature == b"", "direct messages are not signed")


def check_text(text: str) -> None:
    """The local check `send` makes before anything is stored."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ChatRefused("the text is not valid Unicode") from None
    _need(text.strip() != "", "an empty message")
    _need(size <= MAX_TEXT_BYTES,
          f"the message is {size} bytes; the limit is {MAX_TEXT_BYTES} bytes")


def message_signed_bytes(msg: Message) -> bytes:
    return _encoder.encode(msgspec.structs.replace(msg, signature=b""))


def sign_message(identity: Identity, msg: Message) -> Message:
    return msgspec.structs.replace(
        msg, signature=identity.sign(SignatureDomain.CHAT_MESSAGE, message_signed_bytes(msg)))


def message_signature_ok(msg: Message) -> bool:
    return PublicIdentity(msg.sender).verify(
        SignatureDomain.CHAT_MESSAGE, message_signed_bytes(msg), msg.signature)


# ------------------------------------------------------------------ rooms

@dataclass(frozen=True)
class RoomState:
    """A room as a member knows it: the last applied version of its membership."""

    room: bytes
    version: int
    name: str
    admins: frozenset[bytes]
    members: frozenset[bytes]

    @classmethod
    def of(cls, update: RoomUpdate) -> RoomState:
        return cls(update.room, update.version, update.name, frozenset(update.admins),
                   frozenset(update.members))


def _update_signed_bytes(update: RoomUpdate) -> bytes:
    return _encoder.encode(msgspec.structs.replace(update, signature=b""))


def make_update(identity: Identity, room: bytes, version: int, name: str,
                admins: Iterable[bytes], members: Iterable[bytes]) -> RoomUpdate:
    """A signed membership snapshot (members sorted, so that equal sets sign equally)."""
    admins_t = tuple(sorted(set(admins)))
    members_t = tuple(sorted(set(members) | set(admins_t)))
    update = RoomUpdate(room, version, name, admins_t, members_t, identity.public.key)
    check_update_shape(update)
    return msgspec.structs.replace(update, signature=identity.sign(
        SignatureDomain.ROOM_UPDATE, _update_signed_bytes(update)))


def check_update_shape(update: RoomUpdate) -> None:
    _need(len(update.room) == ID_LEN, "a room id is 16 bytes")
    _need(update.version >= 1, "room versions start at 1")
    _need(0 < len(update.name) <= MAX_ROOM_NAME and update.name.strip() == update.name,
          f"a room name is 1 to {MAX_ROOM_NAME} characters")
    _need(len(update.admins) > 0 and set(update.admins) <= set(update.members),
          "a room has at least one admin, and admins are members")
    _need(len(update.members) <= MAX_ROOM_MEMBERS,
          f"a room has at most {MAX_ROOM_MEMBERS} members")
    _need(all(len(k) == KEY_LEN for k in (*update.members, update.signer)),
          "members are 32-byte keys")


def apply_update(state: RoomState | None, update: RoomUpdate) -> RoomState:
    """The room after ``update``; `ChatRefused` if it is not the next, admin-signed version."""
    check_update_shape(update)
    if state is None:
        _need(update.version == 1, "this room is unknown here; its history starts at version 1")
        _need(update.signer in update.admins, "a room is created by one of its admins")
    else:
        _need(update.room == state.room, "an update of another room")
        _need(update.version == state.version + 1,
              f"room version {update.version} does not follow {state.version}")
        _need(update.signer in state.admins, "the update is not signed by an admin of the room")
    _need(PublicIdentity(update.signer).verify(SignatureDomain.ROOM_UPDATE,
                                               _update_signed_bytes(update), update.signature),
          "the room update's signature does not verify")
    return RoomState.of(update)


def apply_chain(state: RoomState | None, updates: Iterable[RoomUpdate]
                ) -> tuple[RoomState | None, list[RoomUpdate]]:
    """Apply what follows ``state`` in ``updates`` (any order, duplicates allowed).

    Returns the new state and the updates applied, in order. An update that is
    not signed by an admin, or that would leave a gap, is skipped.
    """
    pending = {u.version: u for u in updates
               if u.version > (state.version if state is not None else 0)}
    applied: list[RoomUpdate] = []
    while True:
        version = (state.version if state is not None else 0) + 1
        update = pending.pop(version, None)
        if update is None:
            return state, applied
        try:
            state = apply_update(state, update)
        except ChatRefused:
            return state, applied
        applied.append(update)


# --------------------------------------------------------------- ordering

def effective_time(sent_at: int, received_at: int) -> int:
    """The sender's timestamp, clamped to at most `MAX_FUTURE_SKEW_MS` after arrival."""
    return min(sent_at, received_at + MAX_FUTURE_SKEW_MS)


def next_sent_at(now: int, newest_order_at: int) -> int:
    """The hybrid logical clock a sender stamps with: never behind what it has seen."""
    return max(now, newest_order_at + 1)


@dataclass(frozen=True)
class Placed:
    sender: bytes
    seq: int
    sent_at: int
    received_at: int
    order_at: int

    def key(self) -> tuple[int, bytes, int]:
        return (self.order_at, self.sender, self.seq)


@dataclass
class Timeline:
    """One conversation's ordering, kept in memory (the database does the same in SQL).

    `insert` returns what it changed: the new message's ``order_at`` and any later
    messages of the same sender whose ``order_at`` had to rise to stay in seq order.
    """

    _by_sender: dict[bytes, dict[int, Placed]] = field(default_factory=dict)

    def insert(self, sender: bytes, seq: int, sent_at: int, received_at: int
               ) -> list[Placed]:
        mine = self._by_sender.setdefault(sender, {})
        if seq in mine:
            return []
        floor = max((p.order_at for s, p in mine.items() if s < seq), default=0)
        placed = Placed(sender, seq, sent_at, received_at,
                        max(effective_time(sent_at, received_at), floor))
        mine[seq] = placed
        changed = [placed]
        for s in sorted(s for s in mine if s > seq):
            later = mine[s]
            if later.order_at >= placed.order_at:
                break
            mine[s] = Placed(later.sender, s, later.sent_at, later.received_at,
                             placed.order_at)
            changed.append(mine[s])
        return changed

    def order(self) -> list[Placed]:
        return sorted((p for m in self._by_sender.values() for p in m.values()),
                      key=Placed.key)


def contiguous_high(seqs: Sequence[int]) -> int:
    """The highest n such that 1..n are all in ``seqs`` (sorted ascending)."""
    high = 0
    for s in seqs:
        if s == high + 1:
            high = s
        elif s > high + 1:
            break
    return high
