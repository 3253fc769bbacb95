"""Fuzz every decoder that reads bytes from the peer: only the peer's errors may come out.

The frame decoder and the control-message decoder may raise, but only
`RemoteProtocolError` (`MessageError` for control messages). A `Session` may not
raise at all: whatever arrives, the peer's mistakes end as a `SessionClosed`
carrying a `RemoteProtocolError`, and a closed session ignores what follows.
"""

from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sidedoor.errors import MessageError, RemoteProtocolError
from sidedoor.proto import messages as m
from sidedoor.proto.framing import MAX_FRAME_LEN, FrameDecoder, encode_frame
from sidedoor.proto.noise import Pattern
from sidedoor.proto.session import Session, State
from sidedoor.proto.session_events import ChannelRequested, SessionClosed, SessionEvent
from sidedoor.testing.sessions import Pair, forge_transport, session_pair

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

KNOWN_TAGS = sorted(t.__struct_config__.tag for t in m.ControlMessage.__args__)


def _drain(session: Session) -> list[SessionEvent]:
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events


def _check_events(events: list[SessionEvent]) -> bool:
    """Every SessionClosed carries a peer's error (or none); return True if one came."""
    closes = [e for e in events if isinstance(e, SessionClosed)]
    assert len(closes) <= 1
    for closed in closes:
        assert closed.error is None or isinstance(closed.error, RemoteProtocolError), closed
    return bool(closes)


def _feed_and_check(session: Session, chunks: list[bytes]) -> None:
    """Feed ``chunks``; the session must never raise, and must go deaf once closed."""
    is_closed = False
    for chunk in chunks:
        session.receive_data(chunk, 1.0)
        session.data_to_send()
        events = _drain(session)
        if is_closed:
            assert events == []
        is_closed = _check_events(events) or is_closed
        assert is_closed == (session.state is State.CLOSED)
    session.handle_timer(1000.0)  # the handshake timeout, at the latest
    _check_events(_drain(session))
    assert session.state is State.CLOSED
    session.receive_data(b"more after the end", 1001.0)
    assert _drain(session) == []


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


# ------------------------------------------------------------------ framing


@FUZZ
@given(
    st.binary(max_size=600),
    st.lists(st.integers(0, 600), max_size=6),
    st.sampled_from([1, 16, 1024, MAX_FRAME_LEN]),
)
def test_frame_decoder_raises_only_remote_errors(
    data: bytes, cuts: list[int], limit: int
) -> None:
    decoder = FrameDecoder(limit)
    try:
        for chunk in _chunked(data, cuts):
            for frame in decoder.feed(chunk):
                assert 0 < len(frame) <= limit
    except RemoteProtocolError:
        pass


# ---------------------------------------------------------------- sessions

_preambles = st.sampled_from(
    [b"", b"sdor\x01\x01", b"sdor\x01\x02", b"sdor\x01\x03", b"sdor\x02\x01", b"sdo"]
)


@FUZZ
@given(_preambles, st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=4))
def test_responder_never_raises(preamble: bytes, data: bytes, cuts: list[int]) -> None:
    pair = session_pair()
    _feed_and_check(pair.responder, _chunked(preamble + data, cuts))


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=4))
def test_responder_never_raises_after_a_good_message_1(data: bytes, cuts: list[int]) -> None:
    """Past a genuine first message, random bytes hit message 3's checks."""
    pair = session_pair()
    wire = pair.initiator.data_to_send()
    _feed_and_check(pair.responder, [wire, *_chunked(data, cuts)])


@FUZZ
@given(
    st.sampled_from([Pattern.XX, Pattern.IK]),
    st.sampled_from([b"sdor\x01\x00", b""]),
    st.binary(max_size=400),
)
def test_initiator_never_raises(pattern: Pattern, preamble: bytes, data: bytes) -> None:
    pair = session_pair(pattern)
    pair.initiator.data_to_send()
    _feed_and_check(pair.initiator, [preamble + data])


@FUZZ
@given(st.binary(min_size=1, max_size=300).map(encode_frame), st.sampled_from([1, 2]))
def test_responder_never_raises_on_well_framed_garbage(frame: bytes, code: int) -> None:
    pair = session_pair()
    _feed_and_check(pair.responder, [b"sdor\x01" + bytes([code]) + frame])


# ------------------------------------------------------- control messages

_field = st.one_of(
    st.integers(-3, 10),
    st.integers(-(2**63), 2**64 - 1),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.lists(st.integers(0, 5), max_size=3),
)
_type_numbers = st.one_of(
    st.sampled_from(KNOWN_TAGS), st.integers(-2, 40), st.integers(0, 2**64 - 1)
)
# A msgpack str of arbitrary bytes, often not UTF-8.
_raw_str = st.binary(max_size=31).map(lambda b: bytes([0xA0 | len(b)]) + b)
_control_bodies = st.one_of(
    st.binary(max_size=80),
    _raw_str,
    st.builds(
        lambda tag, raw: b"\x92" + msgspec.msgpack.encode(tag) + raw, _type_numbers, _raw_str
    ),
    st.builds(
        lambda tag, fields: msgspec.msgpack.encode([tag, *fields]),
        _type_numbers,
        st.lists(_field, max_size=5),
    ),
    st.lists(_field, max_size=5).map(msgspec.msgpack.encode),
    st.dictionaries(st.text(max_size=5), _field, max_size=3).map(msgspec.msgpack.encode),
)


@FUZZ
@given(_control_bodies)
def test_decode_control_raises_only_message_errors(body: bytes) -> None:
    try:
        message = m.decode_control(body)
    except MessageError:
        return
    if isinstance(message, m.UnknownOptional):
        assert message.type_number % 2 == 1
    else:
        assert isinstance(message, m.ControlMessage.__args__)


@FUZZ
@given(st.binary(max_size=200))
def test_decode_proof_raises_only_message_errors(payload: bytes) -> None:
    try:
        proof = m.decode_proof(payload)
    except MessageError:
        return
    assert len(proof.identity) == 32
    assert len(proof.signature) == 64


# ------------------------------------------------- an open session's input


def _open_pair_with_channels() -> Pair:
    """Open; channel 1 open both ways, channel 3 offered by the initiator, 2 offered to it."""
    pair = session_pair()
    pair.shuttle()
    one = pair.initiator.open_channel("chat")
    pair.initiator.open_channel("file")
    pair.responder.open_channel("file")
    pair.shuttle()
    pair.responder.accept_channel(one)
    pair.responder.send(2, b"waiting for credit" * 10)
    pair.shuttle()
    pair.take("initiator")
    pair.take("responder")
    return pair


_cid = st.sampled_from([1, 1, 1, 2, 2, 3, 3, 0, 4, 5])  # 1 open, 2 and 3 offered
_small = st.integers(-1, 300) | st.integers(-(2**63), 2**64 - 1)
_reason = st.text(max_size=10)
_well_formed = st.one_of(
    st.builds(m.Ping, _small),
    st.builds(m.Pong, st.integers(0, 3)),
    st.builds(m.Close, _small, _reason),
    st.builds(m.ChannelOpen, _cid, _reason, _small, st.binary(max_size=10)),
    st.builds(m.ChannelAccept, _cid, _small),
    st.builds(m.ChannelReject, _cid, _reason),
    st.builds(m.ChannelEnd, _cid),
    st.builds(m.ChannelReset, _cid, _reason),
    st.builds(m.WindowUpdate, _cid, _small),
).map(m.encode_control)
_data_messages = st.builds(
    lambda cid, data: m.encode_data_header(cid) + data,
    _cid | st.integers(0, 2**32 - 1),
    st.binary(max_size=60) | st.integers(0, 300).map(bytes),
)
# Pick the family first: a flat one_of would weigh each of _well_formed's branches alone.
_plaintexts = st.sampled_from(
    [
        st.binary(max_size=60),
        _control_bodies.map(lambda body: b"\x00" + body),
        _well_formed,
        _well_formed,
        _data_messages,
        _data_messages,
    ]
).flatmap(lambda family: family)


@FUZZ
@given(st.lists(_plaintexts, min_size=1, max_size=5), st.booleans())
def test_open_session_never_raises(plaintexts: list[bytes], app_accepts: bool) -> None:
    pair = _open_pair_with_channels()
    peer, session = pair.initiator, pair.responder
    for plaintext in plaintexts:
        session.receive_data(forge_transport(peer, plaintext), 1.0)
        events = _drain(session)
        for e in events:
            if app_accepts and isinstance(e, ChannelRequested):
                session.accept_channel(e.channel)
            error = e.error if isinstance(e, SessionClosed) else None
            event(type(error or e).__name__)
        if _check_events(events):
            break
        session.data_to_send()
        session.handle_timer(2.0)
    else:
        # Still open: it must still work.
        event("still open")
        assert session.state is State.OPEN
        session.ping(3.0)
        peer.receive_data(session.data_to_send(), 3.0)
        return
    assert session.state is State.CLOSED
    session.data_to_send()
    session.receive_data(b"\x00\x20" + b"x" * 32, 4.0)
    assert _drain(session) == []


@pytest.mark.parametrize("cid", [1, 2, 3, 5])
def test_open_session_with_each_message_type(cid: int) -> None:
    """Every control message, aimed at each channel state, leaves the session sane."""
    samples = [
        m.Ping(1), m.Pong(1), m.ChannelOpen(cid, "x", 10), m.ChannelAccept(cid, 10),
        m.ChannelReject(cid, "no"), m.ChannelEnd(cid), m.ChannelReset(cid, "r"),
        m.WindowUpdate(cid, 10), m.Close(0, "bye"),
    ]
    for message in samples:
        pair = _open_pair_with_channels()
        wire = forge_transport(pair.initiator, m.encode_control(message))
        pair.responder.receive_data(wire, 1.0)
        _check_events(_drain(pair.responder))
        pair.responder.data_to_send()
