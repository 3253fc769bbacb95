"""Presence signals: encoding, the checks on what arrives, the typing rate limit."""

from __future__ import annotations

import msgspec
import pytest

from sidedoor.errors import MessageError
from sidedoor.proto import presence as wire


def test_round_trip() -> None:
    for signal in (wire.Status("away", 1_700_000_000_000), wire.Status("available", 0),
                   wire.Typing(), wire.Typing(bytes(16))):
        assert wire.decode(wire.encode(signal)) == signal


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"garbage",
    msgspec.msgpack.encode({"type": "status", "state": "asleep", "since": 1}),
    msgspec.msgpack.encode({"type": "status", "state": "away", "since": -5}),
    msgspec.msgpack.encode({"type": "typing", "conversation": b"x" * 15}),
    msgspec.msgpack.encode({"type": "dance"}),
    msgspec.msgpack.encode({"type": "typing", "conversation": b"x" * 200}),
])
def test_bad_signals_are_refused(data: bytes) -> None:
    with pytest.raises(MessageError):
        wire.decode(data)


def test_typing_limiter_lets_one_through_per_interval_per_peer() -> None:
    limiter = wire.TypingLimiter(interval=1.5)
    a, b = b"a" * 32, b"b" * 32
    assert limiter.allow(a, 100.0)
    assert not limiter.allow(a, 100.5)
    assert limiter.allow(b, 100.5)  # another peer has its own budget
    assert limiter.allow(a, 101.6)
    # A flood of 1000 signals in a second gets one through.
    assert sum(limiter.allow(a, 200 + i / 1000) for i in range(1000)) == 1
