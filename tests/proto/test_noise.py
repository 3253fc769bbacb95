"""Tests for sidedoor.proto.noise: published vectors, an independent implementation, bad input."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from sidedoor.errors import (
    DecryptError,
    HandshakeFailed,
    LocalProtocolError,
    RemoteProtocolError,
)
from sidedoor.proto.noise import (
    DH_LEN,
    MAX_MESSAGE_LEN,
    MAX_NONCE,
    TAG_LEN,
    CipherState,
    HandshakeState,
    Pattern,
    message_overhead,
    protocol_name,
    x25519_public,
)

VECTORS_PATH = Path(__file__).resolve().parent.parent / "vectors" / "noise_vectors.json"
WANTED = {protocol_name(p).decode(): p for p in Pattern}


def _key(label: str) -> bytes:
    """A fixed 32-byte key per label, so every run is the same."""
    return hashlib.blake2s(label.encode()).digest()


def _name(vector: dict[str, Any]) -> str:
    """cacophony's older format calls the field "name", snow's "protocol_name"."""
    return str(vector.get("protocol_name", vector.get("name")))


def _load_vectors() -> list[dict[str, Any]]:
    data = json.loads(VECTORS_PATH.read_text())
    vectors = []
    for vector in data["vectors"]:
        if _name(vector) not in WANTED:
            continue
        # psk and fallback variants are out of scope (snow writes empty psk lists: those are fine)
        if vector.get("init_psks") or vector.get("resp_psks") or "init_psk" in vector:
            continue
        if vector.get("fallback") or "fallback_pattern" in vector:
            continue
        vectors.append(vector)
    return vectors


VECTORS = _load_vectors()


def _hex(vector: dict[str, Any], field: str) -> bytes | None:
    value = vector.get(field)
    return None if value is None else bytes.fromhex(value)


def _pair(
    pattern: Pattern, *, prologue: bytes = b"", rs_for_initiator: bytes | None = None
) -> tuple[HandshakeState, HandshakeState]:
    init_s, resp_s = _key(f"{pattern.value} init s"), _key(f"{pattern.value} resp s")
    if pattern is Pattern.IK and rs_for_initiator is None:
        rs_for_initiator = x25519_public(resp_s)
    init = HandshakeState(
        pattern,
        True,
        init_s,
        _key(f"{pattern.value} init e"),
        prologue=prologue,
        remote_static=rs_for_initiator,
    )
    resp = HandshakeState(
        pattern, False, resp_s, _key(f"{pattern.value} resp e"), prologue=prologue
    )
    return init, resp


def _run(
    init: HandshakeState,
    resp: HandshakeState,
    tamper: Callable[[int, bytes], bytes] = lambda _i, m: m,
) -> list[bytes]:
    """Run a full handshake, passing each message through ``tamper(index, message)``."""
    messages = []
    index = 0
    while not (init.complete and resp.complete):
        sender, receiver = (init, resp) if index % 2 == 0 else (resp, init)
        assert sender.is_my_turn and not receiver.is_my_turn
        payload = f"payload {index}".encode()
        message = sender.write_message(payload)
        messages.append(message)
        assert receiver.read_message(tamper(index, message)) == payload
        index += 1
    return messages


# -- 1. published test vectors --------------------------------------------------------------


def test_vectors_file_has_both_sources_and_both_patterns() -> None:
    seen = {(v["source"], _name(v)) for v in VECTORS}
    assert seen == {(source, name) for source in ("cacophony", "snow") for name in WANTED}


@pytest.mark.parametrize(
    "vector",
    VECTORS,
    ids=[f"{v['source']}-{_name(v)}" for v in VECTORS],
)
def test_published_vector(vector: dict[str, Any]) -> None:
    pattern = WANTED[_name(vector)]
    init_static, resp_static = _hex(vector, "init_static"), _hex(vector, "resp_static")
    init_ephemeral, resp_ephemeral = _hex(vector, "init_ephemeral"), _hex(vector, "resp_ephemeral")
    assert init_static and resp_static and init_ephemeral and resp_ephemeral
    init_rs = _hex(vector, "init_remote_static")
    if init_rs is not None:
        assert init_rs == x25519_public(resp_static)
    init = HandshakeState(
        pattern,
        True,
        init_static,
        init_ephemeral,
        prologue=_hex(vector, "init_prologue") or b"",
        remote_static=init_rs,
    )
    resp = HandshakeState(
        pattern,
        False,
        resp_static,
        resp_ephemeral,
        prologue=_hex(vector, "resp_prologue") or b"",
    )

    messages = vector["messages"]
    index = 0
    # Handshake messages alternate, initiator first.
    while not (init.complete and resp.complete):
        sender, receiver = (init, resp) if index % 2 == 0 else (resp, init)
        payload = bytes.fromhex(messages[index]["payload"])
        ciphertext = sender.write_message(payload)
        assert ciphertext.hex() == messages[index]["ciphertext"], f"message {index}"
        assert receiver.read_message(ciphertext) == payload
        index += 1

    assert init.handshake_hash == resp.handshake_hash
    if "handshake_hash" in vector:
        assert init.handshake_hash.hex() == vector["handshake_hash"]
    assert init.remote_static == x25519_public(resp_static)
    assert resp.remote_static == x25519_public(init_static)

    # Transport messages keep alternating by index: even from the initiator, odd from the responder.
    init_send, init_recv = init.split()
    resp_send, resp_recv = resp.split()
    assert index < len(messages), "the vector should have transport messages too"
    for message in messages[index:]:
        send, recv = (init_send, resp_recv) if index % 2 == 0 else (resp_send, init_recv)
        payload = bytes.fromhex(message["payload"])
        ciphertext = send.encrypt(payload)
        assert ciphertext.hex() == message["ciphertext"], f"message {index}"
        assert recv.decrypt(ciphertext) == payload
        index += 1


# -- 2. interoperation with noiseprotocol (an independent implementation) --------------------


def _theirs(
    pattern: Pattern,
    initiator: bool,
    static: bytes,
    ephemeral: bytes | None = None,
    remote_static: bytes | None = None,
    prologue: bytes = b"",
) -> NoiseConnection:
    conn = NoiseConnection.from_name(protocol_name(pattern))
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
    if ephemeral is not None:
        conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    if remote_static is not None:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote_static)
    conn.set_prologue(prologue)
    conn.start_handshake()
    return conn


PROLOGUE = b"sidedoor interop prologue"


@pytest.mark.parametrize("pattern", list(Pattern), ids=lambda p: p.value)
@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-initiates", "theirs-initiates"])
def test_interop_with_noiseprotocol(pattern: Pattern, we_initiate: bool) -> None:
    init_s, resp_s = _key("interop init s"), _key("interop resp s")
    rs = x25519_public(resp_s) if pattern is Pattern.IK else None
    # noiseprotocol draws its own ephemeral key here, as in real use
    if we_initiate:
        ours = HandshakeState(
            pattern, True, init_s, _key("interop init e"), prologue=PROLOGUE, remote_static=rs
        )
        theirs = _theirs(pattern, False, resp_s, prologue=PROLOGUE)
    else:
        ours = HandshakeState(pattern, False, resp_s, _key("interop resp e"), prologue=PROLOGUE)
        theirs = _theirs(pattern, True, init_s, remote_static=rs, prologue=PROLOGUE)

    index = 0
    while not ours.complete:
        payload = f"handshake payload {index}".encode() * (index + 1)
        if ours.is_my_turn:
            assert theirs.read_message(ours.write_message(payload)) == payload
        else:
            assert ours.read_message(theirs.write_message(payload)) == payload
        index += 1
    assert theirs.handshake_finished
    assert ours.handshake_hash == theirs.get_handshake_hash()
    assert ours.remote_static == x25519_public(resp_s if we_initiate else init_s)

    send, recv = ours.split()
    for i in range(5):
        outgoing = f"ours -> theirs {i}".encode() * (i + 1)
        assert theirs.decrypt(send.encrypt(outgoing)) == outgoing
        incoming = f"theirs -> ours {i}".encode() * (i + 2)
        assert recv.decrypt(theirs.encrypt(incoming)) == incoming
    big = bytes(range(256)) * 255  # 65280 bytes, 65296 with the tag: a near-maximal message
    assert theirs.decrypt(send.encrypt(big)) == big


# noiseprotocol warns (rightly) when given a fixed ephemeral key; here that is the point.
@pytest.mark.filterwarnings("ignore:One of ephemeral keypairs is already set:UserWarning")
@pytest.mark.parametrize("pattern", list(Pattern), ids=lambda p: p.value)
def test_same_bytes_as_noiseprotocol(pattern: Pattern) -> None:
    """With the same keys, both implementations produce the very same handshake bytes."""
    init_s, resp_s = _key("same init s"), _key("same resp s")
    init_e, resp_e = _key("same init e"), _key("same resp e")
    rs = x25519_public(resp_s) if pattern is Pattern.IK else None
    ours_i = HandshakeState(pattern, True, init_s, init_e, prologue=PROLOGUE, remote_static=rs)
    ours_r = HandshakeState(pattern, False, resp_s, resp_e, prologue=PROLOGUE)
    theirs_i = _theirs(pattern, True, init_s, init_e, remote_static=rs, prologue=PROLOGUE)
    theirs_r = _theirs(pattern, False, resp_s, resp_e, prologue=PROLOGUE)
    index = 0
    while not ours_i.complete:
        if index % 2 == 0:
            ours_msg, theirs_msg = ours_i.write_message(b"x"), theirs_i.write_message(b"x")
            ours_r.read_message(ours_msg)
            theirs_r.read_message(theirs_msg)
        else:
            ours_msg, theirs_msg = ours_r.write_message(b"y"), theirs_r.write_message(b"y")
            ours_i.read_message(ours_msg)
            theirs_i.read_message(theirs_msg)
        assert ours_msg == theirs_msg
        index += 1
    assert ours_i.handshake_hash == theirs_i.get_handshake_hash()


# -- sizes, names, basics ------------------------------------------------------------------


def test_protocol_names() -> None:
    assert protocol_name(Pattern.XX) == b"Noise_XX_25519_ChaChaPoly_BLAKE2s"
    assert protocol_name(Pattern.IK) == b"Noise_IK_25519_ChaChaPoly_BLAKE2s"


@pytest.mark.parametrize("payload_len", [0, 1, 100])
@pytest.mark.parametrize(
    ("pattern", "sizes"), [(Pattern.XX, (32, 96, 64)), (Pattern.IK, (96, 48))], ids=["XX", "IK"]
)
def test_message_sizes(pattern: Pattern, sizes: tuple[int, ...], payload_len: int) -> None:
    init, resp = _pair(pattern)
    index = 0
    while not init.complete:
        sender, receiver = (init, resp) if index % 2 == 0 else (resp, init)
        message = sender.write_message(b"p" * payload_len)
        assert len(message) == sizes[index] + payload_len
        assert message_overhead(pattern, index) == sizes[index]
        receiver.read_message(message)
        index += 1
    assert index == len(sizes)


@pytest.mark.parametrize("pattern", list(Pattern), ids=lambda p: p.value)
def test_state_flags_and_split_directions(pattern: Pattern) -> None:
    init, resp = _pair(pattern)
    assert init.is_my_turn and not resp.is_my_turn
    assert not init.complete and not resp.complete
    _run(init, resp)
    assert init.complete and resp.complete
    assert not init.is_my_turn and not resp.is_my_turn
    i_send, i_recv = init.split()
    r_send, r_recv = resp.split()
    assert r_recv.decrypt(i_send.encrypt(b"to responder")) == b"to responder"
    assert i_recv.decrypt(r_send.encrypt(b"to initiator")) == b"to initiator"
    assert i_send.n == 1 and r_recv.n == 1


def test_prologue_mismatch_fails() -> None:
    init = HandshakeState(Pattern.XX, True, _key("a"), _key("b"), prologue=b"one")
    resp = HandshakeState(Pattern.XX, False, _key("c"), _key("d"), prologue=b"two")
    resp.read_message(init.write_message())  # XX message 1 is not authenticated
    with pytest.raises(HandshakeFailed):
        init.read_message(resp.write_message())


# -- 3. unhappy paths ------------------------------------------------------------------------


def _first_failure(pattern: Pattern, tamper: Callable[[int, bytes], bytes]) -> int:
    """Run a handshake with ``tamper``; return the index of the message whose read failed."""
    init, resp = _pair(pattern)
    index = 0
    while True:
        sender, receiver = (init, resp) if index % 2 == 0 else (resp, init)
        assert not sender.complete, "the handshake completed despite the tampering"
        message = tamper(index, sender.write_message(f"payload {index}".encode()))
        try:
            receiver.read_message(message)
        except HandshakeFailed:
            # the failed side is dead from now on
            with pytest.raises(LocalProtocolError):
                receiver.read_message(message)
            with pytest.raises(LocalProtocolError):
                receiver.write_message()
            assert not receiver.is_my_turn
            return index
        index += 1


def _flip(target: int, position: int) -> Callable[[int, bytes], bytes]:
    def tamper(index: int, message: bytes) -> bytes:
        if index != target:
            return message
        data = bytearray(message)
        data[position // 8] ^= 1 << (position % 8)
        return bytes(data)

    return tamper


@pytest.mark.parametrize(
    ("pattern", "target"),
    [(Pattern.XX, 0), (Pattern.XX, 1), (Pattern.XX, 2), (Pattern.IK, 0), (Pattern.IK, 1)],
)
def test_flipped_bit_in_each_handshake_message(pattern: Pattern, target: int) -> None:
    length = message_overhead(pattern, target) + len(f"payload {target}")
    # every byte of the message, a different bit each time, plus the ignored top bit of e
    positions = [byte * 8 + byte % 8 for byte in range(length)] + [(DH_LEN - 1) * 8 + 7]
    for position in positions:
        failed_at = _first_failure(pattern, _flip(target, position))
        if pattern is Pattern.XX and target == 0:
            # XX message 1 carries no MAC; the initiator notices on reading message 2
            assert failed_at == 1, position
        else:
            assert failed_at == target, position


def _truncate(target: int, keep: int) -> Callable[[int, bytes], bytes]:
    """Keep ``message[:keep]`` of message ``target`` (a negative ``keep`` cuts from the end)."""

    def tamper(index: int, message: bytes) -> bytes:
        return message[:keep] if index == target else message

    return tamper


@pytest.mark.parametrize(
    ("pattern", "target"),
    [(Pattern.XX, 0), (Pattern.XX, 1), (Pattern.XX, 2), (Pattern.IK, 0), (Pattern.IK, 1)],
)
def test_truncated_handshake_message(pattern: Pattern, target: int) -> None:
    minimum = message_overhead(pattern, target)
    for cut in (1, len(f"payload {target}") + 1, 1000):
        failed_at = _first_failure(pattern, _truncate(target, keep=-cut))
        still_long_enough = len(f"payload {target}") + minimum - cut >= minimum
        if pattern is Pattern.XX and target == 0 and still_long_enough:
            assert failed_at == 1  # only the clear-text payload was cut; noticed at message 2
        else:
            assert failed_at == target


@pytest.mark.parametrize(
    ("pattern", "target"),
    [(Pattern.XX, 0), (Pattern.XX, 1), (Pattern.XX, 2), (Pattern.IK, 0), (Pattern.IK, 1)],
)
def test_short_message_rejected_before_crypto(pattern: Pattern, target: int) -> None:
    minimum = message_overhead(pattern, target)
    for length in (0, 1, minimum - 1):
        failed_at = _first_failure(pattern, _truncate(target, keep=length))
        assert failed_at == target
    _init, resp = _pair(pattern)
    with pytest.raises(HandshakeFailed, match="too short"):
        resp.read_message(b"\x00" * (message_overhead(pattern, 0) - 1))


def test_over_long_handshake_message_rejected() -> None:
    _init, resp = _pair(Pattern.XX)
    with pytest.raises(HandshakeFailed, match="65535"):
        resp.read_message(b"\x01" * (MAX_MESSAGE_LEN + 1))


@pytest.mark.parametrize("pattern", list(Pattern), ids=lambda p: p.value)
def test_oversized_payload_refused_on_write(pattern: Pattern) -> None:
    init, resp = _pair(pattern)
    limit = MAX_MESSAGE_LEN - message_overhead(pattern, 0)
    with pytest.raises(LocalProtocolError, match="65535"):
        init.write_message(b"\x00" * (limit + 1))
    # the refusal left the state untouched: the biggest allowed payload still works
    message = init.write_message(b"\x00" * limit)
    assert len(message) == MAX_MESSAGE_LEN
    assert resp.read_message(message) == b"\x00" * limit


@pytest.mark.parametrize("pattern", list(Pattern), ids=lambda p: p.value)
def test_transport_replay_and_reorder(pattern: Pattern) -> None:
    init, resp = _pair(pattern)
    _run(init, resp)
    send, _ = init.split()
    _, recv = resp.split()
    first, second, third = send.encrypt(b"one"), send.encrypt(b"two"), send.encrypt(b"three")
    assert recv.decrypt(first) == b"one"
    with pytest.raises(DecryptError):
        recv.decrypt(first)  # replayed
    assert recv.n == 1  # a failure does not move the nonce
    with pytest.raises(DecryptError):
        recv.decrypt(third)  # reordered: third before second
    assert recv.decrypt(second) == b"two"
    assert recv.decrypt(third) == b"three"
    tampered = bytearray(send.encrypt(b"four"))
    tampered[0] ^= 1
    with pytest.raises(DecryptError):
        recv.decrypt(bytes(tampered))
    with pytest.raises(DecryptError):
        recv.decrypt(b"short")


def test_ik_wrong_remote_static() -> None:
    init, resp = _pair(Pattern.IK, rs_for_initiator=x25519_public(_key("somebody else")))
    message = init.write_message(b"hello")
    with pytest.raises(HandshakeFailed, match="failed authentication"):
        resp.read_message(message)


def test_ik_responder_learns_initiator_static() -> None:
    init, resp = _pair(Pattern.IK)
    assert resp.remote_static is None
    resp.read_message(init.write_message())
    assert resp.remote_static == x25519_public(_key("IK init s"))


def test_xx_remote_static_learned_in_order() -> None:
    init, resp = _pair(Pattern.XX)
    resp.read_message(init.write_message())
    assert init.remote_static is None and resp.remote_static is None
    init.read_message(resp.write_message())
    assert init.remote_static == x25519_public(_key("XX resp s"))
    resp.read_message(init.write_message())
    assert resp.remote_static == x25519_public(_key("XX init s"))


@pytest.mark.parametrize("pattern", list(Pattern), ids=lambda p: p.value)
def test_out_of_turn_calls(pattern: Pattern) -> None:
    init, resp = _pair(pattern)
    with pytest.raises(LocalProtocolError, match="out of turn"):
        resp.write_message()
    with pytest.raises(LocalProtocolError, match="out of turn"):
        init.read_message(b"\x00" * 200)
    with pytest.raises(LocalProtocolError):
        init.split()
    message = init.write_message()
    with pytest.raises(LocalProtocolError, match="out of turn"):
        init.write_message()
    resp.read_message(message)
    with pytest.raises(LocalProtocolError, match="out of turn"):
        resp.read_message(message)
    init, resp = _pair(pattern)
    messages = _run(init, resp)
    for side in (init, resp):
        with pytest.raises(LocalProtocolError, match="complete"):
            side.write_message()
        with pytest.raises(LocalProtocolError, match="complete"):
            side.read_message(messages[-1])
        side.split()
        with pytest.raises(LocalProtocolError, match="already"):
            side.split()


def test_constructor_checks() -> None:
    s, e = _key("s"), _key("e")
    with pytest.raises(LocalProtocolError):
        HandshakeState(Pattern.IK, True, s, e)  # IK initiator without remote_static
    with pytest.raises(LocalProtocolError):
        HandshakeState(Pattern.IK, True, s, e, remote_static=b"\x01" * 31)
    with pytest.raises(LocalProtocolError):
        HandshakeState(Pattern.IK, False, s, e, remote_static=x25519_public(s))
    with pytest.raises(LocalProtocolError):
        HandshakeState(Pattern.XX, True, s, e, remote_static=x25519_public(s))
    with pytest.raises(LocalProtocolError):
        HandshakeState(Pattern.XX, True, s[:31], e)
    with pytest.raises(LocalProtocolError):
        HandshakeState(Pattern.XX, True, s, e + b"\x00")
    with pytest.raises(LocalProtocolError):
        HandshakeState("XX", True, s, e)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        x25519_public(b"\x00" * 31)
    with pytest.raises(LocalProtocolError):
        CipherState(b"\x00" * 31)


def test_low_order_keys_fail_the_handshake() -> None:
    # XX: the responder first uses the initiator's ephemeral key when writing message 2.
    _init, resp = _pair(Pattern.XX)
    resp.read_message(b"\x00" * DH_LEN)
    with pytest.raises(HandshakeFailed, match="low-order"):
        resp.write_message()
    with pytest.raises(LocalProtocolError):
        resp.write_message()
    # XX: a low-order ephemeral from the responder fails at once when reading message 2.
    init, _resp = _pair(Pattern.XX)
    init.write_message()
    with pytest.raises(HandshakeFailed, match="low-order"):
        init.read_message(b"\x00" * DH_LEN + b"\x00" * 64)
    # IK: a low-order ephemeral in message 1.
    _init, resp = _pair(Pattern.IK)
    with pytest.raises(HandshakeFailed, match="low-order"):
        resp.read_message(b"\x00" * 96)
    # IK: an initiator told to reach a low-order static key.
    init = HandshakeState(Pattern.IK, True, _key("s"), _key("e"), remote_static=b"\x00" * DH_LEN)
    with pytest.raises(HandshakeFailed, match="low-order"):
        init.write_message()


def test_cipher_state_basics() -> None:
    empty = CipherState()
    assert not empty.has_key()
    assert empty.encrypt_with_ad(b"ad", b"clear") == b"clear"
    assert empty.decrypt_with_ad(b"ad", b"clear") == b"clear"
    with pytest.raises(LocalProtocolError):
        empty.encrypt(b"x")
    with pytest.raises(LocalProtocolError):
        empty.decrypt(b"x" * 32)

    a, b = CipherState(_key("k")), CipherState(_key("k"))
    ciphertext = a.encrypt_with_ad(b"ad", b"hello")
    assert len(ciphertext) == 5 + TAG_LEN
    with pytest.raises(DecryptError):
        b.decrypt_with_ad(b"other ad", ciphertext)
    assert b.n == 0
    assert b.decrypt_with_ad(b"ad", ciphertext) == b"hello"
    assert a.n == b.n == 1
    # encrypt() is encrypt_with_ad(b"", ...)
    c, d = CipherState(_key("k")), CipherState(_key("k"))
    assert c.encrypt(b"same") == d.encrypt_with_ad(b"", b"same")


def test_transport_size_limits() -> None:
    send, recv = CipherState(_key("k")), CipherState(_key("k"))
    biggest = b"\x00" * (MAX_MESSAGE_LEN - TAG_LEN)
    message = send.encrypt(biggest)
    assert len(message) == MAX_MESSAGE_LEN
    assert recv.decrypt(message) == biggest
    with pytest.raises(LocalProtocolError):
        send.encrypt(biggest + b"\x00")
    with pytest.raises(DecryptError):
        recv.decrypt(b"\x00" * (MAX_MESSAGE_LEN + 1))


def test_reserved_nonce() -> None:
    send, recv = CipherState(_key("k")), CipherState(_key("k"))
    send.n = recv.n = MAX_NONCE - 1
    assert recv.decrypt(send.encrypt(b"last")) == b"last"
    assert send.n == recv.n == MAX_NONCE
    with pytest.raises(LocalProtocolError):
        send.encrypt(b"one too many")
    with pytest.raises(LocalProtocolError):
        send.encrypt_with_ad(b"", b"one too many")
    with pytest.raises(DecryptError):
        recv.decrypt(b"\x00" * 32)
    with pytest.raises(DecryptError):
        recv.decrypt_with_ad(b"", b"\x00" * 32)
    assert send.n == recv.n == MAX_NONCE


# -- Hypothesis: nothing but RemoteProtocolError escapes a responder's read_message ----------


@settings(max_examples=300, deadline=None)
@given(pattern=st.sampled_from(list(Pattern)), data=st.binary(max_size=300))
def test_random_bytes_to_responder(pattern: Pattern, data: bytes) -> None:
    _init, resp = _pair(pattern)
    try:
        resp.read_message(data)
    except RemoteProtocolError as exc:
        assert isinstance(exc, HandshakeFailed)
        return
    # Only XX message 1 (an ephemeral key and a clear payload) can be accepted from random bytes.
    assert pattern is Pattern.XX and len(data) >= DH_LEN
    try:
        resp.write_message()
    except RemoteProtocolError as exc:  # a low-order point, if Hypothesis finds one
        assert isinstance(exc, HandshakeFailed)


@settings(max_examples=200, deadline=None)
@given(pattern=st.sampled_from(list(Pattern)), data=st.binary(max_size=300))
def test_random_bytes_to_initiator_second_message(pattern: Pattern, data: bytes) -> None:
    init, _resp = _pair(pattern)
    init.write_message()
    with pytest.raises(HandshakeFailed):
        init.read_message(data)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_to_transport(data: bytes) -> None:
    with pytest.raises(DecryptError):
        CipherState(_key("k")).decrypt(data)
