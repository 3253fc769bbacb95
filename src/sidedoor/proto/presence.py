"""Presence signals between contacts: "I am away" and "I am typing to you".

They are ephemeral: nothing is stored or forwarded, and a signal lost with a
session is simply sent again with the next one. Each signal travels as the
metadata of its own short channel of kind `KIND`, so this module only encodes,
decodes and checks them (sans-I/O).

A status says whether its sender is ``available`` or ``away`` and since when; it is
sent when a session with a contact opens and whenever it changes. Typing names the
conversation: empty for the direct conversation with the receiver, else a room id.
The receiver checks the room (is the sender a member?) and rate-limits typing, which
a UI sends at most every `TYPING_EVERY` seconds while a person types.
"""

from __future__ import annotations

from typing import Final

import msgspec

from sidedoor.errors import MessageError

KIND: Final = "presence"
MAX_SIGNAL_BYTES: Final = 128
STATES: Final = ("available", "away")
ROOM_ID_LEN: Final = 16
TYPING_EVERY: Final = 3.0  # seconds between typing signals from one person, at most
TYPING_SHOWN_FOR: Final = 6.0  # a UI shows "typing" this long after the last signal


class Status(msgspec.Struct, tag="status", frozen=True):
    state: str
    since: int  # ms since the epoch, the sender's clock


class Typing(msgspec.Struct, tag="typing", frozen=True):
    conversation: bytes = b""


Signal = Status | Typing

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Signal)


def encode(signal: Signal) -> bytes:
    return _encoder.encode(signal)


def decode(data: bytes | memoryview) -> Signal:
    """A checked signal; `MessageError` for anything else."""
    if len(data) > MAX_SIGNAL_BYTES:
        raise MessageError(f"a presence signal is at most {MAX_SIGNAL_BYTES} bytes")
    try:
        signal: Signal = _decoder.decode(data)
    except (msgspec.MsgspecError, UnicodeDecodeError) as exc:
        raise MessageError(f"malformed presence signal: {exc}") from exc
    match signal:
        case Status(state=state, since=since):
            if state not in STATES or since < 0:
                raise MessageError(f"unknown presence state {state!r}")
        case Typing(conversation=conversation):
            if len(conversation) not in (0, ROOM_ID_LEN):
                raise MessageError("typing names no conversation or a 16-byte room id")
    return signal


class TypingLimiter:
    """At most one typing signal per `TYPING_EVERY` / 2 seconds from each peer.

    Half the interval a well-behaved sender keeps, so clock jitter never drops an
    honest signal; a flood is cut to two a second per peer.
    """

    def __init__(self, interval: float = TYPING_EVERY / 2) -> None:
        self.interval = interval
        self._last: dict[bytes, float] = {}

    def allow(self, peer: bytes, now: float) -> bool:
        last = self._last.get(peer)
        if last is not None and now - last < self.interval:
            return False
        if len(self._last) > 4096:
            self._last = {p: t for p, t in self._last.items() if now - t < self.interval}
        self._last[peer] = now
        return True
