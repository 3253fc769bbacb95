"""The sender's manifest: streamed chunk hashes, the hash cache, and what a walk skips."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest

from sidedoor.errors import TransferError
from sidedoor.proto import transfer as wire
from sidedoor.services.file_hashing import build_manifest
from sidedoor.storage.db import Database

MiB = 1 << 20


@pytest.fixture
def db(tmp_path: Path) -> Database:
    home = tmp_path / "home"
    home.mkdir()
    database = Database(home)
    yield database  # type: ignore[misc]
    database.close()


@pytest.mark.parametrize("size", [0, 1, MiB, MiB + 1, 3 * MiB + 17])
def test_chunk_hashes_match_blake3_of_each_chunk(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    (entry,) = build_manifest([tmp_path / "f"]).manifest.files
    expected = b"".join(blake3.blake3(data[o:o + MiB]).digest() for o in range(0, size, MiB))
    assert entry.hashes == expected and entry.size == size
    assert wire.file_id(entry.hashes) == blake3.blake3(expected).digest()


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
