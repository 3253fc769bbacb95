"""The database keeps the ordering rule of `sidedoor.proto.chat` (checked against the
in-memory `Timeline`), deduplicates, and searches."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sidedoor.proto import chat as wire
from sidedoor.services.chat_store import ChatStore
from sidedoor.storage.db import Database

ME = b"\x00" * 32
PEER = b"\x01" * 32
OTHER = b"\x02" * 32
SENDERS = [bytes([i]) * 32 for i in (1, 2, 3)]
ROOM = b"r" * 16
NOW = 1_800_000_000_000


@st.composite
def arrivals(draw: st.DrawFn) -> list[tuple[bytes, int, int, int]]:
    """(sender, seq, sent_at, received_at), in the order they arrive."""
    out = []
    for sender in SENDERS:
        skew = draw(st.sampled_from([0, 0, 10**12, -10**9, 90_000]))
        t = NOW + draw(st.integers(0, 200_000))
        for seq in range(1, draw(st.integers(0, 6)) + 1):
            t += draw(st.integers(-3_000, 5_000))
            out.append((sender, seq, t + skew, t + draw(st.integers(0, 100_000))))
    return draw(st.permutations(out))


@settings(max_examples=40, deadline=None)
@given(arrivals())
def test_stored_order_matches_the_rule(messages: list[tuple[bytes, int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(Path(tmp))
        try:
            store = ChatStore(db, ME)
            timeline = wire.Timeline()
            batch: list[tuple[wire.Message, bytes]] = []
            for sender, seq, sent_at, received_at in messages:
                timeline.insert(sender, seq, sent_at, received_at)
                msg = wire.Message(os.urandom(16), sender, ROOM, seq, sent_at, f"m{seq}")
                # Arrival times are the store's `now`: one call per arrival time.
                store.store_incoming([(msg, ROOM)], received_at)
                batch.append((msg, ROOM))
            stored = [(m.sender, m.seq, m.order_at) for m in store.history(ROOM, limit=1000)]
            assert stored == [(p.sender, p.seq, p.order_at) for p in timeline.order()]
            # The same messages again (one batch, and each one twice in a batch): nothing
            # new, and nothing moves; duplicates insert nothing and touch no other row.
            assert store.store_incoming(batch, NOW) == []
            for dup in batch:
                assert store.store_incoming([dup, dup], NOW + 10**9) == []
            again = [(m.sender, m.seq, m.order_at) for m in store.history(ROOM, limit=1000)]
            assert again == stored
        finally:
            db.close()


@settings(max_examples=40, deadline=None)
@given(arrivals(), st.lists(st.integers(1, 6), min_size=1, max_size=20))
def test_batches_keep_the_rule_and_store_each_message_once(
        messages: list[tuple[bytes, int, int, int]], cuts: list[int]) -> None:
    # Batches as a busy channel delivers them: in order (stored many rows a statement),
    # or with a gap filled late or a message told twice (one at a time).
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(Path(tmp))
        try:
            store = ChatStore(db, ME)
            timeline = wire.Timeline()
            msgs = [(wire.Message(os.urandom(16), sender, ROOM, seq, sent_at, f"m{seq}"), at)
                    for sender, seq, sent_at, at in messages]
            pos, turn = 0, 0
            while pos < len(msgs):
                batch = msgs[pos : pos + cuts[turn % len(cuts)]]
                pos, turn = pos + len(batch), turn + 1
                now = batch[0][1]
                for msg, _ in batch:
                    timeline.insert(msg.sender, msg.seq, msg.sent_at, now)
                again = [batch[0]] if turn % 3 == 0 else []  # told twice in one batch
                new = store.store_incoming([(m, ROOM) for m, _ in batch + again], now)
                assert sorted(m.id for m in new) == sorted(m.id for m, _ in batch)
            stored = [(m.sender, m.seq, m.order_at) for m in store.history(ROOM, limit=1000)]
            assert stored == [(p.sender, p.seq, p.order_at) for p in timeline.order()]
            assert store.store_incoming([(m, ROOM) for m, _ in msgs], NOW) == []
        finally:
            db.close()


def test_an_old_id_under_a_new_place_is_not_stored_again(tmp_path: Path) -> None:
    db = Database(tmp_path)
    try:
        store = ChatStore(db, ME)
        first = [wire.Message(os.urandom(16), PEER, ME, seq, NOW + seq, f"m{seq}")
                 for seq in (1, 2)]
        assert len(store.store_incoming([(m, PEER) for m in first], NOW)) == 2
        # The next batch is in order, but its first message reuses an id already stored.
        forged = wire.Message(first[0].id, PEER, ME, 3, NOW + 3, "the same id again")
        fresh = wire.Message(os.urandom(16), PEER, ME, 4, NOW + 4, "m4")
        new = store.store_incoming([(forged, PEER), (fresh, PEER)], NOW)
        assert [m.id for m in new] == [fresh.id]
        assert [m.text for m in store.history(PEER)] == ["m1", "m2", "m4"]
    finally:
        db.close()


def test_search_and_batches(tmp_path: Path) -> None:
    db = Database(tmp_path)
    try:
        store = ChatStore(db, ME)
        words = ["budget", "lunch", "standup", "release"]
        msgs = [wire.Message(os.urandom(16), PEER, ME, i + 1, NOW + i,
                             f"about the {random.choice(words)} {i}") for i in range(300)]
        new = store.store_incoming([(m, PEER) for m in msgs], NOW)
        assert len(new) == 300 and all(m.sender_name is None for m in new)
        assert store.store_incoming([(msgs[5], PEER), (msgs[5], PEER)], NOW) == []
        found = store.search("Budget", limit=1000)
        assert {m.id for m in found} == {m.id for m in msgs if "budget" in m.text}
        assert store.search("nothing-like-this") == []
        later = wire.Message(os.urandom(16), PEER, ME, 301, NOW + 999, "budget again")
        store.store_incoming([(later, PEER)], NOW)
        assert later.id in {m.id for m in store.search("budget", limit=1000)}
        assert store.conversations()[0]["unread"] == 301
        assert len(store.mark_read(PEER)[PEER]) == 301
        assert store.conversations()[0]["unread"] == 0
    finally:
        db.close()


def _outgoing(store: ChatStore, to: bytes, count: int, seq: int = 1) -> list[bytes]:
    msgs = [wire.Message(wire.message_id(NOW + i, os.urandom(wire.ID_RANDOM)), ME, to,
                         seq + i, NOW + i, f"to {to[:1].hex()} {i}") for i in range(count)]
    store.store_outgoing([(m, [(to, wire.encode(m))]) for m in msgs], NOW)
    return [m.id for m in msgs]


def _states(store: ChatStore, conversation: bytes) -> list[str]:
    return [m.state for m in store.history(conversation, limit=1000)]


def test_answers_settle_only_what_the_peer_may_answer_for(tmp_path: Path) -> None:
    db = Database(tmp_path)
    try:
        store = ChatStore(db, ME)
        to_peer = _outgoing(store, PEER, 600)
        to_other = _outgoing(store, OTHER, 2)
        # The usual answer: every message of a big burst stored (one statement a chunk).
        delivered, failed = store.settle(PEER, to_peer, [], NOW)
        assert delivered == [(mid, PEER) for mid in to_peer] and failed == []
        assert _states(store, PEER) == ["delivered"] * 600
        # A peer answering for messages written to someone else changes nothing of theirs.
        delivered, failed = store.settle(PEER, [to_peer[0], to_other[0]],
                                         [(to_other[1], "no")], NOW)
        assert delivered == [(to_peer[0], PEER)] and failed == []
        assert _states(store, OTHER) == ["pending", "pending"]
        # Told twice: still reported (the answer may have been lost), still delivered.
        delivered, _ = store.settle(PEER, to_peer[:3], [], NOW)
        assert delivered == [(mid, PEER) for mid in to_peer[:3]]
        # The right peer's answers do count.
        delivered, failed = store.settle(OTHER, [to_other[0]], [(to_other[1], "too big")], NOW)
        assert delivered == [(to_other[0], OTHER)] and failed == [(to_other[1], OTHER)]
        assert _states(store, OTHER) == ["delivered", "failed"]
    finally:
        db.close()
