"""The broker's mailbox: sealed envelopes held in SQLite until their recipient takes them.

Durable (WAL, synchronous=FULL: a deposit that was acknowledged survives kill -9),
deleted only when the recipient acknowledges, expired after ``ttl``. Quotas keep one
sender from filling anyone's mailbox: a recipient holds at most ``max_count`` envelopes
and ``max_bytes``, and one sender at most a quarter of that. A recipient's allow list
(its contacts, from its last registration) is kept so deposits from anyone else are
refused while it is offline.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from sidedoor.errors import BrokerError, StorageError

SCHEMA = """
CREATE TABLE IF NOT EXISTS mail (
    id          INTEGER PRIMARY KEY,
    recipient   BLOB NOT NULL,
    sender      BLOB NOT NULL,
    envelope    BLOB NOT NULL,
    deposited   REAL NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS mail_by_recipient ON mail(recipient, id);
CREATE TABLE IF NOT EXISTS mail_allow (
    recipient   BLOB NOT NULL,
    sender      BLOB NOT NULL,
    PRIMARY KEY (recipient, sender)
) STRICT, WITHOUT ROWID;
"""


class Mailbox:
    def __init__(self, path: Path, *, max_count: int = 2000, max_bytes: int = 64 << 20,
                 ttl: float = 14 * 86400.0) -> None:
        self.max_count, self.max_bytes, self.ttl = max_count, max_bytes, ttl
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the mailbox database {path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def set_allowed(self, recipient: bytes, senders: list[bytes]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM mail_allow WHERE recipient = ?", (recipient,))
            self._db.executemany("INSERT OR IGNORE INTO mail_allow VALUES (?, ?)",
                                 [(recipient, s) for s in senders])
            self._db.execute("COMMIT")

    def deposit(self, sender: bytes, recipient: bytes, envelope: bytes, now: float) -> int:
        with self._lock:
            known = self._db.execute(
                "SELECT 1 FROM mail_allow WHERE recipient = ? AND sender = ?",
                (recipient, sender)).fetchone()
            if known is None:
                raise BrokerError("the recipient does not take mail from you at this broker")
            count, size = self._db.execute(
                "SELECT count(*), coalesce(sum(length(envelope)), 0) FROM mail "
                "WHERE recipient = ?", (recipient,)).fetchone()
            mine_count, mine_size = self._db.execute(
                "SELECT count(*), coalesce(sum(length(envelope)), 0) FROM mail "
                "WHERE recipient = ? AND sender = ?", (recipient, sender)).fetchone()
            if (count + 1 > self.max_count or size + len(envelope) > self.max_bytes
                    or mine_count + 1 > self.max_count // 4
                    or mine_size + len(envelope) > self.max_bytes // 4):
                raise BrokerError("the recipient's mailbox is full; try again when they "
                                  "have been online")
            cursor = self._db.execute(
                "INSERT INTO mail(recipient, sender, envelope, deposited) VALUES (?, ?, ?, ?)",
                (recipient, sender, envelope, now))
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def pending(self, recipient: bytes, after: int = 0, limit: int = 64
                ) -> list[tuple[int, bytes]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, envelope FROM mail WHERE recipient = ? AND id > ? ORDER BY id "
                "LIMIT ?", (recipient, after, limit)).fetchall()
        return [(int(i), bytes(e)) for i, e in rows]

    def count(self, recipient: bytes) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT count(*) FROM mail WHERE recipient = ?",
                                    (recipient,)).fetchone()
        return int(n)

    def ack(self, recipient: bytes, ids: list[int]) -> int:
        """Delete the recipient's own envelopes among ``ids``; the number deleted."""
        with self._lock:
            cursor = self._db.executemany(
                "DELETE FROM mail WHERE id = ? AND recipient = ?", [(i, recipient) for i in ids])
            return cursor.rowcount

    def expire(self, now: float) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM mail WHERE deposited < ?",
                                    (now - self.ttl,)).rowcount

    def stats(self) -> tuple[int, int]:
        with self._lock:
            count, size = self._db.execute(
                "SELECT count(*), coalesce(sum(length(envelope)), 0) FROM mail").fetchone()
        return int(count), int(size)
