"""Tests for invite codes and the invite machine: two machines wired in memory, no I/O.

What each side sees when the code is wrong: both sides send message 1 at once,
and each sends its message 2 as soon as it reads the peer's message 1, so a
side has always sent its own message 2 before it can read the peer's. With a
wrong code the two sides derive different keys, and each finds out on its own
when it checks the other's message 2: whichever checks first raises
`InviteFailed`, and the other raises `InviteFailed` when the message 2 the first
side sent (before it failed) reaches it. Neither side needs to be told.
"""

from __future__ import annotations

import contextlib
import hashlib

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidedoor.errors import (
    InvalidInviteCode,
    InviteFailed,
    LocalProtocolError,
    MessageError,
    ProtocolError,
    RemoteProtocolError,
    SidedoorError,
)
from sidedoor.invite_codes import InviteCode, make_code, parse_code
from sidedoor.proto.invite import (
    MAX_CARD_LEN,
    MAX_MESSAGE_LEN,
    RANDOM_LEN,
    ConfirmMessage,
    InviteMachine,
    InviteRole,
    InviteState,
    PakeMessage,
    decode_message,
    encode_message,
)
from sidedoor.words import wordlist

JOINER = InviteRole.JOINER
INVITER = InviteRole.INVITER
JOINER_ID = b"\x01" * 32
INVITER_ID = b"\x02" * 32
MALLORY_ID = b"\x03" * 32
BINDING = hashlib.sha256(b"one noise session").digest()
CODE = InviteCode(7, ("guitar", "orbit"))
CARDS = {JOINER: b"joiner's card", INVITER: b"inviter's card"}

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------- helpers


def entropy(label: str) -> bytes:
    return hashlib.sha512(label.encode()).digest()


def machine(
    role: InviteRole,
    code: InviteCode = CODE,
    *,
    own: bytes | None = None,
    peer: bytes | None = None,
    binding: bytes = BINDING,
    card: bytes | None = None,
    seed: str | None = None,
) -> InviteMachine:
    default_own, default_peer = (
        (JOINER_ID, INVITER_ID) if role is JOINER else (INVITER_ID, JOINER_ID)
    )
    return InviteMachine(
        role,
        code,
        own_identity=own or default_own,
        peer_identity=peer or default_peer,
        session_binding=binding,
        own_card=CARDS[role] if card is None else card,
        random=entropy(seed or role.value),
    )


def exchange_pakes(joiner: InviteMachine, inviter: InviteMachine) -> tuple[bytes, bytes]:
    """Both send message 1, both read the other's; return (joiner's, inviter's) message 2."""
    pj, pi = joiner.start(), inviter.start()
    cj, ci = joiner.receive(pi), inviter.receive(pj)
    assert cj is not None and ci is not None
    return cj, ci


def run(joiner: InviteMachine, inviter: InviteMachine) -> None:
    cj, ci = exchange_pakes(joiner, inviter)
    assert joiner.receive(ci) is None
    assert inviter.receive(cj) is None


def assert_dead(m: InviteMachine) -> None:
    """A failed machine: FAILED, no card, and every call raises LocalProtocolError."""
    assert m.state is InviteState.FAILED
    assert not m.done
    assert m.peer_card is None
    assert m.error is not None
    with pytest.raises(LocalProtocolError):
        m.start()
    with pytest.raises(LocalProtocolError):
        m.receive(encode_message(PakeMessage(b"B" + bytes(32))))
    with pytest.raises(LocalProtocolError):
        m.receive(b"")
    assert m.state is InviteState.FAILED


def machine_in(state: InviteState, role: InviteRole = JOINER) -> InviteMachine:
    """A machine of ``role`` brought to ``state`` by a normal run."""
    joiner, inviter = machine(JOINER), machine(INVITER)
    m = joiner if role is JOINER else inviter
    if state is InviteState.NEW:
        return m
    if state in (InviteState.WAIT_PAKE, InviteState.FAILED):
        m.start()
        if state is InviteState.FAILED:
            with pytest.raises(MessageError):
                m.receive(b"\xc1")
        return m
    cj, ci = exchange_pakes(joiner, inviter)
    if state is InviteState.WAIT_CONFIRM:
        return m
    assert state is InviteState.DONE
    m.receive(ci if role is JOINER else cj)
    return m


# ------------------------------------------------------------ the happy path


def test_right_code_both_get_the_other_card() -> None:
    joiner, inviter = machine(JOINER), machine(INVITER)
    assert joiner.state is inviter.state is InviteState.NEW
    pj, pi = joiner.start(), inviter.start()
    assert joiner.state is inviter.state is InviteState.WAIT_PAKE
    assert isinstance(decode_message(pj), PakeMessage)
    cj, ci = joiner.receive(pi), inviter.receive(pj)
    assert joiner.state is inviter.state is InviteState.WAIT_CONFIRM
    assert cj is not None and ci is not None
    assert isinstance(decode_message(cj), ConfirmMessage)
    assert joiner.peer_card is None
    assert joiner.receive(ci) is None
    assert inviter.receive(cj) is None
    assert joiner.done and inviter.done
    assert joiner.peer_card == CARDS[INVITER]
    assert inviter.peer_card == CARDS[JOINER]
    assert joiner.error is None and inviter.error is None


def test_spent_once_a_guess_was_answered() -> None:
    joiner, inviter = machine(JOINER), machine(INVITER)
    pj = joiner.start()
    inviter.start()
    assert not inviter.spent
    inviter.receive(pj)  # a guesser could read our answer and hang up now
    assert inviter.spent and not inviter.done
    assert machine_in(InviteState.DONE).spent
    assert machine_in(InviteState.FAILED).spent
    assert not machine_in(InviteState.NEW).spent


def test_either_side_may_confirm_first() -> None:
    joiner, inviter = machine(JOINER), machine(INVITER)
    cj, ci = exchange_pakes(joiner, inviter)
    inviter.receive(cj)
    assert inviter.done and joiner.state is InviteState.WAIT_CONFIRM
    joiner.receive(ci)
    assert joiner.done


def test_receive_before_start_is_our_bug() -> None:
    # The glue starts a machine as soon as it makes it; receive() first is our bug.
    inviter = machine(INVITER)
    pj = machine(JOINER).start()
    with pytest.raises(LocalProtocolError, match="start"):
        inviter.receive(pj)
    assert_dead(inviter)


@pytest.mark.parametrize("size", [0, 1, MAX_CARD_LEN])
def test_cards_of_any_allowed_size(size: int) -> None:
    card_j, card_i = bytes([0xAA]) * size, bytes([0x55]) * size
    joiner, inviter = machine(JOINER, card=card_j), machine(INVITER, card=card_i)
    run(joiner, inviter)
    assert joiner.peer_card == card_i and inviter.peer_card == card_j


def test_largest_confirm_message_fits_the_limit() -> None:
    joiner, inviter = machine(JOINER, card=bytes(MAX_CARD_LEN)), machine(INVITER)
    cj, _ = exchange_pakes(joiner, inviter)
    assert len(cj) <= MAX_MESSAGE_LEN


def test_same_random_bytes_give_the_same_messages() -> None:
    a1, a2 = machine(JOINER), machine(JOINER)
    assert a1.start() == a2.start()
    assert machine(JOINER, seed="other").start() != machine(JOINER).start()


def test_message_bytes_are_pinned() -> None:
    assert encode_message(PakeMessage(b"A" + bytes(32))).hex() == "9201c421" + "41" + "00" * 32
    assert encode_message(ConfirmMessage(b"\x11" * 32, b"\x22" * 16)).hex() == (
        "9302c420" + "11" * 32 + "c410" + "22" * 16
    )


# ------------------------------------------------------------ wrong codes


@pytest.mark.parametrize("joiner_checks_first", [True, False])
def test_wrong_word_both_sides_fail(joiner_checks_first: bool) -> None:
    joiner = machine(JOINER, InviteCode(7, ("guitar", "otter")))
    inviter = machine(INVITER)
    cj, ci = exchange_pakes(joiner, inviter)  # nothing is wrong yet, as far as anyone sees
    first, first_in, second, second_in = (
        (joiner, ci, inviter, cj) if joiner_checks_first else (inviter, cj, joiner, ci)
    )
    with pytest.raises(InviteFailed, match="typed it wrong"):
        first.receive(first_in)
    assert_dead(first)
    # The other side still has the first side's message 2, sent before it failed.
    assert second.state is InviteState.WAIT_CONFIRM
    with pytest.raises(InviteFailed):
        second.receive(second_in)
    assert_dead(second)


def test_wrong_nameplate_fails() -> None:
    joiner = machine(JOINER, InviteCode(8, ("guitar", "orbit")))
    inviter = machine(INVITER)
    cj, ci = exchange_pakes(joiner, inviter)
    with pytest.raises(InviteFailed):
        joiner.receive(ci)
    with pytest.raises(InviteFailed):
        inviter.receive(cj)


def test_guessing_third_party_gets_one_guess() -> None:
    inviter = machine(INVITER, peer=MALLORY_ID)
    mallory = machine(
        JOINER, InviteCode(7, ("guitar", "ocean")), own=MALLORY_ID, seed="mallory"
    )
    cm, ci = exchange_pakes(mallory, inviter)
    # Mallory's message 2 cannot be right, and the inviter's card stays sealed to her.
    with pytest.raises(InviteFailed):
        inviter.receive(cm)
    with pytest.raises(InviteFailed):
        mallory.receive(ci)
    assert_dead(inviter)
    assert mallory.peer_card is None
    # The real colleague, arriving later with the right code, finds the invite spent.
    joiner = machine(JOINER)
    with pytest.raises(LocalProtocolError, match="new code"):
        inviter.receive(joiner.start())


def test_mallory_cannot_open_the_inviter_card_without_the_code() -> None:
    inviter = machine(INVITER, peer=MALLORY_ID)
    mallory = machine(JOINER, InviteCode(7, ("guitar", "ocean")), own=MALLORY_ID)
    _, ci = exchange_pakes(mallory, inviter)
    sealed = decode_message(ci)
    assert isinstance(sealed, ConfirmMessage)
    assert CARDS[INVITER] not in sealed.sealed_card


def test_man_in_the_middle_relaying_two_sessions_fails() -> None:
    # Mallory runs one Noise session with each victim and relays the invite
    # messages unchanged. Each victim sees Mallory's identity and its own
    # session's handshake hash, so the code being right does not help her.
    joiner = machine(JOINER, peer=MALLORY_ID, binding=hashlib.sha256(b"session 1").digest())
    inviter = machine(INVITER, peer=MALLORY_ID, binding=hashlib.sha256(b"session 2").digest())
    cj, ci = exchange_pakes(joiner, inviter)
    with pytest.raises(InviteFailed):
        joiner.receive(ci)
    with pytest.raises(InviteFailed):
        inviter.receive(cj)


def test_different_session_binding_alone_fails() -> None:
    joiner = machine(JOINER)
    inviter = machine(INVITER, binding=hashlib.sha256(b"another session").digest())
    cj, ci = exchange_pakes(joiner, inviter)
    with pytest.raises(InviteFailed):
        joiner.receive(ci)
    with pytest.raises(InviteFailed):
        inviter.receive(cj)


def test_different_identities_fail() -> None:
    joiner = machine(JOINER, peer=MALLORY_ID)  # thinks it talks to someone else
    inviter = machine(INVITER)
    cj, ci = exchange_pakes(joiner, inviter)
    with pytest.raises(InviteFailed):
        joiner.receive(ci)
    with pytest.raises(InviteFailed):
        inviter.receive(cj)


def test_two_joiners_fail() -> None:
    a = machine(JOINER)
    b = machine(JOINER, own=INVITER_ID, peer=JOINER_ID, seed="b")
    pa, pb = a.start(), b.start()
    with pytest.raises(InviteFailed):
        a.receive(pb)
    with pytest.raises(InviteFailed):
        b.receive(pa)


# ------------------------------------------------------------- reflections


def test_reflected_confirmation_fails() -> None:
    joiner, inviter = machine(JOINER), machine(INVITER)
    cj, _ = exchange_pakes(joiner, inviter)
    with pytest.raises(InviteFailed):
        joiner.receive(cj)
    assert_dead(joiner)


def test_reflected_confirmation_fails_for_the_inviter() -> None:
    joiner, inviter = machine(JOINER), machine(INVITER)
    _, ci = exchange_pakes(joiner, inviter)
    with pytest.raises(InviteFailed):
        inviter.receive(ci)


def test_reflected_pake_fails() -> None:
    joiner = machine(JOINER)
    pj = joiner.start()
    with pytest.raises(InviteFailed):
        joiner.receive(pj)
    assert_dead(joiner)


def test_reflected_pake_with_the_side_byte_changed_fails() -> None:
    joiner = machine(JOINER)
    own = decode_message(joiner.start())
    assert isinstance(own, PakeMessage)
    with pytest.raises(InviteFailed):
        joiner.receive(encode_message(PakeMessage(b"B" + own.pake[1:])))


# ------------------------------------------------------ tampered messages


def test_tampered_mac_fails() -> None:
    joiner, inviter = machine(JOINER), machine(INVITER)
    _, ci = exchange_pakes(joiner, inviter)
    msg = decode_message(ci)
    assert isinstance(msg, ConfirmMessage)
    bad = ConfirmMessage(bytes([msg.mac[0] ^ 1]) + msg.mac[1:], msg.sealed_card)
    with pytest.raises(InviteFailed):
        joiner.receive(encode_message(bad))


def test_tampered_card_fails() -> None:
    joiner, inviter = machine(JOINER), machine(INVITER)
    _, ci = exchange_pakes(joiner, inviter)
    msg = decode_message(ci)
    assert isinstance(msg, ConfirmMessage)
    bad = ConfirmMessage(msg.mac, msg.sealed_card[:-1] + bytes([msg.sealed_card[-1] ^ 1]))
    with pytest.raises(InviteFailed, match="card"):
        joiner.receive(encode_message(bad))
    assert_dead(joiner)


@pytest.mark.parametrize(
    "element",
    [
        bytes(32),  # y = 0: no point has it
        b"\x01" + bytes(31),  # the neutral element
        b"\xec" + b"\xff" * 30 + b"\x7f",  # y = p - 1, a point of small order
        b"\x02" + bytes(31),  # not on the curve
    ],
)
def test_pake_that_is_no_good_group_element_fails(element: bytes) -> None:
    joiner = machine(JOINER)
    joiner.start()
    with pytest.raises(InviteFailed):
        joiner.receive(encode_message(PakeMessage(b"B" + element)))
    assert_dead(joiner)


# ------------------------------------------------------ malformed messages


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\xc1",  # never used in msgpack
        b"\x90",  # an empty array
        b"\x91\x01",  # a Pake without its field
        b"\x92\x09\xc4\x21" + b"A" * 33,  # an unknown message type
        b"\x92\x01\xc4\x20" + b"B" * 32,  # a Pake one byte short
        b"\x92\x01\xc4\x22" + b"B" * 34,  # a Pake one byte long
        b"\x92\x01\xa1B",  # a Pake holding a string
        b"\x92\x01\xc4\x21" + b"B" * 33 + b"\x00",  # trailing bytes
        b"\x93\x02\xc4\x1f" + b"\x00" * 31 + b"\xc4\x10" + bytes(16),  # short MAC
        b"\x93\x02\xc4\x20" + bytes(32) + b"\xc4\x0f" + bytes(15),  # card shorter than a tag
        b"\x92\xa1\xff\xc4\x21" + b"A" * 33,  # a tag that is not UTF-8
        b"\x92\x01\xc6\xff\xff\xff\xff",  # a 4 GiB length prefix
        bytes(MAX_MESSAGE_LEN + 1),  # over the limit
    ],
)
def test_malformed_messages_are_message_errors(data: bytes) -> None:
    with pytest.raises(MessageError):
        decode_message(data)
    joiner = machine(JOINER)
    joiner.start()
    with pytest.raises(MessageError):
        joiner.receive(data)
    assert_dead(joiner)


def test_confirm_with_a_card_over_the_limit_is_a_message_error() -> None:
    data = encode_message(ConfirmMessage(bytes(32), bytes(MAX_CARD_LEN + 17)))
    assert len(data) <= MAX_MESSAGE_LEN
    m = machine_in(InviteState.WAIT_CONFIRM)
    with pytest.raises(MessageError):
        m.receive(data)


@pytest.mark.parametrize("which", ["pake", "confirm"])
def test_every_truncation_is_a_message_error(which: str) -> None:
    cj, _ = exchange_pakes(machine(JOINER), machine(INVITER))
    whole = machine(JOINER).start() if which == "pake" else cj
    for n in range(len(whole)):
        with pytest.raises(MessageError):
            decode_message(whole[:n])


# -------------------------------------------------------------- ordering


def test_confirm_before_pake_is_out_of_order() -> None:
    _, ci = exchange_pakes(machine(JOINER), machine(INVITER))
    joiner = machine(JOINER)
    joiner.start()
    with pytest.raises(MessageError, match="out of turn"):
        joiner.receive(ci)
    assert_dead(joiner)


def test_second_pake_is_out_of_order() -> None:
    joiner, inviter = machine(JOINER), machine(INVITER)
    pi = inviter.start()
    joiner.start()
    joiner.receive(pi)
    with pytest.raises(MessageError, match="out of turn"):
        joiner.receive(pi)
    assert_dead(joiner)


def test_message_after_done_is_out_of_order() -> None:
    joiner, inviter = machine(JOINER), machine(INVITER)
    _, ci = exchange_pakes(joiner, inviter)
    joiner.receive(ci)
    assert joiner.done
    with pytest.raises(MessageError):
        joiner.receive(ci)
    assert_dead(joiner)


def test_start_twice_is_our_bug() -> None:
    joiner = machine(JOINER)
    joiner.start()
    with pytest.raises(LocalProtocolError, match="already"):
        joiner.start()
    assert_dead(joiner)


# ------------------------------------------------------ constructor checks


def test_card_over_4_kib_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="4096"):
        machine(JOINER, card=bytes(MAX_CARD_LEN + 1))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("random", bytes(RANDOM_LEN - 1)),
        ("own_identity", bytes(31)),
        ("peer_identity", bytes(33)),
        ("peer_identity", JOINER_ID),  # the same as own_identity
        ("session_binding", bytes(31)),
        ("session_binding", bytes(65)),
    ],
)
def test_bad_arguments_are_refused(field: str, value: bytes) -> None:
    kwargs = {
        "own_identity": JOINER_ID,
        "peer_identity": INVITER_ID,
        "session_binding": BINDING,
        "own_card": b"",
        "random": entropy("x"),
    }
    kwargs[field] = value
    with pytest.raises(LocalProtocolError):
        InviteMachine(JOINER, CODE, **kwargs)


def test_errors_sit_in_the_hierarchy() -> None:
    assert issubclass(InviteFailed, RemoteProtocolError)
    assert issubclass(InvalidInviteCode, SidedoorError)
    assert issubclass(InvalidInviteCode, ValueError)
    assert "typed the code wrong" in (InviteFailed.__doc__ or "")


# ------------------------------------------------------------------ fuzzing

ALL_STATES = list(InviteState)


def _structured() -> st.SearchStrategy[bytes]:
    """Messages of the right shape with random contents, to get past the decoder."""
    pake = st.tuples(st.sampled_from([b"A", b"B", b"C"]), st.binary(min_size=32, max_size=32))
    return st.one_of(
        pake.map(lambda p: encode_message(PakeMessage(p[0] + p[1]))),
        st.tuples(
            st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=64)
        ).map(lambda c: encode_message(ConfirmMessage(c[0], c[1]))),
        st.tuples(st.integers(-3, 2**33), st.lists(st.binary(max_size=40), max_size=3)).map(
            lambda t: msgspec.msgpack.encode([t[0], *t[1]])
        ),
    )


@pytest.mark.parametrize("role", [JOINER, INVITER])
@pytest.mark.parametrize("state", ALL_STATES)
@FUZZ
@given(data=st.one_of(st.binary(max_size=200), _structured()))
def test_fuzz_receive_only_raises_protocol_errors(
    role: InviteRole, state: InviteState, data: bytes
) -> None:
    m = machine_in(state, role)
    try:
        reply = m.receive(data)
    except (MessageError, InviteFailed) as exc:
        assert state not in (InviteState.NEW, InviteState.FAILED), exc
    except LocalProtocolError:
        assert state in (InviteState.NEW, InviteState.FAILED)
    else:
        # Only one step can take random contents: a message 1 holding a valid group
        # element from the other side (nobody can tell it from a real one). Then the
        # keys are wrong, and the next step fails.
        assert state is InviteState.WAIT_PAKE, (data, state)
        assert reply is not None and isinstance(decode_message(reply), ConfirmMessage)
        assert m.state is InviteState.WAIT_CONFIRM
        cj, ci = exchange_pakes(machine(JOINER), machine(INVITER))
        with pytest.raises(InviteFailed):
            m.receive(ci if role is JOINER else cj)
    assert_dead(m)


@FUZZ
@given(data=st.binary(max_size=MAX_MESSAGE_LEN + 10))
def test_fuzz_decoder(data: bytes) -> None:
    with contextlib.suppress(MessageError):
        message = decode_message(data)
        assert isinstance(message, PakeMessage | ConfirmMessage)


def test_no_other_exception_type_is_possible_from_receive() -> None:
    # The fuzz test above catches the specific classes; all of them are ProtocolErrors.
    for cls in (MessageError, InviteFailed, LocalProtocolError):
        assert issubclass(cls, ProtocolError)


# --------------------------------------------------------------- the codes


@pytest.mark.parametrize(
    "text",
    [
        "7-guitar-orbit",
        "7 guitar orbit",
        "  7-Guitar-ORBIT\n",
        "7 - guitar - orbit",
        "7\tguitar  orbit",
        "7--guitar--orbit",
        "007-guitar-orbit",
    ],
)
def test_parse_good_forms(text: str) -> None:
    code = parse_code(text)
    assert code == CODE
    assert str(code) == "7-guitar-orbit"


def test_secret_is_the_canonical_text() -> None:
    assert CODE.secret() == b"7-guitar-orbit"
    assert parse_code(" 7 GUITAR orbit ").secret() == CODE.secret()
    assert InviteCode(8, ("guitar", "orbit")).secret() != CODE.secret()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "it should look like 7-guitar-orbit"),
        ("   ", "it should look like 7-guitar-orbit"),
        ("guitar-orbit", "this has 2 parts"),
        ("7-guitar-orbit-ocean", "this has 4 parts"),
        ("seven-guitar-orbit", "starts with a number"),
        ("guitar-orbit-7", "starts with a number"),
        ("\u0667-guitar-orbit", "starts with a number"),  # an Arabic-Indic seven
        ("0-guitar-orbit", "between 1 and 999"),
        ("1000-guitar-orbit", "between 1 and 999"),
        ("7-gitar-orbit", "'gitar' is not one of the invite words (did you mean 'guitar'?)"),
        ("7-guitar-zzzzzz", "'zzzzzz' is not one of the invite words (check the spelling"),
        ("7-" + "x" * 200, "it should look like 7-guitar-orbit"),
        ("7_guitar_orbit", "it should look like 7-guitar-orbit"),
    ],
)
def test_parse_bad_forms(text: str, message: str) -> None:
    with pytest.raises(InvalidInviteCode) as info:
        parse_code(text)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parse_names_every_unknown_word() -> None:
    with pytest.raises(InvalidInviteCode) as info:
        parse_code("7-gitar-orbt")
    text = str(info.value)
    assert "'gitar'" in text and "'guitar'" in text
    assert "'orbt'" in text and "'orbit'" in text


def test_invite_code_checks_its_fields() -> None:
    with pytest.raises(InvalidInviteCode):
        InviteCode(0, ("guitar", "orbit"))
    with pytest.raises(InvalidInviteCode):
        InviteCode(7, ("guitar", "gitar"))
    with pytest.raises(InvalidInviteCode):
        InviteCode(7, ("guitar",))  # type: ignore[arg-type]


def test_make_code_is_deterministic() -> None:
    random = bytes([0, 6, 3, 255])
    code = make_code(random)
    assert code == make_code(random)
    words = wordlist()
    assert code == InviteCode(1 + 6 % 99, (words[3], words[255]))
    assert make_code(random + b"ignored") == code


def test_make_code_needs_four_bytes() -> None:
    with pytest.raises(ValueError, match="4 random bytes"):
        make_code(b"abc")


@given(random=st.binary(min_size=4, max_size=8))
def test_make_code_uses_list_words_and_short_nameplates(random: bytes) -> None:
    code = make_code(random)
    assert 1 <= code.nameplate <= 99
    assert all(w in wordlist() for w in code.words)
    assert parse_code(str(code)) == code
