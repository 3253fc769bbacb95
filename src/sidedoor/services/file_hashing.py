"""The sender's side of a manifest: walking what the user offers and hashing it.

Blocking code, run on a worker thread. Files are read in `READ_SIZE` pieces into
one reused buffer, so hashing a file of any size holds a few MiB at most; BLAKE3
releases the GIL while it hashes. Hash lists are cached in the node's database by
(path, size, mtime_ns): offering the same file again costs one query.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import stat
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from sidedoor.errors import TransferError, UnsafeFileName
from sidedoor.proto.file_names import MAX_DEPTH, MAX_PATH_BYTES, local_name
from sidedoor.proto.transfer import (
    MAX_DIRS,
    MAX_FILES,
    DirEntry,
    FileEntry,
    Manifest,
    chunk_size_for,
)
from sidedoor.storage.db import Database

READ_SIZE = 1 << 20
SMALL_READ = 256 << 10  # files up to this size (and one chunk) are read in one piece
# Files at least this large are hashed with BLAKE3's own threads (both cores).
THREADED_HASH_MIN = 8 << 20


@dataclass
class Offered:
    """What `build_manifest` found: the manifest, the local path of each file, what it skipped."""

    manifest: Manifest
    sources: list[str]
    skipped: list[str] = field(default_factory=list)


def hash_chunks(fd: int, size: int, buffer: bytearray | None = None) -> bytes:
    """The concatenated BLAKE3 hashes of the chunks of the open file ``fd`` (``size`` bytes)."""
    chunk = chunk_size_for(size)
    if size <= min(chunk, SMALL_READ):
        # One small chunk (most files of a folder): one read and one call to BLAKE3,
        # a third less time a file than the loop below.
        data = os.pread(fd, size, 0)
        if len(data) < size:
            raise TransferError("a file got shorter while it was being read")
        return blake3.blake3(data).digest() if size else b""
    buf = buffer if buffer is not None and len(buffer) >= READ_SIZE else bytearray(READ_SIZE)
    view = memoryview(buf)
    threads = blake3.blake3.AUTO if size >= THREADED_HASH_MIN else 1
    hashes: list[bytes] = []
    offset = 0
    while offset < size:
        hasher = blake3.blake3(max_threads=threads)
        want = min(chunk, size - offset)
        got = 0
        while got < want:
            n = os.preadv(fd, [view[:min(READ_SIZE, want - got)]], offset + got)
            if n == 0:
                raise TransferError("a file got shorter while it was being read")
            hasher.update(view[:n])
            got += n
        hashes.append(hasher.digest())
        offset += want
    return b"".join(hashes)


CACHE_BATCH = 500  # paths looked up in the hash cache per query


def _cached_hashes(db: Database | None, files: list[tuple[str, str, os.stat_result]],
                   folders: list[str] | None = None) -> dict[str, bytes]:
    """The cached hash lists of ``files`` (local path, name, stat) still valid for their
    size and time. Files below one of ``folders`` (local paths) are looked up with one
    query per folder (a range of the index: everything cached below it); the others with
    one query per `CACHE_BATCH` files, not one per file."""
    if db is None or not files:
        return {}
    found: dict[str, bytes] = {}
    if folders:
        def below(c: sqlite3.Connection, folder: str) -> list[tuple[str, int, int, bytes]]:
            # "/" and "0" are neighbours: the range is every path that starts "folder/".
            rows: list[tuple[str, int, int, bytes]] = c.execute(
                "SELECT path, size, mtime_ns, hashes FROM file_hashes "
                "WHERE path > ? AND path < ?", (folder + "/", folder + "0")).fetchall()
            return rows

        known: dict[str, tuple[int, int, bytes]] = {}
        for folder in folders:
            rows = db.call(functools.partial(below, folder=folder))
            known.update((path, (size, mtime_ns, hashes)) for path, size, mtime_ns, hashes
                         in rows)
        prefixes = tuple(folder + "/" for folder in folders)
        rest = []
        for local, name, st in files:
            hit = known.get(local)
            if hit is not None:
                if hit[:2] == (st.st_size, st.st_mtime_ns):
                    found[local] = bytes(hit[2])
            elif not local.startswith(prefixes):
                rest.append((local, name, st))
        files = rest
    for start in range(0, len(files), CACHE_BATCH):
        batch = files[start:start + CACHE_BATCH]
        query = ("SELECT path, size, mtime_ns, hashes FROM file_hashes WHERE path IN "
                 f"({', '.join('?' * len(batch))})")
        paths = [local for local, _, _ in batch]

        def select(c: sqlite3.Connection, query: str = query, paths: list[str] = paths
                   ) -> list[tuple[str, int, int, bytes]]:
            rows: list[tuple[str, int, int, bytes]] = c.execute(query, paths).fetchall()
            return rows

        rows = db.call(select)
        known = {path: (size, mtime_ns, bytes(hashes)) for path, size, mtime_ns, hashes in rows}
        for local, _, st in batch:
            hit = known.get(local)
            if hit is not None and hit[:2] == (st.st_size, st.st_mtime_ns):
                found[local] = hit[2]
    return found


def _store_hashes(db: Database | None, rows: list[tuple[str, int, int, bytes]]) -> None:
    if db is None or not rows:
        return

    def store(c: sqlite3.Connection) -> None:
        c.execute("BEGIN")
        c.executemany("INSERT INTO file_hashes(path, size, mtime_ns, hashes) VALUES(?,?,?,?) "
                      "ON CONFLICT(path) DO UPDATE SET size = excluded.size, "
                      "mtime_ns = excluded.mtime_ns, hashes = excluded.hashes", rows)
        c.execute("COMMIT")

    db.call(store)


def hash_file(path: str, st: os.stat_result, buffer: bytearray) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise TransferError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise TransferError(f"{path} changed while it was being offered; try again")
        return hash_chunks(fd, st.st_size, buffer)
    except OSError as exc:
        raise TransferError(f"cannot read {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def build_manifest(paths: list[Path], db: Database | None = None,
                   progress: Callable[[int], None] | None = None) -> Offered:
    """The manifest of ``paths`` (files and folders), hashing what the cache does not know.

    Each path becomes a top-level entry under its own name. Folders are walked without
    following symbolic links; links and special files inside them are skipped and
    listed in ``skipped``. A name that could not be written on every system (a control
    character, a device name, ...) fails the whole offer with the path to rename.
    """
    found: list[tuple[str, str, os.stat_result]] = []  # (local path, name, stat)
    folders: list[str] = []  # the local paths of the folders offered
    dirs: list[DirEntry] = []
    skipped: list[str] = []
    tops: set[str] = set()

    def add_file(local: str, rel: str, st: os.stat_result) -> None:
        if len(found) >= MAX_FILES:
            raise TransferError(f"at most {MAX_FILES} files can be sent at once")
        found.append((local, rel, st))

    def rel_name(parent: str, name: str, local: str) -> str:
        try:
            clean = local_name(name)
        except UnsafeFileName as exc:
            raise TransferError(f"{local} cannot be sent under its name: {exc}; rename it") \
                from None
        rel = f"{parent}/{clean}" if parent else clean
        if len(rel.encode()) > MAX_PATH_BYTES or rel.count("/") >= MAX_DEPTH:
            raise TransferError(f"{local}: the path is too long or too deep to send")
        return rel

    for path in paths:
        local = os.path.abspath(path)
        try:
            st = os.lstat(local)
        except OSError as exc:
            raise TransferError(f"cannot send {path}: {exc.strerror}") from exc
        if stat.S_ISLNK(st.st_mode):
            # A link named on the command line is what the user meant: follow it once.
            try:
                st = os.stat(local)
                local = os.path.realpath(local)
            except OSError as exc:
                raise TransferError(f"cannot send {path}: {exc.strerror}") from exc
        name = os.path.basename(os.path.normpath(os.path.abspath(path)))
        top = rel_name("", unicodedata.normalize("NFC", name), local)
        if top in tops:
            raise TransferError(f"two of the paths are named {top!r}; send them separately")
        tops.add(top)
        if stat.S_ISREG(st.st_mode):
            add_file(local, top, st)
        elif stat.S_ISDIR(st.st_mode):
            folders.append(local)
            _walk(local, top, st, add_file, rel_name, dirs, skipped)
        else:
            raise TransferError(f"{path} is not a file or a folder")
    if len(dirs) > MAX_DIRS:
        raise TransferError(f"at most {MAX_DIRS} folders can be sent at once")
    cached = _cached_hashes(db, found, folders)
    buffer = bytearray(READ_SIZE)
    fresh: list[tuple[str, int, int, bytes]] = []
    files: list[FileEntry] = []
    for local, rel, st in found:
        hashes = cached.get(local)
        if hashes is None:
            hashes = hash_file(local, st, buffer)
            fresh.append((local, st.st_size, st.st_mtime_ns, hashes))
            if len(fresh) >= CACHE_BATCH:
                _store_hashes(db, fresh)
                fresh.clear()
        files.append(FileEntry(rel, st.st_size, stat.S_IMODE(st.st_mode) & 0o777,
                               st.st_mtime_ns, hashes))
        if progress is not None:
            progress(st.st_size)
    _store_hashes(db, fresh)
    return Offered(Manifest(files, dirs, batches=True), [local for local, _, _ in found], skipped)


def _walk(root: str, top: str, root_st: os.stat_result,
          add_file: Callable[[str, str, os.stat_result], None],
          rel_name: Callable[[str, str, str], str],
          dirs: list[DirEntry], skipped: list[str]) -> None:
    stack: list[tuple[str, str, os.stat_result]] = [(root, top, root_st)]
    while stack:
        local, rel, st = stack.pop()
        dirs.append(DirEntry(rel, stat.S_IMODE(st.st_mode) & 0o777, st.st_mtime_ns))
        try:
            entries = sorted(os.scandir(local), key=lambda e: e.name)
        except OSError as exc:
            raise TransferError(f"cannot read the folder {local}: {exc.strerror}") from exc
        subdirs = []
        for entry in entries:
            child = entry.path
            try:
                est = entry.stat(follow_symlinks=False)
            except OSError:
                skipped.append(child)
                continue
            if stat.S_ISREG(est.st_mode):
                add_file(child, rel_name(rel, entry.name, child), est)
            elif stat.S_ISDIR(est.st_mode):
                subdirs.append((child, rel_name(rel, entry.name, child), est))
            else:
                skipped.append(child)  # links, sockets, devices: not sent
        stack.extend(reversed(subdirs))
