"""The node database: migrations, settings, peers."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidedoor.errors import StorageError
from sidedoor.storage import db as dbmod
from sidedoor.storage.db import Database, connect, insert_rows, migrations


def test_migrations_are_numbered_without_gaps() -> None:
    numbers = [n for n, _ in migrations()]
    assert numbers == list(range(1, len(numbers) + 1))


def test_fresh_database_is_migrated_and_reopens(tmp_path: Path) -> None:
    conn = connect(tmp_path / "x.db")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    assert version == len(migrations())
    (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"
    conn.close()
    conn = connect(tmp_path / "x.db")  # a second open applies nothing and fails on nothing
    assert conn.execute("PRAGMA user_version").fetchone()[0] == version
    conn.close()


def test_database_from_a_newer_sidedoor_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    with pytest.raises(StorageError, match="newer sidedoor"):
        connect(tmp_path / "x.db")


def test_failed_migration_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = migrations()
    broken = [*good, (len(good) + 1, "CREATE TABLE ok_table (x INTEGER);\nNOT SQL;\n")]
    monkeypatch.setattr(dbmod, "migrations", lambda: broken)
    with pytest.raises(StorageError):
        connect(tmp_path / "x.db")
    conn = sqlite3.connect(tmp_path / "x.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(good)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "ok_table" not in tables
    conn.close()


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "x.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="cannot open"):
        connect(tmp_path / "x.db")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path)
    yield database
    database.close()


def test_settings_and_peers(db: Database) -> None:
    assert db.get_setting("name") is None
    assert db.get_setting("name", "x") == "x"
    db.set_setting("name", "Alice")
    db.set_setting("name", "Alice B")
    assert db.get_setting("name") == "Alice B"
    key, static = bytes(32), bytes([1]) * 32
    assert db.peer_static(key) is None
    db.remember_peer(key, static, "127.0.0.1:1", 1.0)
    db.remember_peer(key, static, None, 2.0)  # keeps the last known address
    assert db.peer_static(key) == static
    row = db.conn.execute("SELECT last_addr, last_seen FROM peers").fetchone()
    assert row == ("127.0.0.1:1", 2.0)
    with pytest.raises(StorageError):
        db.remember_peer(b"short", static, None, 3.0)


async def test_run_uses_the_database_thread(db: Database) -> None:
    await db.run(db.set_setting, "k", "v")
    assert await db.run(db.get_setting, "k") == "v"
    name = await db.run(lambda: threading.current_thread().name)
    assert name.startswith("sidedoor-db")


async def test_run_short_runs_on_the_calling_thread_when_idle(db: Database) -> None:
    def probe() -> tuple[str, int]:
        (pages,) = db.conn.execute("PRAGMA wal_autocheckpoint").fetchone()
        return threading.current_thread().name, pages

    name, pages = await db.run_short(probe)
    assert name == threading.current_thread().name  # no hop to the database thread
    assert pages == 0  # no checkpoint (and its fsync) inside a commit...
    await db.run_short(db.set_setting, "k", "v")
    name, pages = await db.run(probe)
    assert name.startswith("sidedoor-db")
    assert pages == 0  # ...on the database thread either
    assert await db.run(db.get_setting, "k") == "v"


async def test_checkpoints_run_on_their_own_thread_and_connection(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbmod, "CHECKPOINT_AFTER", 8)
    ran_on: list[str] = []
    checkpoint = db._checkpoint

    def watched() -> None:
        ran_on.append(threading.current_thread().name)
        checkpoint()

    monkeypatch.setattr(db, "_checkpoint", watched)
    for i in range(8):
        await db.run_short(db.set_setting, f"k{i}", "v" * 1000)
    for _ in range(100):  # it runs on its own: wait for it, boundedly
        if db.last_checkpoint is not None:
            break
        await asyncio.sleep(0.05)
    assert ran_on and ran_on[0].startswith("sidedoor-checkpoint")
    busy, pages, copied = db.last_checkpoint or (1, 0, 0)
    assert busy == 0 and pages > 0 and copied == pages  # the whole WAL copied
    assert await db.run(db.get_setting, "k7") == "v" * 1000


async def test_writes_go_on_while_a_checkpoint_is_slow(db: Database) -> None:
    await db.run_short(db.set_setting, "first", "1")
    assert db._checkpointer is not None
    release = threading.Event()
    stuck = db._checkpointer.submit(release.wait, 5)  # the checkpoint thread is busy
    try:
        for i in range(3 * dbmod.CHECKPOINT_AFTER):
            await db.run_short(db.set_setting, f"k{i}", "v")
        assert await db.run(db.get_setting, "k0") == "v"
    finally:
        release.set()
    assert stuck.result(5)


async def test_a_call_that_ends_after_close_starts_no_checkpoint(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbmod, "CHECKPOINT_AFTER", 1)
    release = threading.Event()
    call = asyncio.ensure_future(db.run(release.wait, 5))
    await asyncio.sleep(0.05)  # on the thread now
    threading.Timer(0.1, release.set).start()
    db.close()  # waits for that call; its coroutine resumes only after
    assert await call is True


async def test_run_short_waits_its_turn_behind_the_thread(db: Database) -> None:
    order: list[tuple[str, str]] = []
    release = threading.Event()

    def slow() -> None:
        release.wait(5)
        order.append(("slow", threading.current_thread().name))

    def short() -> None:
        order.append(("short", threading.current_thread().name))

    try:
        first = asyncio.ensure_future(db.run(slow))
        await asyncio.sleep(0)  # the slow call is on the thread now
        second = asyncio.ensure_future(db.run_short(short))
        await asyncio.sleep(0.05)
        assert order == []  # the short call did not jump the queue
        release.set()
        await asyncio.gather(first, second)
        assert [what for what, _ in order] == ["slow", "short"]
        assert order[1][1].startswith("sidedoor-db")  # it went the long way
    finally:
        release.set()


async def test_run_short_errors_are_storage_errors(db: Database) -> None:
    with pytest.raises(StorageError, match="database error"):
        await db.run_short(lambda: db.conn.execute("SELEKT 1"))
    # The lock was released: the thread can still use the database.
    await db.run(db.set_setting, "k", "v")


def test_insert_rows_writes_every_row_in_order_whatever_the_count() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (n INTEGER, label TEXT)")
    for count in (0, 1, 2, 3, 7, 255, 256, 257, 700):
        conn.execute("DELETE FROM t")
        assert insert_rows(conn, "INSERT INTO t (n, label)", "(?, ?)",
                           [(i, f"row {i}") for i in range(count)]) == count
        assert conn.execute("SELECT n, label FROM t ORDER BY rowid").fetchall() == [
            (i, f"row {i}") for i in range(count)]
    # The count is of rows inserted: those a conflict clause skipped are not in it.
    conn.execute("CREATE UNIQUE INDEX t_n ON t (n)")
    assert insert_rows(conn, "INSERT INTO t (n, label)", "(?, ?)",
                       [(n, "again") for n in (5, 1000, 6, 1001)],
                       "ON CONFLICT (n) DO NOTHING") == 2
