"""The receiver's disk writer on its own: small files written whole, both ways of naming
them; large files written around the page cache."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from sidedoor.errors import DiskFull, TransferError
from sidedoor.proto.transfer import FileEntry, Manifest, chunk_count, chunk_span, hash_files
from sidedoor.services import file_writer
from sidedoor.services.file_writer import IncomingFiles
from sidedoor.testing.disks import cached_bytes, fincore_missing, on_tmpfs

TID = bytes(range(16))
MTIME = 1_600_000_000 * 10**9 + 7


def entry(path: str, data: bytes, mode: int = 0o644) -> FileEntry:
    return FileEntry(path, len(data), mode, MTIME, blake3.blake3(data).digest())


def write_small(dest: Path, files: dict[str, tuple[bytes, int]],
                unnamed: bool = True) -> tuple[IncomingFiles, list[object]]:
    manifest = Manifest([entry(p, d, m) for p, (d, m) in files.items()])
    writer = IncomingFiles(dest, TID, manifest, {})
    writer._unnamed = writer._unnamed and unnamed
    writer.claim_roots()
    items = [(i, 0, [memoryview(d)], f.hashes) for i, (f, (d, _)) in
             enumerate(zip(manifest.files, files.values(), strict=True))]
    results: list[object] = list(writer.write_files(items))
    return writer, results


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed-then-linked", "partial"])
def test_small_files_arrive_with_mode_and_time_and_nothing_else(
        tmp_path: Path, unnamed: bool) -> None:
    files = {"box/a.txt": (b"alpha", 0o644), "box/b.sh": (b"#!/bin/sh\n", 0o755),
             "box/secret": (b"s", 0o600), "box/odd": (b"o", 0o666)}
    writer, results = write_small(tmp_path, files, unnamed)
    writer.close()
    assert [r[1] for r in results] == list(files)  # type: ignore[index]
    for path, (data, mode) in files.items():
        st = (tmp_path / path).stat()
        assert (tmp_path / path).read_bytes() == data
        assert stat.S_IMODE(st.st_mode) == mode  # 0o666 too: a chmod past the umask
        assert st.st_mtime_ns == MTIME
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == sorted(
        Path(p).name for p in files)


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed-then-linked", "partial"])
def test_a_taken_name_is_never_replaced(tmp_path: Path, unnamed: bool) -> None:
    writer, _ = write_small(tmp_path, {"r.txt": (b"first", 0o644)}, unnamed)
    writer.close()
    writer, results = write_small(tmp_path, {"r.txt": (b"second", 0o644)}, unnamed)
    writer.close()
    assert results[0][1] == "r (1).txt"  # type: ignore[index]
    assert (tmp_path / "r.txt").read_bytes() == b"first"
    assert (tmp_path / "r (1).txt").read_bytes() == b"second"


def test_bytes_that_do_not_hash_right_are_not_written(tmp_path: Path) -> None:
    manifest = Manifest([entry("x.bin", b"the real bytes")])
    writer = IncomingFiles(tmp_path, TID, manifest, {})
    [result] = writer.write_files([(0, 0, [memoryview(b"forged bytes!!")],
                                    manifest.files[0].hashes)])
    writer.close()
    assert result[1] is None  # type: ignore[index]
    assert list(tmp_path.iterdir()) == []


def test_a_filesystem_without_unnamed_files_falls_back_to_partial_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open
    tried: list[int] = []

    def no_tmpfile(path: str, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            tried.append(flags)
            raise OSError(errno.EOPNOTSUPP, "not supported")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", no_tmpfile)
    files = {f"f{i}.txt": (bytes([i]) * 10, 0o644) for i in range(3)}
    writer, results = write_small(tmp_path, files)
    assert [r[1] for r in results] == list(files)  # type: ignore[index]
    writer.close()
    assert len(tried) == 1  # asked once, then remembered
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
    assert all((tmp_path / p).read_bytes() == d for p, (d, _) in files.items())


def test_when_linking_is_refused_the_file_is_written_the_partial_way(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_proc(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOENT, "no /proc")

    monkeypatch.setattr(os, "link", no_proc)
    writer, results = write_small(tmp_path, {"a.txt": (b"a", 0o644)})
    assert not writer._unnamed
    writer.close()
    assert results[0][1] == "a.txt"  # type: ignore[index]
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    assert (tmp_path / "a.txt").read_bytes() == b"a"


def test_the_umask_is_read_without_changing_it() -> None:
    old = os.umask(0o027)
    try:
        assert file_writer._read_umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)


def test_under_a_strict_umask_modes_are_still_the_senders(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        writer, _ = write_small(tmp_path, {"a.txt": (b"a", 0o644), "b.sh": (b"b", 0o755)})
    finally:
        os.umask(old)
    writer.close()
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.sh").stat().st_mode) == 0o755


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed-then-linked", "partial"])
def test_a_run_of_files_is_written_file_by_file_and_a_wrong_one_not_at_all(
        tmp_path: Path, unnamed: bool) -> None:
    datas = [b"one", b"two!", b"three", b"four", b"5"]
    paths = ["top.txt", "box/a.txt", "box/b.txt", "box/deeper/c.txt", "other/d.txt"]
    manifest = Manifest([entry(p, d) for p, d in zip(paths, datas, strict=True)])
    (tmp_path / "box").mkdir()  # taken: the folder gets another name
    writer = IncomingFiles(tmp_path, TID, manifest, {})
    writer._unnamed = writer._unnamed and unnamed
    roots = writer.claim_roots()
    assert roots == {"box": "box (1)", "other": "other"}
    sent = [b"one", b"two!", b"THREE", b"four", b"5"]  # the third file was damaged
    data = memoryview(b"".join(sent))
    digests = hash_files(data, [len(d) for d in sent])
    results = writer.write_run(0, [len(d) for d in sent], data, digests)
    writer.close()
    assert [path for _, path in results] == [
        "top.txt", "box (1)/a.txt", None, "box (1)/deeper/c.txt", "other/d.txt"]
    assert [digest for digest, _ in results] == [blake3.blake3(d).digest() for d in sent]
    for path, expected in zip(results, datas, strict=True):
        if path[1] is not None:
            assert (tmp_path / path[1]).read_bytes() == expected
            assert (tmp_path / path[1]).stat().st_mtime_ns == MTIME
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "box", "box (1)", "box (1)/a.txt", "box (1)/deeper", "box (1)/deeper/c.txt",
        "other", "other/d.txt", "top.txt"]


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed-then-linked", "partial"])
def test_a_long_run_is_written_by_two_threads_in_order(tmp_path: Path, unnamed: bool) -> None:
    datas = [f"file {i}".encode() * (i + 1) for i in range(40)]
    paths = [f"f{i}.txt" if i % 2 else f"box/f{i}.txt" for i in range(40)]
    manifest = Manifest([entry(p, d) for p, d in zip(paths, datas, strict=True)])
    (tmp_path / "f5.txt").write_bytes(b"mine")  # taken names, in both halves
    (tmp_path / "f31.txt").write_bytes(b"mine too")
    writer = IncomingFiles(tmp_path, TID, manifest, {})
    writer._unnamed = writer._unnamed and unnamed
    writer.claim_roots()
    sent = list(datas)
    sent[3], sent[36] = b"X" * len(datas[3]), b"Y" * len(datas[36])  # damaged, each half
    data = memoryview(b"".join(sent))
    results = writer.write_run(0, [len(d) for d in sent], data,
                               hash_files(data, [len(d) for d in sent]))
    assert writer._helper is not None  # the second thread wrote half of them
    writer.close()
    expected = [None if i in (3, 36) else
                "f5 (1).txt" if i == 5 else "f31 (1).txt" if i == 31 else paths[i]
                for i in range(40)]
    assert [path for _, path in results] == expected
    assert [digest for digest, _ in results] == [blake3.blake3(d).digest() for d in sent]
    for path, content in zip(expected, datas, strict=True):
        if path is not None:
            assert (tmp_path / path).read_bytes() == content
            assert (tmp_path / path).stat().st_mtime_ns == MTIME
    assert (tmp_path / "f5.txt").read_bytes() == b"mine"
    assert not (tmp_path / "f3.txt").exists() and not (tmp_path / "box/f36.txt").exists()
    assert len(list(tmp_path.rglob("*.txt"))) == 40  # 38 written, 2 of mine, no partials


def test_an_error_in_a_long_run_stops_both_threads(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    datas = [f"file {i}".encode() for i in range(400)]
    paths = [f"f{i}.txt" for i in range(400)]
    manifest = Manifest([entry(p, d) for p, d in zip(paths, datas, strict=True)])
    writer = IncomingFiles(tmp_path, TID, manifest, {})
    writer.claim_roots()
    place = writer._place

    def failing_place(dir_fd: int, file: int, *args: object) -> str:
        if file == 10:
            raise TransferError("the disk is full")
        return place(dir_fd, file, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(writer, "_place", failing_place)
    data = memoryview(b"".join(datas))
    sizes = [len(d) for d in datas]
    with pytest.raises(TransferError, match="disk is full"):
        writer.write_run(0, sizes, data, hash_files(data, sizes))
    writer.close()
    # The other thread stopped after the file it was writing, not at the run's end.
    assert len(list(tmp_path.glob("*.txt"))) < 100


def test_a_run_over_more_folders_than_stay_open_puts_each_file_in_its_own(
        tmp_path: Path) -> None:
    # 100 folders, one file each (and 40 files in one more): more folders than the
    # writer keeps open, so folders opened early in the run are closed again.
    paths = [f"top/d{i:03}/f.txt" for i in range(100)] + [f"top/many/g{i}.txt"
                                                           for i in range(40)]
    datas = [p.encode() for p in paths]
    manifest = Manifest([entry(p, d) for p, d in zip(paths, datas, strict=True)])
    writer = IncomingFiles(tmp_path, TID, manifest, {})
    writer.claim_roots()
    writer.make_dirs()
    data = memoryview(b"".join(datas))
    for first, count in ((0, 100), (100, 40)):
        sizes = [len(d) for d in datas[first:first + count]]
        part = data[sum(len(d) for d in datas[:first]):][:sum(sizes)]
        results = writer.write_run(first, sizes, part, hash_files(part, sizes))
        assert [path for _, path in results] == paths[first:first + count]
    writer.close()
    for path, content in zip(paths, datas, strict=True):
        assert (tmp_path / path).read_bytes() == content
    assert len(list(tmp_path.rglob("*.txt"))) == 140


# ------------------------------------------------------------ large files

def chunked_entry(path: str, data: bytes) -> FileEntry:
    spans = [chunk_span(len(data), i) for i in range(chunk_count(len(data)))]
    return FileEntry(path, len(data), 0o640, MTIME, b"".join(
        blake3.blake3(data[start:start + size]).digest() for start, size in spans))


def write_chunks(writer: IncomingFiles, data: bytes, order: list[int]) -> None:
    """Each chunk of file 0 in ``order``, in two uneven pieces (the second one ends it)."""
    view = memoryview(data)
    entry = writer.manifest.files[0]
    for chunk in order:
        start, size = chunk_span(len(data), chunk)
        cut = min(300_001, size)
        writer.write(0, chunk, 0, [view[start:start + cut]], cut == size)
        if cut < size:
            digest = writer.write(0, chunk, cut, [view[start + cut:start + size]], True)
            assert digest == entry.hash_of(chunk)


def needs_a_real_disk(path: Path) -> None:
    if fincore_missing() or on_tmpfs(path):
        pytest.skip("needs fincore, and a disk that is not a tmpfs")


def cached(path: Path) -> int:
    needs_a_real_disk(path)
    return cached_bytes(path)


def test_a_large_file_goes_around_the_page_cache_and_is_cut_to_its_size(
        tmp_path: Path) -> None:
    needs_a_real_disk(tmp_path)
    size = file_writer.DIRECT_MIN + 5  # the last chunk: 5 bytes, padded on disk
    data = os.urandom(size)
    writer = IncomingFiles(tmp_path, TID, Manifest([chunked_entry("big.bin", data)]), {})
    writer.claim_roots()
    count = chunk_count(size)
    # Out of order, and one chunk begun, abandoned (the sender went away) and sent again.
    writer.write(0, 3, 0, [memoryview(data)[3 << 20:][:1000]], False)
    writer.abort_chunks()
    write_chunks(writer, data, [3, count - 1, *range(3), *range(4, count - 1)])
    partial = tmp_path / file_writer.partial_name(TID, 0)
    assert partial.stat().st_size == size - 5 + 4096
    assert writer.finish(0) == "big.bin"
    writer.close()
    got = tmp_path / "big.bin"
    assert (got.stat().st_size, got.stat().st_mode & 0o777, got.stat().st_mtime_ns) == \
        (size, 0o640, MTIME)
    assert cached(got) <= 4096  # at most the block the cut went through
    assert got.read_bytes() == data
    assert not partial.exists()


@pytest.mark.parametrize(("size", "direct"), [(file_writer.DIRECT_MIN - 1, True),
                                              (file_writer.DIRECT_MIN, False)],
                         ids=["smaller-than-the-threshold", "direct-writes-off"])
def test_other_files_go_through_the_page_cache(tmp_path: Path, size: int,
                                               direct: bool) -> None:
    data = os.urandom(size)
    writer = IncomingFiles(tmp_path, TID, Manifest([chunked_entry("f.bin", data)]), {},
                           direct=direct)
    writer.claim_roots()
    write_chunks(writer, data, list(range(chunk_count(size))))
    writer.finish(0)
    writer.close()
    assert cached(tmp_path / "f.bin") == -(-size // 4096) * 4096
    assert (tmp_path / "f.bin").read_bytes() == data


def test_chunks_land_on_the_disk_while_the_next_ones_are_written(tmp_path: Path) -> None:
    size = file_writer.DIRECT_MIN
    data = os.urandom(size)
    writer = IncomingFiles(tmp_path, TID, Manifest([chunked_entry("big.bin", data)]), {})
    writer.claim_roots()
    view = memoryview(data)
    entry = writer.manifest.files[0]
    landings = []
    for chunk in range(chunk_count(size)):
        start, length = chunk_span(size, chunk)
        digest, landing = writer.write_piece(0, chunk, 0, [view[start:start + length]], True)
        assert digest == entry.hash_of(chunk)  # hashed here, at once
        assert landing is not None  # written on a disk thread
        landings.append(landing)
        assert len(writer._landing) <= file_writer.MAX_LANDING  # a bounded number waits
    for landing in landings:
        assert landing.result(timeout=30) is None
    assert writer.finish(0) == "big.bin"
    writer.close()
    assert (tmp_path / "big.bin").read_bytes() == data


@pytest.fixture
def tiny_disk(tmp_path: Path, tmpfs: Callable[[Path, str], Path]) -> Path:
    """A 3 MiB tmpfs, mounted for the test and unmounted after it."""
    return tmpfs(tmp_path / "tiny", "3m")


def test_a_full_disk_under_a_chunk_in_flight_is_a_clear_error(tiny_disk: Path) -> None:
    data = os.urandom(file_writer.DIRECT_MIN)
    writer = IncomingFiles(tiny_disk, TID, Manifest([chunked_entry("big.bin", data)]), {})
    writer.claim_roots()
    view = memoryview(data)
    failed_in = ""
    with pytest.raises(DiskFull, match=r"the disk holding .*tiny is full"):
        for chunk in range(8):  # 8 MiB into 3
            start, length = chunk_span(len(data), chunk)
            failed_in = "write_piece"
            _, landing = writer.write_piece(0, chunk, 0, [view[start:start + length]], True)
            if landing is None:
                pytest.skip("no direct writes on a tmpfs here (Linux before 6.6)")
            failed_in = "the disk thread"
            landing.result(timeout=30)
    assert failed_in == "the disk thread"
    writer.discard()
    writer.close()
    assert list(tiny_disk.iterdir()) == []  # no partial file left


def test_writes_in_flight_finish_before_a_chunk_is_fetched_again(tmp_path: Path) -> None:
    data = os.urandom(file_writer.DIRECT_MIN)
    writer = IncomingFiles(tmp_path, TID, Manifest([chunked_entry("big.bin", data)]), {})
    writer.claim_roots()
    view = memoryview(data)
    landings = []
    for chunk in range(4):
        start, length = chunk_span(len(data), chunk)
        landings.append(writer.write_piece(0, chunk, 0, [view[start:start + length]], True)[1])
    writer.abort_chunks()  # the sender went away: nothing in flight afterwards
    assert all(landing is not None and landing.done() for landing in landings)
    assert writer._landing == []
    writer.close()
