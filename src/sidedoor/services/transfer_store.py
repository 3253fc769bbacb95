"""Transfers in the node's database: what each side must remember to resume.

Sync methods, run on the database thread (``await db.run(store.method, ...)``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from sidedoor.proto import transfer as wire
from sidedoor.storage.db import Database, insert_rows

OUT_ACTIVE = ("queued", "offered", "sending")
IN_ACTIVE = ("offered", "receiving")
FINISHED = ("done", "declined", "cancelled", "failed")


@dataclass
class TransferRecord:
    id: bytes
    direction: str  # out, in
    peer: bytes
    status: str
    note: str
    manifest_bytes: bytes
    total_bytes: int
    file_count: int
    sources: list[str] | None
    dest: str | None
    roots: dict[str, str]
    bytes_sent: int
    bytes_received: int
    verified_bytes: int
    error: str
    notice: str
    created_at: float
    updated_at: float
    # The manifest decoded (decoding one of 10,000 files takes milliseconds): set by the
    # first `manifest()`, or given with a record read without its manifest.
    decoded: wire.Manifest | None = field(default=None, repr=False, compare=False)

    @property
    def hex(self) -> str:
        return self.id.hex()

    def manifest(self) -> wire.Manifest:
        if self.decoded is None:
            self.decoded = wire.decode(wire.Manifest, self.manifest_bytes)
        return self.decoded

    @property
    def active(self) -> bool:
        return self.status in (OUT_ACTIVE if self.direction == "out" else IN_ACTIVE)


_COLUMNS = ("id, direction, peer, status, note, manifest, total_bytes, file_count, sources, "
            "dest, roots, bytes_sent, bytes_received, verified_bytes, error, notice, "
            "created_at, updated_at")


_LIGHT_COLUMNS = _COLUMNS.replace("manifest,", "X'' AS manifest,").replace(
    "sources,", "NULL AS sources,")


def _record(row: tuple[Any, ...]) -> TransferRecord:
    (tid, direction, peer, status, note, manifest, total, count, sources, dest, roots,
     sent, received, verified, error, notice, created, updated) = row
    return TransferRecord(
        bytes(tid), direction, bytes(peer), status, note, bytes(manifest), total, count,
        json.loads(sources) if sources else None, dest, json.loads(roots) if roots else {},
        sent, received, verified, error, notice, created, updated)


class TransferStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, record: TransferRecord) -> None:
        self.db.call(lambda c: c.execute(
            f"INSERT INTO transfers({_COLUMNS}) VALUES({', '.join('?' * 18)})",
            (record.id, record.direction, record.peer, record.status, record.note,
             record.manifest_bytes, record.total_bytes, record.file_count,
             json.dumps(record.sources) if record.sources is not None else None,
             record.dest, json.dumps(record.roots) if record.roots else None,
             record.bytes_sent, record.bytes_received, record.verified_bytes,
             record.error, record.notice, record.created_at, record.updated_at)))

    def get(self, tid: bytes, light: bool = False) -> TransferRecord | None:
        """A transfer; ``light``: without its manifest and source paths (empty), which
        are megabytes for many files and not needed to show progress."""
        columns = _LIGHT_COLUMNS if light else _COLUMNS
        row = self.db.call(lambda c: c.execute(
            f"SELECT {columns} FROM transfers WHERE id = ?", (tid,)).fetchone())
        return _record(row) if row else None

    def all(self) -> list[TransferRecord]:
        """Every transfer, newest first, without their manifests' bulk (sources stay)."""
        rows = self.db.call(lambda c: c.execute(
            f"SELECT {_COLUMNS} FROM transfers ORDER BY created_at DESC").fetchall())
        return [_record(r) for r in rows]

    def waiting_from(self, peer: bytes) -> tuple[int, int]:
        """How many offers from ``peer`` wait for an answer here, and their manifests' bytes."""
        row = self.db.call(lambda c: c.execute(
            "SELECT count(*), coalesce(sum(length(manifest)), 0) FROM transfers "
            "WHERE peer = ? AND direction = 'in' AND status = 'offered'", (peer,)).fetchone())
        return int(row[0]), int(row[1])

    def ids(self) -> list[bytes]:
        rows = self.db.call(lambda c: c.execute("SELECT id FROM transfers").fetchall())
        return [bytes(r[0]) for r in rows]

    def update(self, tid: bytes, **fields: Any) -> None:
        if not fields:
            return
        if "roots" in fields:
            fields["roots"] = json.dumps(fields["roots"])
        fields["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self.db.call(lambda c: c.execute(
            f"UPDATE transfers SET {assignments} WHERE id = ?", (*fields.values(), tid)))

    def delete(self, tid: bytes) -> None:
        self.db.call(lambda c: c.execute("DELETE FROM transfers WHERE id = ?", (tid,)))

    # ------------------------------------------------------ receiver state
    def verified_chunks(self, tid: bytes) -> set[tuple[int, int]]:
        rows = self.db.call(lambda c: c.execute(
            "SELECT file, chunk FROM transfer_chunks WHERE transfer = ?", (tid,)).fetchall())
        return {(f, ch) for f, ch in rows}

    def save_progress(self, tid: bytes, chunks: list[tuple[int, int]],
                      files: list[tuple[int, str]], counters: dict[str, int]) -> None:
        """Verified chunks, finished files and byte counters, in one transaction."""

        def save(c: sqlite3.Connection) -> None:
            c.execute("BEGIN")
            try:
                # Many rows a statement (see insert_rows): thousands of small files
                # make thousands of rows a second, written while the loop is busy.
                insert_rows(c, "INSERT OR IGNORE INTO transfer_chunks(transfer, file, chunk)",
                            "(?, ?, ?)", [(tid, f, ch) for f, ch in chunks])
                insert_rows(c, "INSERT OR REPLACE INTO transfer_files(transfer, file, "
                            "final_path)", "(?, ?, ?)", [(tid, f, p) for f, p in files])
                if counters:
                    assignments = ", ".join(f"{name} = ?" for name in counters)
                    c.execute(f"UPDATE transfers SET {assignments}, updated_at = ? WHERE id = ?",
                              (*counters.values(), time.time(), tid))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

        self.db.call(save)

    def forget_chunks(self, tid: bytes, file: int | None = None) -> None:
        if file is None:
            self.db.call(lambda c: c.execute(
                "DELETE FROM transfer_chunks WHERE transfer = ?", (tid,)))
        else:
            self.db.call(lambda c: c.execute(
                "DELETE FROM transfer_chunks WHERE transfer = ? AND file = ?", (tid, file)))

    def finished_files(self, tid: bytes) -> dict[int, str]:
        rows = self.db.call(lambda c: c.execute(
            "SELECT file, final_path FROM transfer_files WHERE transfer = ?", (tid,)).fetchall())
        return dict(rows)
