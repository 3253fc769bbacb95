"""The node's one SQLite database: opening, migrations, and a single writer thread.

Schema changes are numbered files in ``schema/`` (``001-initial.sql``, ...),
applied in order inside a transaction; ``PRAGMA user_version`` records the last
one applied. The event loop hands work to the database's own thread
(`Database.run`), except short writes when that thread is idle (`run_short`);
the node's checkpoints run on a third thread (`Database._checkpoint`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from sidedoor.errors import StorageError

T = TypeVar("T")
log = logging.getLogger(__name__)
DB_FILE = "sidedoor.db"
# The event loop's calls leave checkpoints (copying the WAL into the database, then
# fsync) to a thread and connection of their own, about as often as SQLite's own
# automatic checkpoint would run (every 1000 pages; a one-message write is about 7).
CHECKPOINT_AFTER = 128  # short calls count 1, calls on the database thread 16
MAX_ROWS_A_STATEMENT = 256  # insert_rows: rows of one INSERT (parameters stay far under 32766)
_SCHEMA_NAME = re.compile(r"^(\d{3})-[a-z0-9-]+\.sql$")


def migrations() -> list[tuple[int, str]]:
    """(number, SQL) of every schema file, in order."""
    found: list[tuple[int, str]] = []
    for entry in resources.files("sidedoor.storage").joinpath("schema").iterdir():
        match = _SCHEMA_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text("utf-8")))
    found.sort()
    numbers = [n for n, _ in found]
    if numbers != list(range(1, len(numbers) + 1)):
        raise StorageError(f"schema files are not numbered 1..n without gaps: {numbers}")
    return found


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) and migrate the database at ``path``."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        _migrate(conn)
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"cannot open the database {path}: {exc}") from exc
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    (current,) = conn.execute("PRAGMA user_version").fetchone()
    all_migrations = migrations()
    if current > len(all_migrations):
        raise StorageError(
            f"the database was made by a newer sidedoor (schema {current}, this one knows "
            f"{len(all_migrations)}); update sidedoor"
        )
    for number, sql in all_migrations[current:]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # executescript would commit our transaction; run the statements one by one.
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _statements(sql: str) -> list[str]:
    statements: list[str] = []
    buf = ""
    for line in sql.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            statements.append(buf.strip())
            buf = ""
    if buf.strip():
        raise StorageError("a schema file ends with an incomplete statement")
    return statements


def insert_rows(conn: sqlite3.Connection, head: str, row: str,
                rows: list[tuple[Any, ...]], tail: str = "") -> int:
    """``head VALUES row, row, ... tail`` for every row, in a few statements; how many
    rows they inserted.

    Why not `executemany`: Python's sqlite3 lets go of the GIL around every step, so
    a statement run once per row takes the GIL back once per row; from the database
    thread, while the event loop is busy, each of those waits its turn (up to the
    interpreter's switch interval). A statement of many rows steps once. Sizes are
    powers of two, so a handful of statement texts cover every count (and stay in
    the connection's statement cache).
    """
    pos = inserted = 0
    while pos < len(rows):
        size = min(MAX_ROWS_A_STATEMENT, 1 << ((len(rows) - pos).bit_length() - 1))
        chunk = rows[pos : pos + size]
        inserted += conn.execute(f"{head} VALUES {','.join([row] * size)} {tail}",
                                 [value for r in chunk for value in r]).rowcount
        pos += size
    return inserted


class Database:
    """The node's database. Sync methods for the CLI; `run` for the event loop."""

    def __init__(self, home: Path) -> None:
        self.path = home / DB_FILE
        self.conn = connect(self.path)
        # Re-entrant: a store method may call another one while it holds the lock.
        self._lock = threading.RLock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidedoor-db")
        self._queued = 0  # calls handed to the thread and not yet answered (see run_short)
        # Set up by the first call from the event loop (`_loop_started`): the node's
        # checkpoints then run on their own thread and connection (see `_checkpoint`).
        self._checkpointer: ThreadPoolExecutor | None = None
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._checkpointing: Future[None] | None = None
        self._since_checkpoint = 0
        self._closed = False
        # What the last of them found: (busy, pages in the WAL, pages copied).
        self.last_checkpoint: tuple[int, int, int] | None = None

    def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return fn(self.conn)
            except sqlite3.Error as exc:
                raise StorageError(f"database error in {self.path}: {exc}") from exc

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one of the sync methods, ``fn(*args)``, on the database thread."""
        loop = asyncio.get_running_loop()
        self._loop_started()
        self._queued += 1
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        finally:
            self._queued -= 1
            self._wrote(16)

    async def run_short(self, fn: Callable[..., T], *args: Any) -> T:
        """Like `run`, for a call known to be short (a few rows, no scan): when the
        database is idle it runs right here on the calling thread instead.

        Why: handing a call to the thread and back costs two thread wake-ups and a
        tug of war over the GIL, which on a busy machine is milliseconds, far more
        than a small WAL transaction (no fsync at commit: synchronous=NORMAL). Calls
        keep their order: when anything waits on the thread, this one queues behind
        it. No commit here copies the WAL into the database (the step that waits for
        the disk): that is `_checkpoint`'s, on a thread of its own.
        """
        self._loop_started()
        if self._queued or not self._lock.acquire(blocking=False):
            return await self.run(fn, *args)
        try:
            return fn(*args)
        except sqlite3.Error as exc:
            raise StorageError(f"database error in {self.path}: {exc}") from exc
        finally:
            self._lock.release()
            self._wrote(1)

    def _loop_started(self) -> None:
        """On the first call from the event loop: automatic checkpoints off for good.

        Why: SQLite checkpoints inside the commit that crosses the threshold, holding
        this connection (and so every call behind it, a chat message's included) while
        it copies pages and waits for the disk: tens of milliseconds on a slow disk,
        up to 150 ms measured here. `_checkpoint` does the same work from another
        connection, which does not stop this one from writing.
        """
        if self._checkpointer is None and not self._closed:
            self.call(lambda c: c.execute("PRAGMA wal_autocheckpoint = 0"))
            self._checkpointer = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="sidedoor-checkpoint")

    def _wrote(self, weight: int) -> None:
        self._since_checkpoint += weight
        if (self._since_checkpoint >= CHECKPOINT_AFTER and self._checkpointer is not None
                and not self._closed
                and (self._checkpointing is None or self._checkpointing.done())):
            self._since_checkpoint = 0
            self._checkpointing = self._checkpointer.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        """Copy what the WAL holds into the database, on the checkpoint thread. PASSIVE:
        it never waits for a writer, and writers go on appending meanwhile."""
        try:
            if self._checkpoint_conn is None:
                self._checkpoint_conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False)
            busy, pages, copied = self._checkpoint_conn.execute(
                "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.last_checkpoint = (int(busy), int(pages), int(copied))
        except sqlite3.Error as exc:
            # Not fatal: the WAL grows until the next one succeeds.
            log.warning("checkpoint of %s failed: %s", self.path, exc)

    def close(self) -> None:
        # A call that ends after this (its await resumes later) starts no checkpoint.
        self._closed = True
        if self._checkpointer is not None:
            self._checkpointer.shutdown(wait=True)
            if self._checkpoint_conn is not None:
                self._checkpoint_conn.close()
        self._executor.shutdown(wait=True)
        with self._lock:
            self.conn.close()

    # ---------------------------------------------------------- settings
    def get_setting(self, key: str, default: str | None = None) -> str | None:
        row = self.call(
            lambda c: c.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        )
        return row[0] if row else default

    def set_setting(self, key: str, value: str) -> None:
        self.call(lambda c: c.execute(
            "INSERT INTO settings(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value)))

    # ------------------------------------------------------------- peers
    def remember_peer(self, identity: bytes, noise_static: bytes, addr: str | None,
                      now: float) -> None:
        self.call(lambda c: c.execute(
            "INSERT INTO peers(identity, noise_static, last_addr, last_seen) VALUES(?, ?, ?, ?) "
            "ON CONFLICT(identity) DO UPDATE SET noise_static = excluded.noise_static, "
            "last_addr = coalesce(excluded.last_addr, last_addr), last_seen = excluded.last_seen",
            (identity, noise_static, addr, now)))

    def brokers(self) -> list[str]:
        rows = self.call(lambda c: c.execute(
            "SELECT url FROM brokers ORDER BY added_at").fetchall())
        return [str(r[0]) for r in rows]

    def add_broker(self, url: str, now: float) -> None:
        self.call(lambda c: c.execute(
            "INSERT OR IGNORE INTO brokers(url, added_at) VALUES (?, ?)", (url, now)))

    def remove_broker(self, url: str) -> None:
        self.call(lambda c: c.execute("DELETE FROM brokers WHERE url = ?", (url,)))

    def peer_last_addr(self, identity: bytes) -> str | None:
        row = self.call(lambda c: c.execute(
            "SELECT last_addr FROM peers WHERE identity = ?", (identity,)).fetchone())
        return None if row is None else row[0]

    def peer_static(self, identity: bytes) -> bytes | None:
        row = self.call(lambda c: c.execute(
            "SELECT noise_static FROM peers WHERE identity = ?", (identity,)).fetchone())
        return bytes(row[0]) if row else None

    def forget_peer_static(self, identity: bytes) -> None:
        self.call(lambda c: c.execute("DELETE FROM peers WHERE identity = ?", (identity,)))


def write_setting(home: Path, key: str, value: str) -> None:
    """Set one setting from a short-lived process (the CLI), whether a node runs or not."""
    db = Database(home)
    try:
        db.set_setting(key, value)
    finally:
        db.close()
