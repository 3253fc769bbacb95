"""The chat wire format, its limits, room chains and the ordering rule (no I/O)."""

from __future__ import annotations

import contextlib
import os
import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidedoor.errors import ChatRefused, MessageError
from sidedoor.identity import Identity
from sidedoor.proto import chat

ALICE, BOB, CAROL = Identity.generate(), Identity.generate(), Identity.generate()
ROOM = b"r" * 16


def message(**overrides: object) -> chat.Message:
    fields: dict[str, object] = {
        "id": os.urandom(16), "sender": ALICE.public.key, "to": BOB.public.key, "seq": 1,
        "sent_at": 1_700_000_000_000, "text": "lunch at 12?"}
    fields.update(overrides)
    return chat.Message(**fields)  # type: ignore[arg-type]


def test_every_frame_round_trips() -> None:
    update = chat.make_update(ALICE, ROOM, 1, "eng", [ALICE.public.key], [BOB.public.key])
    frames: list[chat.Frame] = [
        message(reply_to=b"x" * 16, attachments=(b"offer-1",)),
        chat.Receipt(b"i" * 16, BOB.public.key, "read", (b"m" * 16,)),
        update,
        chat.Leave(b"l" * 16, ROOM),
        chat.SyncRequest(b"s" * 16, ROOM, 3, ((ALICE.public.key, 7),)),
        chat.SyncResponse(b"s" * 16, (update,), (message(to=ROOM),), more=True),
        chat.Ack(b"a" * 16, "refused", "too long"),
    ]
    for frame in frames:
        assert chat.decode(chat.encode(frame)) == frame


def test_golden_bytes_of_a_message() -> None:
    msg = chat.Message(b"\x01" * 16, b"\x02" * 32, b"\x03" * 32, 1, 5, "hi")
    # The tag, then the fields in order: the wire format is pinned.
    assert chat.encode(msg).hex() == (
        "9aa36d7367c410" + "01" * 16 + "c420" + "02" * 32 + "c420" + "03" * 32
        + "0105a26869" + "c400" + "90" + "c400")


def test_invalid_utf8_is_a_message_error() -> None:
    raw = bytearray(chat.encode(message(text="abc")))
    at = raw.index(b"abc")
    raw[at : at + 3] = b"\xff\xfe\xfd"
    with pytest.raises(MessageError, match="malformed"):
        chat.decode(bytes(raw))


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x92\xa3zzz\x01", b"\xc1", os.urandom(40)])
def test_garbage_is_a_message_error(data: bytes) -> None:
    with pytest.raises(MessageError):
        chat.decode(data)


@given(st.binary(max_size=200))
def test_decode_raises_only_message_error(data: bytes) -> None:
    with contextlib.suppress(MessageError):
        chat.decode(data)


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"text": "x" * (chat.MAX_TEXT_BYTES + 1)}, "limit"),
    ({"text": "é" * (chat.MAX_TEXT_BYTES // 2 + 1)}, "limit"),  # bytes, not characters
    ({"text": "   "}, "empty"),
    ({"id": b"short"}, "16 bytes"),
    ({"seq": 0}, "start at 1"),
    ({"to": b"x" * 5}, "contact or a room"),
    ({"reply_to": b"x"}, "reply_to"),
    ({"attachments": (b"",)}, "attachment"),
    ({"attachments": tuple(b"a" for _ in range(17))}, "attachments"),
    ({"signature": b"s" * 64}, "not signed"),
])
def test_message_limits(overrides: dict[str, object], reason: str) -> None:
    with pytest.raises(ChatRefused, match=reason):
        chat.check_message(message(**overrides))


def test_a_message_at_the_limit_is_fine() -> None:
    chat.check_message(message(text="x" * chat.MAX_TEXT_BYTES))
    with pytest.raises(ChatRefused, match="limit"):
        chat.check_text("x" * (chat.MAX_TEXT_BYTES + 1))
    with pytest.raises(ChatRefused, match="Unicode"):
        chat.check_text("\udcff lone surrogate")


def test_room_message_signatures() -> None:
    signed = chat.sign_message(ALICE, message(to=ROOM))
    assert chat.message_signature_ok(signed)
    forged = msgspec.structs.replace(signed, text="changed")
    assert not chat.message_signature_ok(forged)
    claimed = msgspec.structs.replace(signed, sender=BOB.public.key)
    assert not chat.message_signature_ok(claimed)


# ---------------------------------------------------------------- rooms

def test_room_chain_applies_in_order_and_only_from_admins() -> None:
    a, b, c = ALICE.public.key, BOB.public.key, CAROL.public.key
    v1 = chat.make_update(ALICE, ROOM, 1, "eng", [a], [b, c])
    state = chat.apply_update(None, v1)
    assert state.members == {a, b, c} and state.admins == {a}
    # Bob is a member, not an admin: his update is ignored.
    by_bob = chat.make_update(BOB, ROOM, 2, "eng", [a, b], [a, b])
    with pytest.raises(ChatRefused, match="admin"):
        chat.apply_update(state, by_bob)
    v2 = chat.make_update(ALICE, ROOM, 2, "eng", [a], [b])
    v3 = chat.make_update(ALICE, ROOM, 3, "eng", [a], [b, c])
    with pytest.raises(ChatRefused, match="does not follow"):
        chat.apply_update(state, v3)
    with pytest.raises(ChatRefused, match="does not follow"):
        chat.apply_update(chat.apply_update(state, v2), v2)  # a replay
    new, applied = chat.apply_chain(state, [v3, by_bob, v2, v2])
    assert applied == [v2, v3] and new is not None and new.version == 3
    # A tampered signature stops the chain where it is.
    bad = msgspec.structs.replace(v2, members=(a, b, c))
    new, applied = chat.apply_chain(state, [bad, v3])
    assert applied == [] and new == state
    # Someone creating the room in another's name.
    fake = msgspec.structs.replace(chat.make_update(BOB, ROOM, 1, "eng", [a], []), signer=a)
    with pytest.raises(ChatRefused, match="signature"):
        chat.apply_update(None, fake)
    with pytest.raises(ChatRefused, match="at most"):
        chat.make_update(ALICE, ROOM, 1, "big", [a], [os.urandom(32) for _ in range(300)])


# ------------------------------------------------------------- ordering

SENDERS = [bytes([i]) * 32 for i in range(3)]
NOW = 1_800_000_000_000
YEAR_MS = 365 * 24 * 3600 * 1000


@st.composite
def conversations(draw: st.DrawFn) -> list[tuple[bytes, int, int, int]]:
    """Messages (sender, seq, sent_at, received_at): some clocks far ahead or behind."""
    out = []
    for sender in SENDERS:
        offset = draw(st.sampled_from([0, 0, YEAR_MS * 50, -YEAR_MS, 3_000]))
        t = NOW + draw(st.integers(0, 300_000))
        for seq in range(1, draw(st.integers(0, 8)) + 1):
            t += draw(st.integers(-2_000, 5_000))  # clocks can go backwards
            received = t + draw(st.integers(0, 500))
            out.append((sender, seq, t + offset, received))
    return out


@settings(max_examples=200)
@given(conversations(), st.randoms(use_true_random=False))
def test_ordering_rule(messages: list[tuple[bytes, int, int, int]], rnd: random.Random) -> None:
    shuffled = list(messages)
    rnd.shuffle(shuffled)
    timeline = chat.Timeline()
    for m in shuffled:
        timeline.insert(*m)
    order = timeline.order()
    # Arrival order does not matter.
    again = chat.Timeline()
    for m in messages:
        again.insert(*m)
    assert [p.key() for p in again.order()] == [p.key() for p in order]
    # Each sender's messages appear in seq order.
    for sender in SENDERS:
        seqs = [p.seq for p in order if p.sender == sender]
        assert seqs == sorted(seqs)
    # A clock far in the future cannot put a message beyond its arrival + the skew
    # (the arrival of an earlier message of the same sender, at the latest).
    for p in order:
        latest_arrival = max(q.received_at for q in order
                             if q.sender == p.sender and q.seq <= p.seq)
        assert p.order_at <= latest_arrival + chat.MAX_FUTURE_SKEW_MS
    # So a message sent (by a sane clock) after that bound sorts after p, however far
    # ahead p's sender's clock is: a future clock cannot bury what is said later.
    for p in order:
        bound = max(q.received_at for q in order
                    if q.sender == p.sender and q.seq <= p.seq) + chat.MAX_FUTURE_SKEW_MS
        for q in order:
            if bound < q.sent_at <= q.received_at + chat.MAX_FUTURE_SKEW_MS:
                assert p.key() < q.key()


def test_a_future_clock_does_not_bury_later_messages() -> None:
    timeline = chat.Timeline()
    liar, honest = SENDERS[0], SENDERS[1]
    timeline.insert(liar, 1, NOW + 50 * YEAR_MS, NOW)
    timeline.insert(honest, 1, NOW + 1_000, NOW + 1_000)
    timeline.insert(honest, 2, NOW + 120_000, NOW + 120_000)
    order = [(p.sender, p.seq) for p in timeline.order()]
    # The liar's message sorts at most a minute after it arrived, not in 50 years.
    assert order == [(honest, 1), (liar, 1), (honest, 2)]


def test_seq_order_holds_when_the_clock_goes_back_and_a_gap_fills_late() -> None:
    timeline = chat.Timeline()
    s = SENDERS[0]
    timeline.insert(s, 3, NOW - 5_000, NOW + 10)
    timeline.insert(s, 1, NOW, NOW + 20)
    changed = timeline.insert(s, 2, NOW + 100, NOW + 30)
    assert [p.seq for p in changed] == [2, 3]  # seq 3 rose to stay after seq 2
    assert [p.seq for p in timeline.order()] == [1, 2, 3]


def test_hybrid_clock_and_contiguous_high() -> None:
    assert chat.next_sent_at(100, 50) == 100
    assert chat.next_sent_at(100, 500) == 501
    assert chat.contiguous_high([]) == 0
    assert chat.contiguous_high([1, 2, 3, 5]) == 3
    assert chat.contiguous_high([2, 3]) == 0


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(1, 50))
def test_splitter_whole_or_in_pieces(frames: list[bytes], piece: int) -> None:
    stream = b"".join(len(f).to_bytes(4, "big") + f for f in frames)
    whole = chat.FrameSplitter(1000)
    assert whole.feed(stream) == frames and whole.pending == 0
    split = chat.FrameSplitter(1000)
    got = []
    for i in range(0, len(stream), piece):
        got.extend(split.feed(stream[i : i + piece]))
    assert got == frames and split.pending == 0


def test_splitter_refuses_a_frame_over_the_limit_before_buffering_it() -> None:
    splitter = chat.FrameSplitter(100)
    with pytest.raises(MessageError, match="limit"):
        splitter.feed((101).to_bytes(4, "big"))


@given(st.lists(st.integers(0, 2**48 - 1), min_size=2, max_size=20, unique=True))
def test_message_ids_sort_by_their_time(times: list[int]) -> None:
    # Ids are index keys: ids made later must sort after earlier ones (appended, not
    # scattered over the index), whatever their random part.
    ids = {t: chat.message_id(t, os.urandom(chat.ID_RANDOM)) for t in times}
    assert sorted(ids.values()) == [ids[t] for t in sorted(times)]
    assert all(len(i) == chat.ID_LEN and i[:6] == t.to_bytes(6, "big") for t, i in ids.items())


def test_message_ids_differ_within_a_millisecond_and_need_a_full_nonce() -> None:
    ids = {chat.message_id(1_800_000_000_000, os.urandom(chat.ID_RANDOM)) for _ in range(1000)}
    assert len(ids) == 1000
    with pytest.raises(ValueError, match="10 bytes"):
        chat.message_id(1, b"short")
