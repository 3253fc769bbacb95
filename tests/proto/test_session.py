"""Tests for sidedoor.proto.session: two sessions wired in memory, fake time, no sockets."""

from __future__ import annotations

import msgspec
import pytest

from sidedoor.errors import (
    DecryptError,
    FlowControlError,
    FrameTooLarge,
    HandshakeFailed,
    IdentityMismatch,
    LocalProtocolError,
    MessageError,
    PeerTimeout,
    RemoteProtocolError,
    VersionMismatch,
)
from sidedoor.identity import SignatureDomain, verify_noise_proof
from sidedoor.proto import messages as m
from sidedoor.proto.framing import frame_header
from sidedoor.proto.noise import Pattern
from sidedoor.proto.session import (
    HANDSHAKE_FRAME_LIMIT,
    LocalKeys,
    Role,
    Session,
    SessionConfig,
    State,
)
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
from sidedoor.testing.sessions import (
    Pair,
    ephemeral,
    forge_transport,
    identity_from,
    local_keys,
    session_pair,
)

# ------------------------------------------------------------------- helpers


def open_pair(pattern: Pattern = Pattern.XX, **kwargs: object) -> Pair:
    """A pair with the handshake done and its events taken."""
    pair = session_pair(pattern, **kwargs)  # type: ignore[arg-type]
    pair.shuttle()
    assert [type(e) for e in pair.take("initiator")] == [HandshakeComplete]
    assert [type(e) for e in pair.take("responder")] == [HandshakeComplete]
    return pair


def open_channel(pair: Pair, kind: str = "chat", meta: bytes = b"") -> int:
    """The initiator opens a channel and the responder accepts it."""
    cid = pair.initiator.open_channel(kind, meta)
    pair.shuttle()
    assert pair.take("responder") == [ChannelRequested(cid, kind, meta)]
    pair.responder.accept_channel(cid)
    pair.shuttle()
    assert pair.take("initiator") == [ChannelAccepted(cid)]
    return cid


def closed(events: list[SessionEvent]) -> SessionClosed:
    """The SessionClosed that ends ``events`` (ChannelClosed events may come before it)."""
    assert events, "no events"
    last = events[-1]
    assert isinstance(last, SessionClosed), events
    assert sum(isinstance(e, SessionClosed) for e in events) == 1
    return last


def received(events: list[SessionEvent], cid: int) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived) and e.channel == cid)


def control(msg: m.ControlMessage) -> bytes:
    return m.encode_control(msg)


def data_message(cid: int, data: bytes) -> bytes:
    return m.encode_data_header(cid) + data


def assert_failed_and_told_peer(
    pair: Pair, side: str, error: type[RemoteProtocolError], match: str = ""
) -> None:
    """``side`` closed with ``error`` and queued a Close that the other side reads."""
    me = pair.initiator if side == "initiator" else pair.responder
    other_side = "responder" if side == "initiator" else "initiator"
    event = closed(pair.take(side))
    assert isinstance(event.error, error), event
    assert match in event.reason
    assert not event.by_peer
    assert me.state is State.CLOSED
    assert me.wants_close
    pair.shuttle()
    told = closed(pair.take(other_side))
    assert told.by_peer
    assert told.error is None
    assert told.code == event.code
    assert told.reason == event.reason


def shuttle_bytewise(pair: Pair) -> None:
    """Like `Pair.shuttle`, but every byte is handed over on its own."""
    for _ in range(100):
        a = pair.initiator.data_to_send()
        b = pair.responder.data_to_send()
        for i in range(len(a)):
            pair.responder.receive_data(a[i : i + 1], pair.now)
        for i in range(len(b)):
            pair.initiator.receive_data(b[i : i + 1], pair.now)
        if not a and not b:
            return
    raise AssertionError("the sessions kept talking for too long")


def responder_with(pair: Pair, keys: LocalKeys) -> None:
    """Swap the pair's responder for one with other keys (before start)."""
    pair.responder = Session(
        Role.RESPONDER, keys, verify_noise_proof, ephemeral_private=ephemeral("b")
    )
    pair.initiator.start(0.0)
    pair.responder.start(0.0)


# ------------------------------------------------------------------ handshake


@pytest.mark.parametrize("pattern", [Pattern.XX, Pattern.IK])
def test_handshake_completes(pattern: Pattern) -> None:
    pair = session_pair(pattern)
    pair.shuttle()
    [hi] = pair.take("initiator")
    [hr] = pair.take("responder")
    assert isinstance(hi, HandshakeComplete)
    assert isinstance(hr, HandshakeComplete)
    assert hi.remote_identity == pair.bob.public.key
    assert hr.remote_identity == pair.alice.public.key
    assert hi.remote_static == pair.bob.noise_public
    assert hr.remote_static == pair.alice.noise_public
    assert hi.pattern == hr.pattern == pattern.value
    assert hi.handshake_hash == hr.handshake_hash
    assert len(hi.handshake_hash) == 32
    for s in (pair.initiator, pair.responder):
        assert s.state is State.OPEN
        assert s.handshake_hash == hi.handshake_hash
    assert pair.initiator.remote_identity == pair.bob.public.key
    assert pair.responder.remote_identity == pair.alice.public.key
    assert pair.responder.pattern is pattern


@pytest.mark.parametrize("pattern", [Pattern.XX, Pattern.IK])
def test_handshake_byte_at_a_time(pattern: Pattern) -> None:
    pair = session_pair(pattern)
    shuttle_bytewise(pair)
    [hi] = pair.take("initiator")
    [hr] = pair.take("responder")
    assert isinstance(hi, HandshakeComplete)
    assert isinstance(hr, HandshakeComplete)
    assert hi.handshake_hash == hr.handshake_hash


def test_handshakes_differ_per_ephemeral_key() -> None:
    first = open_pair()
    second = session_pair(start=False)
    second.initiator = Session(
        Role.INITIATOR, local_keys(second.alice), verify_noise_proof,
        ephemeral_private=ephemeral("another run"),
    )
    second.initiator.start(0.0)
    second.responder.start(0.0)
    second.shuttle()
    assert first.initiator.handshake_hash != second.initiator.handshake_hash


def test_wire_opens_with_the_preambles() -> None:
    for pattern, code in ((Pattern.XX, 1), (Pattern.IK, 2)):
        pair = session_pair(pattern)
        assert pair.initiator.data_to_send()[:6] == b"sdor\x01" + bytes([code])
        assert pair.responder.data_to_send() == b""
        pair.responder.receive_data(b"sdor\x01" + bytes([code]), 0.0)
        assert pair.responder.data_to_send() == b"sdor\x01\x00"


def test_ik_with_a_stale_remote_static() -> None:
    stale = identity_from("bob, before he reinstalled").noise_public
    pair = session_pair(Pattern.IK, remote_static=stale)
    pair.shuttle()
    event = closed(pair.take("responder"))
    assert isinstance(event.error, HandshakeFailed)
    assert pair.responder.state is State.CLOSED
    # The initiator got the responder's preamble and waits; then the glue sees the EOF.
    assert pair.take("initiator") == []
    assert pair.initiator.state is State.HANDSHAKE
    pair.initiator.connection_lost()
    lost = closed(pair.take("initiator"))
    assert isinstance(lost.error, HandshakeFailed)
    assert lost.by_peer
    assert pair.initiator.state is State.CLOSED


@pytest.mark.parametrize("pattern", [Pattern.XX, Pattern.IK])
def test_expected_remote_is_someone_else(pattern: Pattern) -> None:
    carol = identity_from("carol")
    pair = session_pair(pattern, expected_remote=carol.public.key)
    pair.shuttle()
    event = closed(pair.take("initiator"))
    assert isinstance(event.error, IdentityMismatch)
    assert pair.initiator.remote_identity is None
    responder_events = pair.take("responder")
    if pattern is Pattern.XX:  # message 3 never came
        assert responder_events == []
    else:  # an IK responder is done after message 2; it learns on the EOF
        assert [type(e) for e in responder_events] == [HandshakeComplete]
    pair.responder.connection_lost()
    assert closed(pair.take("responder")).by_peer


def test_expected_remote_matches() -> None:
    bob = identity_from("bob")
    pair = open_pair(expected_remote=bob.public.key)
    assert pair.initiator.remote_identity == bob.public.key


def test_responder_proof_with_a_bad_signature() -> None:
    bob, mallory = identity_from("bob"), identity_from("mallory")
    forged = m.IdentityProof(
        bob.public.key, mallory.sign(SignatureDomain.NOISE_STATIC, bob.noise_public)
    )
    pair = session_pair(start=False)
    responder_with(pair, LocalKeys(bob.noise_private, forged))
    pair.shuttle()
    event = closed(pair.take("initiator"))
    assert isinstance(event.error, HandshakeFailed)
    assert "signature" in event.reason


def test_responder_proof_for_another_static_key() -> None:
    """A genuine proof, but of carol's Noise key: it does not cover the key in the handshake."""
    bob, carol = identity_from("bob"), identity_from("carol")
    pair = session_pair(start=False)
    responder_with(pair, LocalKeys(bob.noise_private, local_keys(carol).proof))
    pair.shuttle()
    assert isinstance(closed(pair.take("initiator")).error, HandshakeFailed)


def test_proof_signed_for_another_domain() -> None:
    bob = identity_from("bob")
    wrong_domain = m.IdentityProof(
        bob.public.key, bob.sign(SignatureDomain.CONTACT_CARD, bob.noise_public)
    )
    pair = session_pair(start=False)
    responder_with(pair, LocalKeys(bob.noise_private, wrong_domain))
    pair.shuttle()
    assert isinstance(closed(pair.take("initiator")).error, HandshakeFailed)


def test_initiator_proof_with_a_bad_signature() -> None:
    alice, mallory = identity_from("alice"), identity_from("mallory")
    forged = m.IdentityProof(
        alice.public.key, mallory.sign(SignatureDomain.NOISE_STATIC, alice.noise_public)
    )
    pair = session_pair(start=False)
    pair.initiator = Session(
        Role.INITIATOR, LocalKeys(alice.noise_private, forged), verify_noise_proof,
        ephemeral_private=ephemeral("a"),
    )
    pair.initiator.start(0.0)
    pair.responder.start(0.0)
    pair.shuttle()
    event = closed(pair.take("responder"))
    assert isinstance(event.error, HandshakeFailed)
    assert not any(isinstance(e, HandshakeComplete) for e in pair.take("responder"))


def test_responder_refuses_to_be_told_whom_it_talks_to() -> None:
    with pytest.raises(LocalProtocolError):
        Session(
            Role.RESPONDER, local_keys(identity_from("bob")), verify_noise_proof,
            ephemeral_private=ephemeral("b"), expected_remote=b"x" * 32,
        )
    with pytest.raises(LocalProtocolError):
        Session(
            Role.INITIATOR, local_keys(identity_from("alice")), verify_noise_proof,
            ephemeral_private=ephemeral("a"), pattern=Pattern.IK,
        )


def test_start_twice() -> None:
    pair = session_pair()
    with pytest.raises(LocalProtocolError):
        pair.initiator.start(1.0)


# ------------------------------------------------------------ version, greeting


def test_responder_gets_a_newer_version() -> None:
    pair = session_pair()
    pair.responder.receive_data(b"sdor\x02\x01", 0.0)
    assert pair.responder.data_to_send() == b"sdor\x01\x00"
    event = closed(pair.take("responder"))
    assert isinstance(event.error, VersionMismatch)
    assert "v2" in event.reason
    assert pair.responder.state is State.CLOSED
    assert pair.responder.data_to_send() == b""


def test_initiator_gets_a_newer_version() -> None:
    pair = session_pair()
    pair.initiator.receive_data(b"sdor\x02\x00", 0.0)
    event = closed(pair.take("initiator"))
    assert isinstance(event.error, VersionMismatch)
    assert "update" in event.reason
    assert "newer" in event.reason


def test_initiator_gets_an_older_version() -> None:
    pair = session_pair()
    pair.initiator.receive_data(b"sdor\x00\x00", 0.0)
    event = closed(pair.take("initiator"))
    assert isinstance(event.error, VersionMismatch)
    assert "older" in event.reason
    assert "update" in event.reason


def test_version_mismatch_seen_by_both_ends() -> None:
    """The responder's preamble reaches a (hypothetical) v2 initiator before it hangs up."""
    pair = session_pair(start=False)
    pair.responder.start(0.0)
    pair.responder.receive_data(b"sdor\x02\x01" + b"\x00\x20" + b"e" * 32, 0.0)
    assert pair.responder.data_to_send() == b"sdor\x01\x00"
    assert isinstance(closed(pair.take("responder")).error, VersionMismatch)


@pytest.mark.parametrize(
    "greeting",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"sdox\x01\x01",
    ],
)
def test_garbage_instead_of_the_greeting(greeting: bytes) -> None:
    pair = session_pair()
    pair.responder.receive_data(greeting, 0.0)
    assert isinstance(closed(pair.take("responder")).error, HandshakeFailed)
    pair.initiator.receive_data(greeting, 0.0)
    assert isinstance(closed(pair.take("initiator")).error, HandshakeFailed)


def test_wrong_greeting_fails_before_six_bytes() -> None:
    pair = session_pair()
    pair.responder.receive_data(b"sd", 0.0)
    assert pair.take("responder") == []
    pair.responder.receive_data(b"x", 0.0)
    assert isinstance(closed(pair.take("responder")).error, HandshakeFailed)


def test_unknown_pattern_code() -> None:
    pair = session_pair()
    pair.responder.receive_data(b"sdor\x01\x07", 0.0)
    event = closed(pair.take("responder"))
    assert isinstance(event.error, HandshakeFailed)
    assert "pattern" in event.reason


def test_tampered_preamble_fails_the_handshake() -> None:
    """The initiator's preamble is the Noise prologue: XX announced as IK cannot complete."""
    pair = session_pair()
    wire = bytearray(pair.initiator.data_to_send())
    wire[5] = 2  # claim IK
    pair.responder.receive_data(bytes(wire), 0.0)
    pair.shuttle()
    assert isinstance(closed(pair.take("responder")).error, HandshakeFailed)


def test_truncated_handshake_then_connection_lost() -> None:
    pair = session_pair()
    wire = pair.initiator.data_to_send()
    pair.responder.receive_data(wire[:-5], 0.0)
    assert pair.take("responder") == []
    pair.responder.connection_lost("EOF")
    event = closed(pair.take("responder"))
    assert isinstance(event.error, HandshakeFailed)
    assert "EOF" in event.reason
    assert event.by_peer


def test_handshake_frame_over_the_limit() -> None:
    pair = session_pair()
    pair.responder.receive_data(b"sdor\x01\x01" + frame_header(HANDSHAKE_FRAME_LIMIT + 1), 0.0)
    event = closed(pair.take("responder"))
    assert isinstance(event.error, FrameTooLarge)
    # The initiator's side of the rule: a huge "message 2".
    pair.initiator.receive_data(b"sdor\x01\x00" + frame_header(60000), 0.0)
    assert isinstance(closed(pair.take("initiator")).error, FrameTooLarge)


def test_repeated_handshake_message_fails() -> None:
    pair = session_pair()
    first = pair.initiator.data_to_send()
    pair.responder.receive_data(first, 0.0)
    pair.responder.receive_data(first[6:], 0.0)  # message 1 again, where message 3 belongs
    assert isinstance(closed(pair.take("responder")).error, HandshakeFailed)


@pytest.mark.parametrize("pattern", [Pattern.XX, Pattern.IK])
def test_big_transport_frame_right_after_the_handshake(pattern: Pattern) -> None:
    """Regression: the 1 KiB handshake frame limit applied to transport frames in the same read.

    Whoever completes the handshake first may open a channel at once, and its ChannelOpen
    (meta up to 4 KiB) travels in the same flight as the last handshake message.
    """
    pair = session_pair(pattern)
    first, second = (
        (pair.initiator, pair.responder) if pattern is Pattern.XX
        else (pair.responder, pair.initiator)
    )
    meta = b"m" * m.MAX_META_LEN
    for _ in range(3):
        a = pair.initiator.data_to_send()
        pair.responder.receive_data(a, 0.0)
        if first.state is State.OPEN:
            break
        b = pair.responder.data_to_send()
        pair.initiator.receive_data(b, 0.0)
        if first.state is State.OPEN:
            break
    assert first.state is State.OPEN
    assert second.state is not State.OPEN
    cid = first.open_channel("file", meta)
    flight = first.data_to_send()
    second.receive_data(flight, 0.0)
    side = "responder" if second is pair.responder else "initiator"
    events = pair.take(side)
    assert [type(e) for e in events] == [HandshakeComplete, ChannelRequested]
    assert events[1] == ChannelRequested(cid, "file", meta)
    assert second.state is State.OPEN


# ------------------------------------------------- messages wrong for the state


def test_data_on_a_channel_that_is_not_open() -> None:
    pair = open_pair()
    pair.responder.receive_data(forge_transport(pair.initiator, data_message(5, b"hi")), 0.0)
    assert_failed_and_told_peer(pair, "responder", MessageError, "not open")


def test_data_before_the_channel_is_accepted() -> None:
    pair = open_pair()
    cid = pair.initiator.open_channel("chat")
    pair.shuttle()
    pair.take("responder")
    # The responder has not accepted, so it may not send on the channel yet.
    pair.initiator.receive_data(forge_transport(pair.responder, data_message(cid, b"x")), 0.0)
    assert_failed_and_told_peer(pair, "initiator", MessageError)


def test_accept_for_a_channel_never_offered() -> None:
    pair = open_pair()
    wire = forge_transport(pair.responder, control(m.ChannelAccept(1, 1000)))
    pair.initiator.receive_data(wire, 0.0)
    assert_failed_and_told_peer(pair, "initiator", MessageError, "did not offer")


def test_reject_for_a_channel_never_offered() -> None:
    pair = open_pair()
    wire = forge_transport(pair.responder, control(m.ChannelReject(3, "no")))
    pair.initiator.receive_data(wire, 0.0)
    assert_failed_and_told_peer(pair, "initiator", MessageError)


def test_accept_twice() -> None:
    pair = open_pair()
    cid = open_channel(pair)
    wire = forge_transport(pair.responder, control(m.ChannelAccept(cid, 1000)))
    pair.initiator.receive_data(wire, 0.0)
    assert_failed_and_told_peer(pair, "initiator", MessageError)


def test_end_of_an_unknown_channel() -> None:
    pair = open_pair()
    pair.responder.receive_data(forge_transport(pair.initiator, control(m.ChannelEnd(9))), 0.0)
    assert_failed_and_told_peer(pair, "responder", MessageError)


def test_open_the_same_channel_twice() -> None:
    pair = open_pair()
    cid = pair.initiator.open_channel("chat")
    pair.shuttle()
    wire = forge_transport(pair.initiator, control(m.ChannelOpen(cid, "chat", 100)))
    pair.responder.receive_data(wire, 0.0)
    assert_failed_and_told_peer(pair, "responder", MessageError, "twice")


def test_handshake_message_after_open() -> None:
    pair = session_pair()
    a1 = pair.initiator.data_to_send()
    pair.responder.receive_data(a1, 0.0)
    b1 = pair.responder.data_to_send()
    pair.initiator.receive_data(b1, 0.0)
    a2 = pair.initiator.data_to_send()
    pair.responder.receive_data(a2, 0.0)
    assert pair.initiator.state is pair.responder.state is State.OPEN
    pair.take("initiator")
    pair.take("responder")
    pair.responder.receive_data(a2, 0.0)  # message 3 again
    assert_failed_and_told_peer(pair, "responder", DecryptError)


def test_handshake_message_to_the_initiator_after_open() -> None:
    pair = session_pair()
    a1 = pair.initiator.data_to_send()
    pair.responder.receive_data(a1, 0.0)
    b1 = pair.responder.data_to_send()
    pair.initiator.receive_data(b1, 0.0)
    pair.shuttle()
    pair.take("initiator")
    pair.take("responder")
    pair.initiator.receive_data(b1[6:], 0.0)  # message 2 again, without the preamble
    assert_failed_and_told_peer(pair, "initiator", DecryptError)


def test_empty_transport_message() -> None:
    pair = open_pair()
    pair.responder.receive_data(forge_transport(pair.initiator, b""), 0.0)
    assert_failed_and_told_peer(pair, "responder", MessageError)


def test_data_message_too_short_for_its_header() -> None:
    pair = open_pair()
    pair.responder.receive_data(forge_transport(pair.initiator, b"\x01\x00\x00"), 0.0)
    assert_failed_and_told_peer(pair, "responder", MessageError)


# ------------------------------------------------------------ replay, reorder


def test_replayed_transport_message() -> None:
    pair = open_pair()
    pair.initiator.ping(0.0)
    wire = pair.initiator.data_to_send()
    pair.responder.receive_data(wire, 0.0)
    assert pair.take("responder") == []
    pair.responder.receive_data(wire, 0.0)
    assert_failed_and_told_peer(pair, "responder", DecryptError, "authentication")


def test_reordered_transport_messages() -> None:
    pair = open_pair()
    pair.initiator.ping(0.0)
    first = pair.initiator.data_to_send()
    pair.initiator.ping(0.0)
    second = pair.initiator.data_to_send()
    pair.responder.receive_data(second, 0.0)
    assert_failed_and_told_peer(pair, "responder", DecryptError)
    # The late first message changes nothing: the session is closed.
    pair.responder.receive_data(first, 0.0)
    assert pair.take("responder") == []


def test_tampered_transport_message() -> None:
    pair = open_pair()
    pair.initiator.ping(0.0)
    wire = bytearray(pair.initiator.data_to_send())
    wire[-1] ^= 1
    pair.responder.receive_data(bytes(wire), 0.0)
    assert_failed_and_told_peer(pair, "responder", DecryptError)


def test_dropped_message_makes_the_next_fail() -> None:
    pair = open_pair()
    pair.initiator.ping(0.0)
    pair.initiator.data_to_send()  # lost
    pair.initiator.ping(0.0)
    pair.responder.receive_data(pair.initiator.data_to_send(), 0.0)
    assert_failed_and_told_peer(pair, "responder", DecryptError)


# ------------------------------------------------------------------- channels


def test_channel_open_accept_and_data_both_ways() -> None:
    pair = open_pair()
    cid = open_channel(pair, "chat", b"\x01meta")
    assert cid == 1
    assert pair.initiator.channel_kind(cid) == pair.responder.channel_kind(cid) == "chat"
    pair.initiator.send(cid, b"hello ")
    pair.initiator.send(cid, bytearray(b"bob"))
    pair.responder.send(cid, memoryview(b"hi alice"))
    pair.shuttle()
    assert received(pair.take("responder"), cid) == b"hello bob"
    assert received(pair.take("initiator"), cid) == b"hi alice"


def test_responder_opens_even_channels() -> None:
    pair = open_pair()
    cid = pair.responder.open_channel("file", b"name")
    cid2 = pair.responder.open_channel("file")
    assert (cid, cid2) == (2, 4)
    pair.shuttle()
    events = pair.take("initiator")
    assert events == [ChannelRequested(2, "file", b"name"), ChannelRequested(4, "file", b"")]
    pair.initiator.accept_channel(2)
    pair.initiator.reject_channel(4, "busy")
    pair.shuttle()
    assert pair.take("responder") == [ChannelAccepted(2), ChannelRejected(4, "busy")]
    assert pair.responder.open_channels == pair.initiator.open_channels == 1


def test_channel_reject() -> None:
    pair = open_pair()
    cid = pair.initiator.open_channel("file")
    pair.initiator.send(cid, b"queued before the answer")
    pair.shuttle()
    pair.take("responder")
    pair.responder.reject_channel(cid, "no thanks")
    pair.shuttle()
    assert pair.take("initiator") == [ChannelRejected(cid, "no thanks")]
    assert pair.take("responder") == []
    assert pair.initiator.open_channels == pair.responder.open_channels == 0
    with pytest.raises(LocalProtocolError):
        pair.initiator.send(cid, b"more")
    assert pair.initiator.state is pair.responder.state is State.OPEN


def test_data_queued_before_accept_flows_after_it() -> None:
    pair = open_pair()
    cid = pair.initiator.open_channel("chat")
    pair.initiator.send(cid, b"early")
    pair.shuttle()
    pair.take("responder")
    pair.responder.accept_channel(cid)
    pair.shuttle()
    assert received(pair.take("responder"), cid) == b"early"


def test_half_close_then_closed_when_both_ended() -> None:
    pair = open_pair()
    cid = open_channel(pair)
    pair.initiator.send(cid, b"last words")
    pair.initiator.end_channel(cid)
    pair.initiator.end_channel(cid)  # idempotent
    pair.shuttle()
    assert pair.take("responder") == [DataReceived(cid, b"last words"), ChannelEnded(cid)]
    with pytest.raises(LocalProtocolError):
        pair.initiator.send(cid, b"more")
    # The other direction still works.
    pair.responder.send(cid, b"reply")
    pair.shuttle()
    assert pair.take("initiator") == [DataReceived(cid, b"reply")]
    pair.responder.end_channel(cid)
    pair.shuttle()
    assert pair.take("initiator") == [ChannelEnded(cid), ChannelClosed(cid, "ended")]
    assert pair.take("responder") == [ChannelClosed(cid, "ended")]
    assert pair.initiator.open_channels == pair.responder.open_channels == 0


def test_end_waits_for_queued_data_and_credit() -> None:
    pair = open_pair(config=SessionConfig(channel_window=1000))
    cid = open_channel(pair)
    pair.initiator.send(cid, b"x" * 1500)
    pair.initiator.end_channel(cid)
    pair.shuttle()
    events = pair.take("responder")
    assert received(events, cid) == b"x" * 1000
    assert not any(isinstance(e, ChannelEnded) for e in events)
    pair.responder.consume(cid, 1000)
    pair.shuttle()
    assert pair.take("responder") == [DataReceived(cid, b"x" * 500), ChannelEnded(cid)]


def test_data_after_the_peer_ended_is_an_error() -> None:
    pair = open_pair()
    cid = open_channel(pair)
    pair.initiator.end_channel(cid)
    pair.shuttle()
    pair.take("responder")
    wire = forge_transport(pair.initiator, data_message(cid, b"zombie"))
    pair.responder.receive_data(wire, 0.0)
    assert_failed_and_told_peer(pair, "responder", MessageError, "after ending")


def test_end_twice_is_an_error() -> None:
    pair = open_pair()
    cid = open_channel(pair)
    pair.initiator.end_channel(cid)
    pair.shuttle()
    pair.take("responder")
    pair.responder.receive_data(forge_transport(pair.initiator, control(m.ChannelEnd(cid))), 0.0)
    assert_failed_and_told_peer(pair, "responder", MessageError, "twice")


def test_channel_reset() -> None:
    pair = open_pair()
    cid = open_channel(pair)
    pair.initiator.send(cid, b"data")
    pair.responder.reset_channel(cid, "cancelled")
    assert pair.take("responder") == [ChannelClosed(cid, "cancelled")]
    pair.shuttle()
    assert pair.take("initiator") == [ChannelClosed(cid, "cancelled")]
    assert pair.take("responder") == []  # the data in flight was dropped quietly
    assert pair.initiator.open_channels == pair.responder.open_channels == 0
    assert pair.initiator.state is pair.responder.state is State.OPEN
    pair.responder.reset_channel(cid, "again")  # unknown now: a no-op
    assert pair.take("responder") == []


def test_reset_with_data_in_flight_keeps_the_session() -> None:
    """Regression: cancelling a transfer killed the session when the peer's data was in flight."""
    pair = open_pair()
    cid = open_channel(pair, "file")
    pair.responder.send(cid, b"z" * 300_000)
    in_flight = pair.responder.data_to_send(100_000)
    pair.initiator.reset_channel(cid, "cancelled")
    pair.initiator.receive_data(in_flight, 0.0)
    assert pair.take("initiator") == [ChannelClosed(cid, "cancelled")]
    pair.shuttle()
    assert pair.take("responder") == [ChannelClosed(cid, "cancelled")]
    assert pair.initiator.state is pair.responder.state is State.OPEN


def test_reset_crossing_the_peer_end() -> None:
    pair = open_pair()
    cid = open_channel(pair)
    pair.responder.end_channel(cid)
    in_flight = pair.responder.data_to_send()
    pair.initiator.reset_channel(cid, "no")
    pair.initiator.receive_data(in_flight, 0.0)
    pair.shuttle()
    assert pair.initiator.state is pair.responder.state is State.OPEN
    assert pair.take("initiator") == [ChannelClosed(cid, "no")]


def test_reset_crossing_the_accept() -> None:
    pair = open_pair()
    cid = pair.initiator.open_channel("chat")
    pair.shuttle()
    pair.take("responder")
    pair.responder.accept_channel(cid)
    pair.responder.send(cid, b"welcome")
    in_flight = pair.responder.data_to_send()
    pair.initiator.reset_channel(cid, "changed my mind")
    pair.initiator.receive_data(in_flight, 0.0)
    pair.shuttle()
    assert pair.initiator.state is pair.responder.state is State.OPEN
    assert pair.take("initiator") == [ChannelClosed(cid, "changed my mind")]
    assert pair.take("responder") == [ChannelClosed(cid, "changed my mind")]


def test_resets_crossing_each_other() -> None:
    pair = open_pair()
    cid = open_channel(pair)
    pair.initiator.reset_channel(cid, "a")
    pair.responder.reset_channel(cid, "b")
    pair.shuttle()
    assert pair.take("initiator") == [ChannelClosed(cid, "a")]
    assert pair.take("responder") == [ChannelClosed(cid, "b")]
    assert pair.initiator.state is pair.responder.state is State.OPEN


@pytest.mark.parametrize("cid", [2, 0, -1, 2**32 + 1])
def test_initiator_channel_ids_must_be_odd(cid: int) -> None:
    pair = open_pair()
    wire = forge_transport(pair.initiator, control(m.ChannelOpen(cid, "chat", 100)))
    pair.responder.receive_data(wire, 0.0)
    assert_failed_and_told_peer(pair, "responder", MessageError, "may not use")


def test_responder_channel_ids_must_be_even() -> None:
    pair = open_pair()
    wire = forge_transport(pair.responder, control(m.ChannelOpen(3, "chat", 100)))
    pair.initiator.receive_data(wire, 0.0)
    assert_failed_and_told_peer(pair, "initiator", MessageError, "may not use")


def test_channel_request_over_the_size_limits() -> None:
    pair = open_pair()
    big = m.ChannelOpen(1, "k" * (m.MAX_KIND_LEN + 1), 100)
    pair.responder.receive_data(forge_transport(pair.initiator, control(big)), 0.0)
    assert_failed_and_told_peer(pair, "responder", MessageError)
    with pytest.raises(LocalProtocolError):
        open_pair().initiator.open_channel("chat", b"m" * (m.MAX_META_LEN + 1))


def test_max_channels_rejects_without_closing() -> None:
    pair = open_pair(config=SessionConfig(max_channels=2))
    cids = [pair.initiator.open_channel("chat") for _ in range(3)]
    pair.shuttle()
    requested = pair.take("responder")
    assert requested == [ChannelRequested(c, "chat", b"") for c in cids[:2]]
    assert pair.take("initiator") == [ChannelRejected(cids[2], "too many channels open")]
    assert pair.initiator.state is pair.responder.state is State.OPEN
    # Once one closes, a new one fits.
    pair.responder.reject_channel(cids[0], "no")
    cid = pair.initiator.open_channel("chat")
    pair.shuttle()
    assert pair.take("responder") == [ChannelRequested(cid, "chat", b"")]


def test_local_api_misuse() -> None:
    pair = open_pair()
    with pytest.raises(LocalProtocolError):
        pair.responder.accept_channel(1)
    with pytest.raises(LocalProtocolError):
        pair.responder.reject_channel(1, "no")
    with pytest.raises(LocalProtocolError):
        pair.initiator.send(1, b"x")
    with pytest.raises(LocalProtocolError):
        pair.initiator.end_channel(1)
    cid = pair.initiator.open_channel("chat")
    pair.shuttle()
    with pytest.raises(LocalProtocolError):
        pair.responder.send(cid, b"not accepted yet")
    unopened = session_pair()
    with pytest.raises(LocalProtocolError):
        unopened.initiator.open_channel("chat")
    with pytest.raises(LocalProtocolError):
        unopened.initiator.ping(0.0)


# -------------------------------------------------------------- flow control


def test_sender_stays_within_the_window() -> None:
    window = 1000
    pair = open_pair(config=SessionConfig(channel_window=window))
    cid = open_channel(pair)
    payload = bytes(range(256)) * 40  # 10240 bytes
    pair.initiator.send(cid, payload)
    got = b""
    consumed = 0
    for _ in range(100):
        pair.shuttle()
        got += received(pair.take("responder"), cid)
        assert len(got) - consumed <= window
        if len(got) == len(payload):
            break
        assert len(got) - consumed == window  # it stopped exactly at the window
        assert pair.initiator.channel_backlog(cid) == len(payload) - len(got)
        pair.responder.consume(cid, len(got) - consumed)
        consumed = len(got)
    assert got == payload
    assert pair.initiator.channel_backlog(cid) == 0


def test_small_consumes_are_batched_into_one_update() -> None:
    pair = open_pair(config=SessionConfig(channel_window=1000))
    cid = open_channel(pair)
    pair.initiator.send(cid, b"x" * 2000)
    pair.shuttle()
    assert len(received(pair.take("responder"), cid)) == 1000
    pair.responder.consume(cid, 100)
    assert pair.responder.data_to_send() == b""  # under a quarter of the window: no update yet
    pair.responder.consume(cid, 150)
    pair.shuttle()
    assert len(received(pair.take("responder"), cid)) == 250


def test_peer_exceeding_its_credit() -> None:
    window = 1000
    pair = open_pair(config=SessionConfig(channel_window=window))
    cid = open_channel(pair)
    pair.responder.receive_data(forge_transport(pair.initiator, data_message(cid, b"a" * 600)), 0)
    assert pair.take("responder") == [DataReceived(cid, b"a" * 600)]
    over = forge_transport(pair.initiator, data_message(cid, b"b" * 401))
    pair.responder.receive_data(over, 0.0)
    assert_failed_and_told_peer(pair, "responder", FlowControlError, "credit")


def test_peer_exceeding_the_window_at_once() -> None:
    pair = open_pair(config=SessionConfig(channel_window=1000))
    cid = open_channel(pair)
    over = forge_transport(pair.responder, data_message(cid, b"c" * 1001))
    pair.initiator.receive_data(over, 0.0)
    assert_failed_and_told_peer(pair, "initiator", FlowControlError)


@pytest.mark.parametrize("increment", [0, -5, 1 << 41])
def test_bad_window_update(increment: int) -> None:
    pair = open_pair()
    cid = open_channel(pair)
    wire = forge_transport(pair.responder, control(m.WindowUpdate(cid, increment)))
    pair.initiator.receive_data(wire, 0.0)
    assert_failed_and_told_peer(pair, "initiator", FlowControlError)


@pytest.mark.parametrize("window", [-1, (1 << 32) + 1])
def test_bad_channel_window(window: int) -> None:
    pair = open_pair()
    wire = forge_transport(pair.initiator, control(m.ChannelOpen(1, "chat", window)))
    pair.responder.receive_data(wire, 0.0)
    assert_failed_and_told_peer(pair, "responder", FlowControlError)


def test_window_update_for_a_closed_channel_is_ignored() -> None:
    pair = open_pair()
    wire = forge_transport(pair.responder, control(m.WindowUpdate(77, 10)))
    pair.initiator.receive_data(wire, 0.0)
    assert pair.take("initiator") == []
    assert pair.initiator.state is State.OPEN


# ------------------------------------------------------------------- fairness


def test_chat_is_not_starved_by_a_bulk_send() -> None:
    pair = open_pair()
    bulk = open_channel(pair, "file")
    chat = open_channel(pair, "chat")
    bulk_size = 50 << 20
    pair.initiator.send(bulk, bytes(bulk_size))
    pair.initiator.send(chat, b"lunch?")
    chat_seen = False
    bulk_got = 0
    for _ in range(2):
        wire = pair.initiator.data_to_send(256 << 10)
        assert 0 < len(wire) <= (256 << 10) + (64 << 10)
        pair.responder.receive_data(wire, 0.0)
        for event in pair.take("responder"):
            assert isinstance(event, DataReceived)
            if event.channel == chat:
                assert event.data == b"lunch?"
                chat_seen = True
            else:
                bulk_got += len(event.data)
        if chat_seen:
            break
    assert chat_seen
    assert 0 < bulk_got < bulk_size


def test_control_goes_before_bulk_data() -> None:
    pair = open_pair()
    bulk = open_channel(pair, "file")
    pair.initiator.send(bulk, bytes(4 << 20))
    pair.responder.receive_data(pair.initiator.data_to_send(256 << 10), 0.0)  # bulk flowing
    pair.take("responder")
    token = pair.initiator.ping(0.0)
    wire = pair.initiator.data_to_send(1)  # room for one message only
    pair.responder.receive_data(wire, 0.0)
    assert pair.take("responder") == []  # not data: the ping
    pair.initiator.receive_data(pair.responder.data_to_send(), 0.0)
    assert pair.take("initiator") == [PongReceived(token, 0.0)]


# ------------------------------------------------------- keepalive and timers


def test_keepalive_ping_and_rtt() -> None:
    cfg = SessionConfig(keepalive_interval=15.0, idle_timeout=45.0)
    pair = open_pair(config=cfg)
    init, resp = pair.initiator, pair.responder
    assert init.get_timer() == resp.get_timer() == 15.0
    init.handle_timer(14.9)
    assert init.data_to_send() == b""
    init.handle_timer(15.0)
    ping = init.data_to_send()
    assert ping
    assert init.get_timer() == 45.0  # now waiting for any answer, up to the idle timeout
    resp.receive_data(ping, 15.1)
    assert resp.get_timer() == 30.1
    init.receive_data(resp.data_to_send(), 15.25)
    [pong] = pair.take("initiator")
    assert isinstance(pong, PongReceived)
    assert pong.rtt == pytest.approx(0.25)
    assert init.get_timer() == 30.25
    assert init.state is resp.state is State.OPEN


def test_idle_timeout() -> None:
    pair = open_pair(config=SessionConfig(keepalive_interval=15.0, idle_timeout=45.0))
    init = pair.initiator
    init.handle_timer(15.0)
    ping = init.data_to_send()  # the peer is stuck: no answer comes
    assert init.get_timer() == 45.0
    init.handle_timer(44.0)
    assert pair.take("initiator") == []
    init.handle_timer(45.0)
    event = closed(pair.take("initiator"))
    assert isinstance(event.error, PeerTimeout)
    assert event.code == m.CloseCode.TIMEOUT
    assert init.get_timer() is None
    # It says goodbye in case the peer is still there.
    pair.responder.receive_data(ping + init.data_to_send(), 45.0)
    told = closed(pair.take("responder"))
    assert told.by_peer
    assert told.code == m.CloseCode.TIMEOUT


def test_idle_timeout_shorter_than_keepalive() -> None:
    pair = open_pair(config=SessionConfig(keepalive_interval=30.0, idle_timeout=10.0))
    assert pair.initiator.get_timer() == 10.0
    pair.initiator.handle_timer(10.0)
    assert isinstance(closed(pair.take("initiator")).error, PeerTimeout)


def test_any_input_pushes_the_timers_back() -> None:
    pair = open_pair()
    pair.initiator.ping(10.0)
    pair.responder.receive_data(pair.initiator.data_to_send(), 10.0)
    assert pair.responder.get_timer() == 25.0
    pair.responder.handle_timer(15.0)  # early: nothing happens
    assert pair.responder.data_to_send() != b""  # just the pong
    assert pair.responder.get_timer() == 25.0


def test_handshake_timeout() -> None:
    pair = session_pair(config=SessionConfig(handshake_timeout=3.0))
    assert pair.initiator.get_timer() == pair.responder.get_timer() == 3.0
    pair.initiator.handle_timer(2.9)
    assert pair.take("initiator") == []
    pair.initiator.handle_timer(3.0)
    event = closed(pair.take("initiator"))
    assert isinstance(event.error, PeerTimeout)
    assert event.code == m.CloseCode.TIMEOUT
    assert pair.initiator.get_timer() is None


def test_handshake_timeout_midway() -> None:
    pair = session_pair()
    pair.responder.receive_data(pair.initiator.data_to_send(), 1.0)  # message 1; no message 3
    assert pair.responder.get_timer() == 10.0
    pair.responder.handle_timer(10.0)
    assert isinstance(closed(pair.take("responder")).error, PeerTimeout)


def test_timer_before_start() -> None:
    pair = session_pair(start=False)
    assert pair.initiator.get_timer() is None


def test_timers_after_close_do_nothing() -> None:
    pair = open_pair()
    pair.initiator.close()
    pair.take("initiator")
    pair.initiator.handle_timer(1000.0)
    assert pair.take("initiator") == []
    assert pair.initiator.get_timer() is None


# -------------------------------------------------------------- ping and close


def test_ping_rtt_from_the_fake_clock() -> None:
    pair = open_pair()
    token = pair.initiator.ping(100.0)
    pair.responder.receive_data(pair.initiator.data_to_send(), 100.5)
    pair.initiator.receive_data(pair.responder.data_to_send(), 101.75)
    assert pair.take("initiator") == [PongReceived(token, 1.75)]
    assert pair.take("responder") == []


def test_pings_are_told_apart() -> None:
    pair = open_pair()
    t1 = pair.responder.ping(1.0)
    t2 = pair.responder.ping(2.0)
    assert t1 != t2
    pair.now = 3.0
    pair.shuttle()
    assert pair.take("responder") == [PongReceived(t1, 2.0), PongReceived(t2, 1.0)]


def test_unsolicited_pong_is_ignored() -> None:
    pair = open_pair()
    pair.initiator.receive_data(forge_transport(pair.responder, control(m.Pong(999))), 0.0)
    assert pair.take("initiator") == []
    assert pair.initiator.state is State.OPEN


def test_clean_close_with_reason() -> None:
    pair = open_pair()
    cid = open_channel(pair)
    pair.initiator.close("bye")
    pair.initiator.close("again")  # idempotent
    assert pair.initiator.wants_close
    assert pair.take("initiator") == [
        ChannelClosed(cid, "bye"),
        SessionClosed(m.CloseCode.NORMAL, "bye", False, None),
    ]
    pair.shuttle()
    assert pair.take("responder") == [
        ChannelClosed(cid, "bye"),
        SessionClosed(m.CloseCode.NORMAL, "bye", True, None),
    ]
    assert pair.responder.state is State.CLOSED
    assert pair.responder.close_reason == "bye"


def test_close_with_a_code() -> None:
    pair = open_pair()
    pair.responder.close("going away", code=m.CloseCode.SHUTTING_DOWN)
    pair.shuttle()
    assert closed(pair.take("initiator")) == SessionClosed(
        m.CloseCode.SHUTTING_DOWN, "going away", True, None
    )


def test_close_sends_no_more_channel_data() -> None:
    pair = open_pair()
    cid = open_channel(pair)
    pair.initiator.send(cid, b"never sent")
    pair.initiator.close("bye")
    pair.shuttle()
    events = pair.take("responder")
    assert received(events, cid) == b""
    assert closed(events).reason == "bye"


def test_close_during_the_handshake_sends_nothing() -> None:
    pair = session_pair()
    pair.initiator.data_to_send()
    pair.initiator.close("changed my mind")
    assert pair.initiator.data_to_send() == b""
    assert closed(pair.take("initiator")).reason == "changed my mind"


def test_connection_lost_when_open() -> None:
    pair = open_pair()
    pair.initiator.connection_lost("reset by peer")
    event = closed(pair.take("initiator"))
    assert event.error is None
    assert event.by_peer
    assert event.reason == "reset by peer"
    pair.initiator.connection_lost()  # idempotent
    assert pair.take("initiator") == []


def test_input_after_close_is_ignored() -> None:
    pair = open_pair()
    pair.initiator.ping(0.0)
    wire = pair.initiator.data_to_send()
    pair.responder.close("done")
    pair.take("responder")
    pair.responder.receive_data(wire, 0.0)
    pair.responder.receive_data(b"garbage", 0.0)
    assert pair.take("responder") == []


def test_peer_close_reason_is_bounded() -> None:
    pair = open_pair()
    wire = forge_transport(pair.initiator, control(m.Close(0, "x" * 10_000)))
    pair.responder.receive_data(wire, 0.0)
    assert len(closed(pair.take("responder")).reason) == m.MAX_REASON_LEN


def test_close_message_after_data_in_the_same_read() -> None:
    pair = open_pair()
    cid = open_channel(pair)
    pair.initiator.send(cid, b"one")
    wire = pair.initiator.data_to_send()
    pair.initiator.close("bye")
    wire += pair.initiator.data_to_send()
    pair.responder.receive_data(wire, 0.0)
    events = pair.take("responder")
    assert events[0] == DataReceived(cid, b"one")
    assert closed(events).reason == "bye"


def test_bytes_counters() -> None:
    pair = open_pair()
    assert pair.initiator.bytes_sent == pair.responder.bytes_received > 0
    assert pair.responder.bytes_sent == pair.initiator.bytes_received > 0


def test_hand_built_control_message() -> None:
    """Control messages in a live session are plain msgpack behind the kind byte."""
    pair = open_pair()
    body = b"\x00" + msgspec.msgpack.encode([2, 5])  # a Ping built by hand
    pair.responder.receive_data(forge_transport(pair.initiator, body), 0.0)
    pair.initiator.receive_data(pair.responder.data_to_send(), 0.0)
    assert pair.take("initiator") == []  # a Pong to a ping we never sent: ignored
    assert pair.initiator.state is State.OPEN
