"""Chat in the node's database: messages, search, rooms, the outbox and receipts.

Sync methods, run on the database thread (`Database.run`). Methods that take a
list write it in one transaction: the chat service hands them batches, which is
how a busy conversation stays at thousands of messages a second.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from sidedoor.errors import ChatError, ContactError
from sidedoor.proto import chat as wire
from sidedoor.proto.chat import Message, RoomState, RoomUpdate
from sidedoor.services.contacts import ContactBook
from sidedoor.storage.db import Database, insert_rows

T = TypeVar("T")
MAX_PAGE = 1000


# msgspec structs rather than frozen dataclasses: one of each is made per message sent or
# received, and a frozen dataclass takes some 20 times longer to build.
class StoredMessage(msgspec.Struct, frozen=True):
    id: bytes
    conversation: bytes
    sender: bytes
    sender_name: str | None
    seq: int
    sent_at: int
    received_at: int
    order_at: int
    text: str
    reply_to: bytes | None
    attachments: tuple[bytes, ...]
    mine: bool
    state: str
    error: str | None
    signature: bytes | None = None

    @property
    def kind(self) -> str:
        return "room" if len(self.conversation) == wire.ID_LEN else "direct"

    def wire(self) -> Message:
        return Message(self.id, self.sender, self.conversation, self.seq, self.sent_at,
                       self.text, self.reply_to or b"", self.attachments,
                       self.signature or b"")


class OutItem(msgspec.Struct, frozen=True):
    peer: bytes
    ref: bytes
    frame: bytes
    room: bytes | None
    mailed: bool


# A peer's answers to record: (peer, ids it stored, (id, reason) it refused).
Settle = tuple[bytes, list[bytes], list[tuple[bytes, str]]]
# What they settled: (id, conversation) of our messages delivered, and of those refused.
Settled = tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]


@dataclass(frozen=True)
class Room:
    state: RoomState
    status: str  # active | left | removed


_MSG_COLUMNS = ("m.id, m.conversation, m.sender, c.petname, m.seq, m.sent_at, m.received_at, "
                "m.order_at, m.text, m.reply_to, m.attachments, m.mine, m.state, m.error, "
                "m.signature")
_MSG_FROM = "chat_messages m LEFT JOIN contacts c ON c.identity = m.sender"
_attachments = msgspec.msgpack.Decoder(tuple[bytes, ...])


_INSERT_INCOMING = ("INSERT INTO chat_messages (id, conversation, sender, seq, sent_at, "
                    "received_at, order_at, text, reply_to, attachments, signature, mine, "
                    "state)")
_INCOMING_ROW = "(?,?,?,?,?,?,?,?,?,?,?,0,'unread')"


def _incoming_row(msg: Message, conv: bytes, now: int, order_at: int) -> tuple[Any, ...]:
    """The values of `_INCOMING_ROW` for a message from someone else."""
    return (msg.id, conv, msg.sender, msg.seq, msg.sent_at, now, order_at, msg.text,
            msg.reply_to or None,
            wire._encoder.encode(msg.attachments) if msg.attachments else None,
            msg.signature or None)


def _message(row: tuple[Any, ...]) -> StoredMessage:
    return StoredMessage(
        bytes(row[0]), bytes(row[1]), bytes(row[2]), row[3], row[4], row[5], row[6], row[7],
        row[8], bytes(row[9]) if row[9] else None,
        _attachments.decode(row[10]) if row[10] else (), bool(row[11]), row[12], row[13],
        bytes(row[14]) if row[14] else None)


class ChatStore:
    def __init__(self, db: Database, me: bytes) -> None:
        self.db = db
        self.me = me
        # (conversation, sender) -> (highest seq stored, its order_at): a message that
        # comes next in its sender's order needs no look-back and moves nothing.
        self._tips: dict[tuple[bytes, bytes], tuple[int, int]] = {}

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self.db.call(fn)

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # ---------------------------------------------------------- conversations
    def clock(self, conversation: bytes) -> tuple[int, int]:
        """(our next seq, the newest order_at) in ``conversation``."""
        row = self._call(lambda c: c.execute(
            "SELECT next_seq, newest_at FROM chat_conversations WHERE id = ?",
            (conversation,)).fetchone())
        return (1, 0) if row is None else (int(row[0]), int(row[1]))

    def resolve(self, book: ContactBook, who: str) -> tuple[bytes, str]:
        """A conversation by what a user types: a contact, a room name (``#eng``), a room id."""
        text = who.strip()
        rooms = self.rooms()
        if text.startswith("#"):
            found = [r for r in rooms if r.state.name.lower() == text[1:].lower()]
        else:
            found = [r for r in rooms if r.state.name.lower() == text.lower()
                     or r.state.room.hex() == text.lower()]
        if not text.startswith("#"):
            try:
                contact = book.resolve(text)
            except ContactError:
                if not found:
                    raise ContactError(
                        f"no contact or room matches {who!r}; `sidedoor contacts` and "
                        "`sidedoor rooms` list them") from None
            else:
                if not found:
                    return contact.identity, "direct"
                raise ChatError(f"{who!r} is both a contact and a room: write #{text} for "
                                "the room, or the contact's address")
        if not found:
            raise ChatError(f"no room called {text.lstrip('#')!r}; `sidedoor rooms` lists them")
        active = [r for r in found if r.status == "active"] or found
        if len(active) > 1:
            raise ChatError(f"several rooms are called {text!r}; use the room id "
                            "(`sidedoor rooms --json`)")
        return active[0].state.room, "room"

    # --------------------------------------------------------------- sending
    def store_outgoing(self, items: list[tuple[Message, list[tuple[bytes, bytes]]]],
                       now: int) -> None:
        """Our messages, and their frames for each recipient's outbox, in one transaction."""
        self.write(items, [], now)

    def write(self, items: list[tuple[Message, list[tuple[bytes, bytes]]]],
              settles: list[Settle], now: int) -> list[Settled]:
        """`store_outgoing` and `settle` in one transaction (group commit: a burst of
        messages costs one commit for what was sent and what was answered). Returns
        what each of ``settles`` settled, in order."""
        def run(conn: sqlite3.Connection) -> list[Settled]:
            with self._transaction(conn):
                if items:
                    self._store_outgoing(conn, items, now)
                return [self._settle(conn, peer, stored, refused, now)
                        for peer, stored, refused in settles]
        return self._call(run)

    def _store_outgoing(self, conn: sqlite3.Connection,
                        items: list[tuple[Message, list[tuple[bytes, bytes]]]], now: int) -> None:
        clocks: dict[bytes, tuple[int, int]] = {}
        for msg, _ in items:
            seq, newest = clocks.get(msg.to, (0, 0))
            clocks[msg.to] = (max(seq, msg.seq + 1), max(newest, msg.sent_at))
        insert_rows(
            conn, "INSERT INTO chat_messages (id, conversation, sender, seq, sent_at, "
            "received_at, order_at, text, reply_to, attachments, signature, mine, "
            "state)", "(?,?,?,?,?,?,?,?,?,?,?,1,?)",
            [(msg.id, msg.to, msg.sender, msg.seq, msg.sent_at, now, msg.sent_at,
              msg.text, msg.reply_to or None,
              wire._encoder.encode(msg.attachments) if msg.attachments else None,
              msg.signature or None, "pending" if outbox else "sent")
             for msg, outbox in items])
        conn.executemany(
            "INSERT INTO chat_conversations (id, kind, next_seq, newest_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
            "next_seq = max(next_seq, excluded.next_seq), "
            "newest_at = max(newest_at, excluded.newest_at)",
            [(conv, "room" if len(conv) == wire.ID_LEN else "direct", seq, newest)
             for conv, (seq, newest) in clocks.items()])
        # A direct message waits as itself (state pending); a room message waits
        # once per member, in the outbox.
        rows = [(peer, msg.id, msg.to, frame, now)
                for msg, outbox in items if msg.is_room for peer, frame in outbox]
        if rows:
            conn.executemany(
                "INSERT OR IGNORE INTO chat_outbox (peer, ref, room, frame, "
                "created_at) VALUES (?, ?, ?, ?, ?)", rows)

    def queue(self, items: list[tuple[bytes, bytes, bytes | None, bytes]], now: int) -> None:
        """Other frames for the outbox: (peer, ref, room, frame)."""
        self._call(lambda c: c.executemany(
            "INSERT OR IGNORE INTO chat_outbox (peer, ref, room, frame, created_at) "
            "VALUES (?, ?, ?, ?, ?)", [(*item, now) for item in items]))

    def outbox(self, peer: bytes, limit: int = 500) -> list[OutItem]:
        """What waits for ``peer``: our direct messages to it first, then other frames."""
        def run(conn: sqlite3.Connection) -> list[OutItem]:
            direct = [_message(r) for r in conn.execute(
                f"SELECT {_MSG_COLUMNS} FROM {_MSG_FROM} WHERE m.conversation = ? AND "
                "m.mine = 1 AND m.state IN ('pending', 'mailed') ORDER BY m.seq LIMIT ?",
                (peer, limit))]
            items = [OutItem(peer, m.id, wire.encode(m.wire()), None, m.state == "mailed")
                     for m in direct]
            items.extend(
                OutItem(bytes(r[0]), bytes(r[1]), bytes(r[2]), bytes(r[3]) if r[3] else None,
                        bool(r[4])) for r in conn.execute(
                    "SELECT peer, ref, frame, room, mailed FROM chat_outbox WHERE peer = ? "
                    "ORDER BY created_at, rowid LIMIT ?", (peer, limit - len(items))))
            return items
        return self._call(run)

    def outbox_peers(self) -> list[bytes]:
        return sorted({bytes(r[0]) for r in self._call(lambda c: c.execute(
            "SELECT DISTINCT peer FROM chat_outbox UNION SELECT DISTINCT conversation FROM "
            "chat_messages WHERE mine = 1 AND state IN ('pending', 'mailed') "
            "AND length(conversation) = 32").fetchall())})

    def mark_mailed(self, peer: bytes, refs: list[bytes]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with self._transaction(conn):
                conn.executemany("UPDATE chat_outbox SET mailed = 1 WHERE peer = ? AND ref = ?",
                                 [(peer, ref) for ref in refs])
                conn.executemany("UPDATE chat_messages SET state = 'mailed' WHERE id = ? AND "
                                 "conversation = ? AND mine = 1 AND state = 'pending'",
                                 [(ref, peer) for ref in refs])
        self._call(run)

    def settle(self, peer: bytes, stored: list[bytes], refused: list[tuple[bytes, str]],
               now: int) -> Settled:
        """The peer answered: drop those frames from its outbox and record what happened
        to our messages among them. Returns (id, conversation) of our messages now
        delivered, and of those refused."""
        (settled,) = self.write([], [(peer, stored, refused)], now)
        return settled

    def _settle(self, conn: sqlite3.Connection, peer: bytes, stored: list[bytes],
                refused: list[tuple[bytes, str]], now: int) -> Settled:
        # The usual answer is "stored" for our direct messages to this peer: they are
        # marked delivered by one statement, and when it changed every one of them
        # nothing needs looking up. (``+conversation``: the id index finds the rows;
        # with hundreds of ids the planner would otherwise walk the conversation.)
        delivered: list[tuple[bytes, bytes]] = []
        for i in range(0, len(stored), 500):
            chunk = stored[i : i + 500]
            cur = conn.execute(
                "UPDATE chat_messages SET state = 'delivered' WHERE +conversation = ? AND "
                "mine = 1 AND state IN ('pending', 'mailed', 'sent') AND "
                f"id IN ({','.join('?' * len(chunk))})", [peer, *chunk])
            if cur.rowcount == len(chunk):
                delivered.extend((ref, peer) for ref in chunk)
            else:
                # Room messages, other frames, direct messages told twice.
                delivered.extend(self._ours(conn, peer, chunk))
        reasons = dict(refused)
        failed = self._ours(conn, peer, list(reasons)) if reasons else []
        # Our direct messages wait as themselves, never in chat_outbox: only the other
        # frames (room messages, receipts, room updates) have a row there to drop.
        direct = {mid for mid, conv in (*delivered, *failed) if len(conv) == wire.KEY_LEN}
        gone = [(peer, ref) for ref in (*stored, *reasons) if ref not in direct]
        if gone:
            conn.executemany("DELETE FROM chat_outbox WHERE peer = ? AND ref = ?", gone)
        receipts = [(mid, peer, "delivered", now) for mid, conv in delivered
                    if len(conv) == wire.ID_LEN]
        if receipts:
            conn.executemany("INSERT OR IGNORE INTO chat_receipts VALUES (?, ?, ?, ?)",
                             receipts)
        if failed:
            conn.executemany(
                "UPDATE chat_messages SET state = 'failed', error = ? WHERE id = ?",
                [(reasons[mid][: wire.MAX_REASON], mid) for mid, conv in failed
                 if len(conv) == wire.KEY_LEN])
        return delivered, failed

    def _ours(self, conn: sqlite3.Connection, peer: bytes, ids: list[bytes]
              ) -> list[tuple[bytes, bytes]]:
        """(id, conversation) of those of ``ids`` that are our messages in a room or to
        ``peer``: what the peer may answer for (not our messages to someone else)."""
        found: list[tuple[bytes, bytes]] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            found.extend((bytes(r[0]), bytes(r[1])) for r in conn.execute(
                "SELECT id, conversation FROM chat_messages WHERE mine = 1 AND id IN "
                f"({','.join('?' * len(chunk))}) AND (length(conversation) = ? "
                "OR conversation = ?)", [*chunk, wire.ID_LEN, peer]))
        return found

    def _mine(self, conn: sqlite3.Connection, ids: list[bytes]) -> list[StoredMessage]:
        found: list[StoredMessage] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            found.extend(_message(r) for r in conn.execute(
                f"SELECT {_MSG_COLUMNS} FROM {_MSG_FROM} WHERE m.mine = 1 AND m.id IN ({marks})",
                chunk).fetchall())
        return found

    # ------------------------------------------------------------- receiving
    def store_incoming(self, messages: list[tuple[Message, bytes]], now: int
                       ) -> list[StoredMessage]:
        """Messages from others, (message, conversation); returns the ones that are new.

        order_at follows the rule in `sidedoor.proto.chat`: clamp the sender's clock to
        arrival + skew, never below the same sender's earlier messages, and raise the
        sender's later messages that would fall below this one.
        """
        def run(conn: sqlite3.Connection) -> list[StoredMessage]:
            new: list[tuple[Message, bytes, int]] = []
            newest: dict[bytes, int] = {}
            tips = dict(self._tips)
            try:
                return _store(conn, newest, new)
            except BaseException:
                self._tips = tips  # rolled back: so is what we learnt
                raise

        def _store(conn: sqlite3.Connection, newest: dict[bytes, int],
                   new: list[tuple[Message, bytes, int]]) -> list[StoredMessage]:
            with self._transaction(conn):
                if len(messages) > 1 and self._store_in_order(conn, messages, now, newest,
                                                              new):
                    messages_left: list[tuple[Message, bytes]] = []
                else:
                    messages_left = messages
                for msg, conv in messages_left:
                    key = (conv, msg.sender)
                    tip = self._tip(conn, key)
                    effective = wire.effective_time(msg.sent_at, now)
                    late = msg.seq <= tip[0]
                    if not late:
                        order_at = max(effective, tip[1])
                    else:
                        # A gap filled late: order_at never falls as seq grows, so the
                        # floor is the previous seq's, and later ones may have to rise.
                        row = conn.execute(
                            "SELECT order_at FROM chat_messages INDEXED BY chat_messages_sender "
                            "WHERE conversation = ? AND sender = ? AND seq < ? "
                            "ORDER BY seq DESC LIMIT 1", (conv, msg.sender, msg.seq)).fetchone()
                        order_at = max(effective, row[0] if row else 0)
                    # A duplicate id (seen before, or twice in this batch) inserts nothing:
                    # deduplication without a look-up first.
                    if not conn.execute(
                            f"{_INSERT_INCOMING} VALUES {_INCOMING_ROW} "
                            "ON CONFLICT (id) DO NOTHING",
                            _incoming_row(msg, conv, now, order_at)).rowcount:
                        continue
                    if late:
                        conn.execute(
                            "UPDATE chat_messages INDEXED BY chat_messages_sender "
                            "SET order_at = ? WHERE conversation = ? AND sender = ? "
                            "AND seq > ? AND order_at < ?",
                            (order_at, conv, msg.sender, msg.seq, order_at))
                        tip = (tip[0], max(tip[1], order_at))
                    else:
                        tip = (msg.seq, order_at)
                    if len(self._tips) > 10_000:
                        self._tips.clear()
                    self._tips[key] = tip
                    newest[conv] = max(newest.get(conv, 0), order_at)
                    new.append((msg, conv, order_at))
                if newest:
                    conn.executemany(
                        "INSERT INTO chat_conversations (id, kind, newest_at) VALUES (?, ?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET "
                        "newest_at = max(newest_at, excluded.newest_at)",
                        [(conv, "room" if len(conv) == wire.ID_LEN else "direct", at)
                         for conv, at in newest.items()])
            senders = list({msg.sender for msg, _, _ in new})
            names = dict(conn.execute(
                "SELECT identity, petname FROM contacts WHERE identity IN "
                f"({','.join('?' * len(senders))})", senders).fetchall()) if senders else {}
            return [StoredMessage(
                msg.id, conv, msg.sender, names.get(msg.sender), msg.seq, msg.sent_at, now,
                order_at, msg.text, msg.reply_to or None, msg.attachments, False, "unread",
                None, msg.signature or None) for msg, conv, order_at in new]
        return self._call(run)

    def _tip(self, conn: sqlite3.Connection, key: tuple[bytes, bytes]) -> tuple[int, int]:
        """(highest seq stored, its order_at) of a (conversation, sender); (0, 0) if none."""
        tip = self._tips.get(key)
        if tip is None:
            row = conn.execute(
                "SELECT seq, order_at FROM chat_messages INDEXED BY chat_messages_sender "
                "WHERE conversation = ? AND sender = ? ORDER BY seq DESC LIMIT 1",
                key).fetchone()
            tip = (row[0], row[1]) if row else (0, 0)
        return tip

    def _store_in_order(self, conn: sqlite3.Connection, messages: list[tuple[Message, bytes]],
                        now: int, newest: dict[bytes, int],
                        new: list[tuple[Message, bytes, int]]) -> bool:
        """The usual batch, every message the next of its sender's and none seen before,
        inserted many rows a statement; False (and nothing written) if it is not that.

        Why: one INSERT a message, run on the database thread, takes the GIL back once
        a message, and waits its turn each time while the event loop decodes the next
        batch. The general path (`store_incoming`) handles gaps filled late and
        duplicates, one message at a time."""
        tips: dict[tuple[bytes, bytes], tuple[int, int]] = {}
        rows: list[tuple[Any, ...]] = []
        placed: list[tuple[Message, bytes, int]] = []
        for msg, conv in messages:
            key = (conv, msg.sender)
            tip = tips.get(key) or self._tip(conn, key)
            if msg.seq <= tip[0]:
                return False  # late, or told twice
            order_at = max(wire.effective_time(msg.sent_at, now), tip[1])
            tips[key] = (msg.seq, order_at)
            rows.append(_incoming_row(msg, conv, now, order_at))
            placed.append((msg, conv, order_at))
        conn.execute("SAVEPOINT in_order")
        inserted = insert_rows(conn, _INSERT_INCOMING, _INCOMING_ROW, rows,
                               "ON CONFLICT (id) DO NOTHING")
        if inserted != len(rows):
            # An id seen before under another place: the general path sorts it out.
            conn.execute("ROLLBACK TO in_order")
            conn.execute("RELEASE in_order")
            return False
        conn.execute("RELEASE in_order")
        if len(self._tips) + len(tips) > 10_000:
            self._tips.clear()
        self._tips.update(tips)
        for _, conv, order_at in placed:
            newest[conv] = max(newest.get(conv, 0), order_at)
        new.extend(placed)
        return True

    def apply_receipt(self, peer: bytes, receipt: wire.Receipt, now: int) -> list[bytes]:
        """A peer says it got or read our messages; returns the ids whose state changed."""
        def run(conn: sqlite3.Connection) -> list[bytes]:
            changed: list[bytes] = []
            rank = {"pending": 0, "mailed": 0, "sent": 0, "delivered": 1, "read": 2}
            with self._transaction(conn):
                for m in self._mine(conn, list(receipt.messages)):
                    if m.kind == "direct":
                        if m.conversation != peer:
                            continue  # about messages to someone else: not theirs to say
                        if rank.get(m.state, 3) < rank[receipt.state]:
                            conn.execute("UPDATE chat_messages SET state = ? WHERE id = ?",
                                         (receipt.state, m.id))
                            changed.append(m.id)
                    elif m.conversation == receipt.conversation:
                        # It arrived some other way (mail, a member): nothing left to send.
                        conn.execute("DELETE FROM chat_outbox WHERE peer = ? AND ref = ?",
                                     (peer, m.id))
                        cur = conn.execute(
                            "INSERT INTO chat_receipts VALUES (?, ?, ?, ?) "
                            "ON CONFLICT(message, member) DO UPDATE SET state = excluded.state, "
                            "at = excluded.at WHERE state = 'delivered'",
                            (m.id, peer, receipt.state, now))
                        if cur.rowcount:
                            changed.append(m.id)
            return changed
        return self._call(run)

    def mark_read(self, conversation: bytes) -> dict[bytes, list[bytes]]:
        """Mark every unread message of ``conversation`` read; their ids by sender."""
        def run(conn: sqlite3.Connection) -> dict[bytes, list[bytes]]:
            with self._transaction(conn):
                rows = conn.execute(
                    "SELECT id, sender FROM chat_messages WHERE conversation = ? AND mine = 0 "
                    "AND state = 'unread'", (conversation,)).fetchall()
                conn.execute("UPDATE chat_messages SET state = 'read' WHERE conversation = ? "
                             "AND mine = 0 AND state = 'unread'", (conversation,))
            by_sender: dict[bytes, list[bytes]] = {}
            for mid, sender in rows:
                by_sender.setdefault(bytes(sender), []).append(bytes(mid))
            return by_sender
        return self._call(run)

    # --------------------------------------------------------------- reading
    def history(self, conversation: bytes, *, since: int = 0, before: int | None = None,
                limit: int = 200) -> list[StoredMessage]:
        """The newest ``limit`` messages after ``since`` (and before ``before``), oldest first."""
        limit = max(1, min(limit, MAX_PAGE))
        rows = self._call(lambda c: c.execute(
            f"SELECT {_MSG_COLUMNS} FROM {_MSG_FROM} WHERE m.conversation = ? "
            "AND m.order_at >= ? AND m.order_at < ? "
            "ORDER BY m.order_at DESC, m.sender DESC, m.seq DESC LIMIT ?",
            (conversation, since, before if before is not None else 2**62, limit)).fetchall())
        return [_message(r) for r in reversed(rows)]

    def message(self, mid: bytes) -> StoredMessage | None:
        row = self._call(lambda c: c.execute(
            f"SELECT {_MSG_COLUMNS} FROM {_MSG_FROM} WHERE m.id = ?", (mid,)).fetchone())
        return None if row is None else _message(row)

    def index(self) -> int:
        """Add the messages stored since the last call to the search index; how many."""
        def run(conn: sqlite3.Connection) -> int:
            with self._transaction(conn):
                (done,) = conn.execute(
                    "SELECT indexed_rowid FROM chat_search_state WHERE id = 1").fetchone()
                (last,) = conn.execute("SELECT coalesce(max(rowid), 0) FROM chat_messages"
                                       ).fetchone()
                if last <= done:
                    return 0
                conn.execute("INSERT INTO chat_search (rowid, text) SELECT rowid, text "
                             "FROM chat_messages WHERE rowid > ? AND rowid <= ?", (done, last))
                conn.execute("UPDATE chat_search_state SET indexed_rowid = ? WHERE id = 1",
                             (last,))
                return int(last - done)
        return self._call(run)

    def search(self, query: str, limit: int = 50) -> list[StoredMessage]:
        """Full-text search (FTS5) over every conversation; the words are matched as words."""
        terms = [t for t in query.replace('"', " ").split() if t]
        if not terms:
            raise ChatError("give some words to search for")
        self.index()
        match = " ".join(f'"{t}"' for t in terms)
        rows = self._call(lambda c: c.execute(
            f"SELECT {_MSG_COLUMNS} FROM chat_search s JOIN chat_messages m "
            "ON m.rowid = s.rowid LEFT JOIN contacts c ON c.identity = m.sender "
            "WHERE chat_search MATCH ? ORDER BY m.order_at DESC LIMIT ?",
            (match, max(1, min(limit, MAX_PAGE)))).fetchall())
        return [_message(r) for r in rows]

    def receipts(self, ids: list[bytes]) -> dict[bytes, dict[bytes, str]]:
        def run(conn: sqlite3.Connection) -> dict[bytes, dict[bytes, str]]:
            out: dict[bytes, dict[bytes, str]] = {}
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                for mid, member, state in conn.execute(
                        "SELECT message, member, state FROM chat_receipts WHERE message IN "
                        f"({','.join('?' * len(chunk))})", chunk):
                    out.setdefault(bytes(mid), {})[bytes(member)] = state
            return out
        return self._call(run)

    def conversations(self) -> list[dict[str, Any]]:
        """Every conversation with its unread count and newest message time."""
        rows = self._call(lambda c: c.execute(
            "SELECT v.id, v.kind, v.newest_at, "
            "(SELECT count(*) FROM chat_messages m WHERE m.conversation = v.id AND m.mine = 0 "
            " AND m.state = 'unread'), "
            "(SELECT count(*) FROM chat_messages m WHERE m.conversation = v.id) "
            "FROM chat_conversations v ORDER BY v.newest_at DESC").fetchall())
        return [{"id": bytes(r[0]), "kind": r[1], "newest_at": r[2], "unread": r[3],
                 "messages": r[4]} for r in rows]

    # ----------------------------------------------------------------- rooms
    def rooms(self) -> list[Room]:
        def run(conn: sqlite3.Connection) -> list[Room]:
            rooms = []
            for rid, name, version, status in conn.execute(
                    "SELECT id, name, version, status FROM chat_rooms ORDER BY name, id"):
                members = conn.execute("SELECT member, admin FROM chat_room_members "
                                       "WHERE room = ?", (rid,)).fetchall()
                rooms.append(Room(RoomState(
                    bytes(rid), version, name,
                    frozenset(bytes(m) for m, a in members if a),
                    frozenset(bytes(m) for m, _ in members)), status))
            return rooms
        return self._call(run)

    def save_room(self, state: RoomState, updates: Iterable[RoomUpdate], status: str,
                  now: float) -> None:
        """The room at ``state``, after the ``updates`` (appended to its chain)."""
        def run(conn: sqlite3.Connection) -> None:
            with self._transaction(conn):
                conn.execute(
                    "INSERT INTO chat_rooms (id, name, version, status, created_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET name = excluded.name, "
                    "version = excluded.version, status = excluded.status",
                    (state.room, state.name, state.version, status, now))
                conn.execute("DELETE FROM chat_room_members WHERE room = ?", (state.room,))
                conn.executemany("INSERT INTO chat_room_members VALUES (?, ?, ?)",
                                 [(state.room, m, int(m in state.admins))
                                  for m in state.members])
                conn.executemany("INSERT OR IGNORE INTO chat_room_updates VALUES (?, ?, ?)",
                                 [(u.room, u.version, wire.encode(u)) for u in updates])
                conn.execute("INSERT OR IGNORE INTO chat_conversations (id, kind) "
                             "VALUES (?, 'room')", (state.room,))
                # Whoever is no longer a member gets nothing more of this room.
                gone = [r for (r,) in conn.execute(
                    "SELECT DISTINCT peer FROM chat_outbox WHERE room = ?", (state.room,))
                    if bytes(r) not in state.members]
                for peer in gone:
                    conn.execute("DELETE FROM chat_outbox WHERE room = ? AND peer = ? AND "
                                 "ref IN (SELECT id FROM chat_messages WHERE conversation = ?)",
                                 (state.room, peer, state.room))
        self._call(run)

    def set_room_status(self, room: bytes, status: str) -> None:
        self._call(lambda c: c.execute("UPDATE chat_rooms SET status = ? WHERE id = ?",
                                       (status, room)))

    def room_updates(self, room: bytes, after: int) -> list[RoomUpdate]:
        rows = self._call(lambda c: c.execute(
            "SELECT frame FROM chat_room_updates WHERE room = ? AND version > ? "
            "ORDER BY version", (room, after)).fetchall())
        found = []
        for (frame,) in rows:
            update = wire.decode(frame)
            assert isinstance(update, RoomUpdate)
            found.append(update)
        return found

    # ------------------------------------------------------------- history sync
    def have(self, room: bytes) -> list[tuple[bytes, int]]:
        """Per sender in ``room``: the highest seq below which we have every message."""
        def run(conn: sqlite3.Connection) -> list[tuple[bytes, int]]:
            seqs: dict[bytes, list[int]] = {}
            for sender, seq in conn.execute(
                    "SELECT sender, seq FROM chat_messages WHERE conversation = ? "
                    "ORDER BY sender, seq", (room,)):
                seqs.setdefault(bytes(sender), []).append(seq)
            return [(s, wire.contiguous_high(v)) for s, v in seqs.items()]
        return self._call(run)

    def missing(self, room: bytes, have: dict[bytes, int], limit: int
                ) -> tuple[list[Message], bool]:
        """Room messages the asker lacks by its ``have`` (sent order); and whether more wait."""
        def run(conn: sqlite3.Connection) -> tuple[list[Message], bool]:
            found: list[Message] = []
            senders = [bytes(r[0]) for r in conn.execute(
                "SELECT DISTINCT sender FROM chat_messages WHERE conversation = ?", (room,))]
            for sender in senders:
                rows = conn.execute(
                    f"SELECT {_MSG_COLUMNS} FROM {_MSG_FROM} WHERE m.conversation = ? AND "
                    "m.sender = ? AND m.seq > ? AND m.signature IS NOT NULL ORDER BY m.seq "
                    "LIMIT ?", (room, sender, have.get(sender, 0), limit - len(found) + 1)
                ).fetchall()
                for row in rows:
                    if len(found) == limit:
                        return found, True
                    found.append(_message(row).wire())
            return found, False
        return self._call(run)
