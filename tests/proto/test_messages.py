"""Tests for sidedoor.proto.messages: golden bytes per message, round trips, the odd/even rule."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidedoor.errors import MessageError
from sidedoor.proto import messages as m
from sidedoor.proto.session import State
from sidedoor.proto.session_events import PongReceived, SessionClosed
from sidedoor.testing.sessions import Pair, forge_transport, session_pair

# Computed once from the implementation and checked by hand against the msgpack spec.
# A change here is a change of the wire format: it needs a protocol version bump.
GOLDEN: list[tuple[m.ControlMessage, str]] = [
    (m.Ping(7), "00 92 02 07"),
    (m.Pong(7), "00 92 04 07"),
    (m.Close(0, "bye"), "00 93 06 00 a3 627965"),
    (m.ChannelOpen(1, "chat", 65536, b"hi"), "00 95 08 01 a4 63686174 ce 00010000 c4 02 6869"),
    (m.ChannelAccept(1, 65536), "00 93 0a 01 ce 00010000"),
    (m.ChannelReject(2, "no"), "00 93 0c 02 a2 6e6f"),
    (m.ChannelEnd(3), "00 92 0e 03"),
    (m.ChannelReset(4, "cancel"), "00 93 10 04 a6 63616e63656c"),
    (m.WindowUpdate(5, 4096), "00 93 12 05 cd 1000"),
]

PROOF_GOLDEN = (
    "92"  # array of 2
    "c420" + bytes(range(32)).hex()  # bin 32: identity
    + "c440" + bytes(range(64, 128)).hex()  # bin 64: signature
)


@pytest.mark.parametrize(("message", "hex_bytes"), GOLDEN, ids=lambda v: type(v).__name__)
def test_golden_bytes(message: m.ControlMessage, hex_bytes: str) -> None:
    wire = bytes.fromhex(hex_bytes)
    assert m.encode_control(message) == wire
    assert wire[0] == m.KIND_CONTROL
    assert m.decode_control(wire[1:]) == message


def test_every_control_type_has_a_golden_test() -> None:
    assert {type(msg) for msg, _ in GOLDEN} == set(m.ControlMessage.__args__)


def test_identity_proof_golden_bytes() -> None:
    proof = m.IdentityProof(bytes(range(32)), bytes(range(64, 128)))
    assert m.encode_proof(proof) == bytes.fromhex(PROOF_GOLDEN)
    assert m.decode_proof(bytes.fromhex(PROOF_GOLDEN)) == proof


def test_data_header_golden_bytes() -> None:
    assert m.encode_data_header(0x01020304) == bytes.fromhex("01 01020304")


# ----------------------------------------------------------------- round trips

_int = st.integers(-(2**63), 2**64 - 1)
_uint = st.integers(0, 2**64 - 1)
_text = st.text(max_size=40)

MESSAGES: dict[type, st.SearchStrategy[m.ControlMessage]] = {
    m.Ping: st.builds(m.Ping, _int),
    m.Pong: st.builds(m.Pong, _int),
    m.Close: st.builds(m.Close, _int, _text),
    m.ChannelOpen: st.builds(m.ChannelOpen, _uint, _text, _int, st.binary(max_size=40)),
    m.ChannelAccept: st.builds(m.ChannelAccept, _uint, _int),
    m.ChannelReject: st.builds(m.ChannelReject, _uint, _text),
    m.ChannelEnd: st.builds(m.ChannelEnd, _uint),
    m.ChannelReset: st.builds(m.ChannelReset, _uint, _text),
    m.WindowUpdate: st.builds(m.WindowUpdate, _uint, _int),
}


def test_round_trip_strategies_cover_every_type() -> None:
    assert set(MESSAGES) == set(m.ControlMessage.__args__)


@pytest.mark.parametrize("kind", list(MESSAGES), ids=lambda t: t.__name__)
def test_round_trip(kind: type) -> None:
    @settings(max_examples=50, deadline=None)
    @given(MESSAGES[kind])
    def check(message: m.ControlMessage) -> None:
        wire = m.encode_control(message)
        assert wire[0] == m.KIND_CONTROL
        assert m.decode_control(wire[1:]) == message
        assert m.decode_control(memoryview(wire)[1:]) == message

    check()


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64))
def test_proof_round_trip(identity: bytes, signature: bytes) -> None:
    proof = m.IdentityProof(identity, signature)
    assert m.decode_proof(m.encode_proof(proof)) == proof


@pytest.mark.parametrize(
    "proof",
    [
        m.IdentityProof(b"x" * 31, b"s" * 64),
        m.IdentityProof(b"x" * 32, b"s" * 63),
        m.IdentityProof(b"", b""),
    ],
)
def test_proof_with_wrong_sizes(proof: m.IdentityProof) -> None:
    with pytest.raises(MessageError):
        m.decode_proof(m.encode_proof(proof))


@pytest.mark.parametrize("payload", [b"", b"\xc1", b"\x92\x01\x02", msgspec.msgpack.encode([1])])
def test_malformed_proof(payload: bytes) -> None:
    with pytest.raises(MessageError):
        m.decode_proof(payload)


# ---------------------------------------------------------- the odd/even rule


@pytest.mark.parametrize("type_number", [1, 3, 19, 21, 1001, 2**32 + 1])
def test_unknown_odd_type_decodes_to_unknown_optional(type_number: int) -> None:
    for body in ([type_number], [type_number, "future", b"fields", 1]):
        assert m.decode_control(msgspec.msgpack.encode(body)) == m.UnknownOptional(type_number)


@pytest.mark.parametrize("type_number", [0, 20, 22, 1000, 2**32])
def test_unknown_even_type_is_an_error(type_number: int) -> None:
    with pytest.raises(MessageError, match="update"):
        m.decode_control(msgspec.msgpack.encode([type_number, 1]))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",  # never used in msgpack
        b"\x92\x02",  # array of 2, one element
        b"\x92\x02\x07\x07",  # trailing byte
        b"\xdc\xff",  # truncated array16 header
    ],
    ids=["empty", "reserved-byte", "truncated", "trailing", "bad-header"],
)
def test_malformed_msgpack(body: bytes) -> None:
    with pytest.raises(MessageError):
        m.decode_control(body)


@pytest.mark.parametrize(
    "value",
    [
        [2],  # Ping without its token
        [2, "seven"],  # Ping with a string token
        [6, 0],  # Close without a reason
        [6, "0", "bye"],
        [8, 1, "chat"],  # ChannelOpen without a window
        [8, 1, "chat", 10, "not bytes"],
        [10, 1, 2.5],  # ChannelAccept with a float window
        [14, None],
        [18, 1, b"\x01"],
        [],  # no type at all
        ["ping", 7],  # a string for a type
        [True, 7],
        [-2, 7],
        {"type": 2, "token": 7},  # a map, not an array
        7,
    ],
)
def test_known_type_with_wrong_fields(value: object) -> None:
    with pytest.raises(MessageError):
        m.decode_control(msgspec.msgpack.encode(value))


_NOT_UTF8 = b"\xa3\xff\xfe\x80"  # a msgpack str of 3 bytes that are not UTF-8


@pytest.mark.parametrize(
    "body",
    [
        _NOT_UTF8,
        b"\x93\x06\x00" + _NOT_UTF8,  # Close with a bad reason
        b"\x94\x08\x01" + _NOT_UTF8 + b"\x0a",  # ChannelOpen with a bad kind
        b"\x92\x03" + _NOT_UTF8,  # an unknown odd type
        b"\x92\x14" + _NOT_UTF8,  # an unknown even type
        b"\x81" + _NOT_UTF8 + b"\x01",  # a map with a bad key
    ],
    ids=["str", "close", "open", "odd", "even", "map"],
)
def test_strings_that_are_not_utf8(body: bytes) -> None:
    """Regression: msgspec raises UnicodeDecodeError for these, which escaped decode_control."""
    with pytest.raises(MessageError):
        m.decode_control(body)


def test_extra_trailing_fields_are_ignored() -> None:
    """A later version may append fields to a known message; this version reads past them."""
    assert m.decode_control(msgspec.msgpack.encode([2, 7, "new field"])) == m.Ping(7)
    assert m.decode_control(msgspec.msgpack.encode([14, 3, 1, 2])) == m.ChannelEnd(3)


# ------------------------------------------------- the rule in a live session


def _open_pair() -> Pair:
    pair = session_pair()
    pair.shuttle()
    pair.take("initiator")
    pair.take("responder")
    return pair


def test_live_session_ignores_an_unknown_odd_type() -> None:
    pair = _open_pair()
    body = b"\x00" + msgspec.msgpack.encode([41, "something new", b"\x00" * 8])
    pair.responder.receive_data(forge_transport(pair.initiator, body), pair.now)
    assert pair.responder.state is State.OPEN
    assert pair.take("responder") == []
    # And the session still works afterwards.
    token = pair.initiator.ping(pair.now)
    pair.shuttle()
    assert pair.take("initiator") == [PongReceived(token, 0.0)]


def test_live_session_closes_on_an_unknown_even_type() -> None:
    pair = _open_pair()
    body = b"\x00" + msgspec.msgpack.encode([40, "something required"])
    pair.responder.receive_data(forge_transport(pair.initiator, body), pair.now)
    assert pair.responder.state is State.CLOSED
    [closed] = pair.take("responder")
    assert isinstance(closed, SessionClosed)
    assert isinstance(closed.error, MessageError)
    assert "update" in closed.reason
    # The responder told the initiator why.
    pair.shuttle()
    [peer_closed] = pair.take("initiator")
    assert isinstance(peer_closed, SessionClosed)
    assert peer_closed.by_peer
    assert peer_closed.code == m.CloseCode.PROTOCOL_ERROR
    assert "update" in peer_closed.reason


def test_live_session_closes_on_a_close_reason_that_is_not_utf8() -> None:
    pair = _open_pair()
    body = b"\x00\x93\x06\x00" + _NOT_UTF8
    pair.responder.receive_data(forge_transport(pair.initiator, body), pair.now)
    [closed] = pair.take("responder")
    assert isinstance(closed, SessionClosed)
    assert isinstance(closed.error, MessageError)


def test_live_session_closes_on_an_unknown_kind_byte() -> None:
    pair = _open_pair()
    pair.responder.receive_data(forge_transport(pair.initiator, b"\x07hello"), pair.now)
    [closed] = pair.take("responder")
    assert isinstance(closed, SessionClosed)
    assert isinstance(closed.error, MessageError)
