"""The sender's manifest: streamed chunk hashes, the hash cache, and what a walk skips."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest

from sidedoor.errors import TransferError
from sidedoor.proto import transfer as wire
from sidedoor.services.file_hashing import build_manifest, hash_chunks
from sidedoor.storage.db import Database

MiB = 1 << 20


@pytest.fixture
def db(tmp_path: Path) -> Database:
    home = tmp_path / "home"
    home.mkdir()
    database = Database(home)
    yield database  # type: ignore[misc]
    database.close()


@pytest.mark.parametrize("size", [0, 1, 10_240, 256 << 10, (256 << 10) + 1, MiB, MiB + 1,
                                  3 * MiB + 17])
def test_chunk_hashes_match_blake3_of_each_chunk(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    (entry,) = build_manifest([tmp_path / "f"]).manifest.files
    expected = b"".join(blake3.blake3(data[o:o + MiB]).digest() for o in range(0, size, MiB))
    assert entry.hashes == expected and entry.size == size
    assert wire.file_id(entry.hashes) == blake3.blake3(expected).digest()


@pytest.mark.parametrize("size", [10_240, 3 * MiB])
def test_a_file_shorter_than_its_size_is_an_error(tmp_path: Path, size: int) -> None:
    # The file shrank between the look at its size and the read (both read paths).
    path = tmp_path / "f"
    path.write_bytes(os.urandom(size - 1))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(TransferError, match="got shorter"):
            hash_chunks(fd, size)
    finally:
        os.close(fd)


def test_hashes_are_cached_by_path_size_and_mtime(tmp_path: Path, db: Database) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a" * 1000)
    os.utime(path, ns=(10**18, 10**18))
    first = build_manifest([path], db).manifest.files[0].hashes
    path.write_bytes(b"b" * 1000)  # same size, and the same mtime put back:
    os.utime(path, ns=(10**18, 10**18))
    assert build_manifest([path], db).manifest.files[0].hashes == first  # from the cache
    os.utime(path, ns=(10**18 + 1, 10**18 + 1))
    fresh = build_manifest([path], db).manifest.files[0].hashes
    assert fresh == blake3.blake3(b"b" * 1000).digest() != first


def test_a_folder_is_looked_up_in_the_cache_whole_and_only_its_own_files(
        tmp_path: Path, db: Database) -> None:
    def put(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, ns=(10**18, 10**18))

    paths = [tmp_path / "docs" / "a.txt", tmp_path / "docs" / "sub" / "b.txt",
             tmp_path / "docs0" / "c.txt", tmp_path / "docs-old" / "d.txt",
             tmp_path / "top.txt"]
    for path in paths:
        put(path, b"old " + path.name.encode())
    first = build_manifest([*paths[2:4], tmp_path / "docs", tmp_path / "top.txt"], db)
    # Same sizes and times, other bytes: what comes from the cache keeps the old hashes.
    for path in paths:
        put(path, b"new " + path.name.encode())
    put(tmp_path / "docs" / "sub" / "b.txt", b"changed size")
    again = build_manifest([tmp_path / "docs", tmp_path / "top.txt"], db)
    hashes = {f.path: f.hashes for f in again.manifest.files}
    old = {f.path: f.hashes for f in first.manifest.files}
    assert hashes == {"docs/a.txt": old["docs/a.txt"],
                      "docs/sub/b.txt": blake3.blake3(b"changed size").digest(),
                      "top.txt": old["top.txt"]}
    # The neighbours whose names start like the folder's were not taken for its files.
    alone = build_manifest([tmp_path / "docs0", tmp_path / "docs-old"], db)
    assert [f.hashes for f in alone.manifest.files] == [old["c.txt"], old["d.txt"]]


def test_a_folder_walk_keeps_structure_and_skips_links(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    (src / "a" / "b").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "a" / "one.jpg").write_bytes(b"1")
    (src / "a" / "b" / "two.jpg").write_bytes(b"22")
    (src / "link").symlink_to("/etc/passwd")
    offered = build_manifest([src])
    assert [f.path for f in offered.manifest.files] == ["photos/a/one.jpg",
                                                        "photos/a/b/two.jpg"]
    assert {d.path for d in offered.manifest.dirs} == {"photos", "photos/a", "photos/a/b",
                                                       "photos/empty"}
    assert offered.skipped == [str(src / "link")]
    assert offered.sources == [str(src / "a" / "one.jpg"), str(src / "a" / "b" / "two.jpg")]
    wire.check_manifest(offered.manifest)


def test_a_local_name_that_cannot_travel_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "folder"
    bad.mkdir()
    (bad / "line\nbreak.txt").write_text("x")
    with pytest.raises(TransferError, match=r"line\\nbreak.txt.*rename it"):
        build_manifest([bad])
    with pytest.raises(TransferError, match="cannot send"):
        build_manifest([tmp_path / "missing"])
