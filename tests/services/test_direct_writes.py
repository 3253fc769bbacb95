"""Direct writes on real files: aligned stages, the padded tail, and the fall-back when
a device refuses (a loop device with 4 KiB sectors, made for the test)."""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidedoor.services.direct_writes import DIRECT_FLAG, DirectChunk
from sidedoor.testing.disks import cached_bytes, fincore_missing, on_tmpfs

pytestmark = pytest.mark.skipif(not DIRECT_FLAG, reason="no O_DIRECT on this system")


def resident(path: Path) -> int:
    if fincore_missing():
        pytest.skip("fincore (util-linux) is missing")
    return cached_bytes(path)


@contextlib.contextmanager
def direct_fd(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | DIRECT_FLAG, 0o600)
    try:
        yield fd
    finally:
        os.close(fd)


def test_pieces_are_written_a_stage_at_a_time_and_the_tail_padded(tmp_path: Path) -> None:
    data = os.urandom(25_004)
    target = tmp_path / "f.part"
    with direct_fd(target) as fd:
        chunk = DirectChunk(mmap.mmap(-1, 8192), 4096, fd)
        view = memoryview(data)
        at = 0
        for size in (1, 5000, 20_000, 3):  # pieces of any size, across stage ends
            chunk.add([view[at:at + size]])
            at += size
            assert chunk.at == 4096 + at
            # Whole stages are on disk already; the rest waits in the stage.
            written = (at // 8192) * 8192
            assert target.stat().st_size == (4096 + written if written else 0)
        chunk.end()
        chunk.release()
    assert not chunk.refused
    got = target.read_bytes()
    assert len(got) == 4096 + 28_672  # 25,004 bytes, the last block padded with zeros
    assert got[:4096] == bytes(4096)  # before the chunk: untouched (a hole)
    assert got[4096:4096 + len(data)] == data
    assert got[4096 + len(data):] == bytes(28_672 - len(data))


def test_what_is_written_directly_does_not_fill_the_page_cache(tmp_path: Path) -> None:
    if on_tmpfs(tmp_path):
        pytest.skip("a tmpfs file lives in the page cache")
    data = os.urandom(4 << 20)
    target = tmp_path / "f.part"
    with direct_fd(target) as fd:
        chunk = DirectChunk(mmap.mmap(-1, 1 << 20), 0, fd)
        chunk.add([memoryview(data)])
        chunk.end()
    assert resident(target) == 0
    assert target.read_bytes() == data
    assert resident(target) == len(data)  # the way back in works as ever


def test_a_chunk_starts_aligned_with_a_stage_of_whole_blocks(tmp_path: Path) -> None:
    with direct_fd(tmp_path / "f") as fd:
        with pytest.raises(ValueError, match="aligned position"):
            DirectChunk(mmap.mmap(-1, 8192), 100, fd)
        with pytest.raises(ValueError, match="whole blocks"):
            DirectChunk(mmap.mmap(-1, 6000), 0, fd)


@pytest.fixture
def four_k_disk(tmp_path: Path) -> Iterator[Path]:
    """An ext4 on a loop device with 4 KiB logical sectors, mounted for the test."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    for tool in ("losetup", "mkfs.ext4", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing")
    image, mount = tmp_path / "disk.img", tmp_path / "disk"
    mount.mkdir()
    with image.open("wb") as f:
        f.truncate(32 << 20)
    device = subprocess.run(["losetup", "--find", "--show", "--sector-size", "4096",
                             str(image)], capture_output=True, text=True, check=True,
                            timeout=30).stdout.strip()
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", device], check=True, timeout=60)
        subprocess.run(["mount", device, str(mount)], check=True, timeout=30)
        try:
            yield mount
        finally:
            subprocess.run(["umount", str(mount)], check=False, timeout=30)
    finally:
        subprocess.run(["losetup", "-d", device], check=False, timeout=30)


def test_a_refused_direct_write_goes_through_the_page_cache_instead(
        four_k_disk: Path) -> None:
    data = os.urandom(5000)
    target = four_k_disk / "f.part"
    with direct_fd(target) as fd:
        # Blocks of 512 bytes, as on most disks: this device wants 4 KiB, and says no.
        chunk = DirectChunk(mmap.mmap(-1, 4096), 0, fd, align=512)
        chunk.add([memoryview(data)])  # the first 4096 bytes: a whole 4 KiB block, taken
        assert not chunk.refused
        chunk.end()  # 904 bytes, padded to 1024: refused
        assert chunk.refused
        # The descriptor writes the ordinary way from now on.
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & DIRECT_FLAG
    # Exactly the bytes: the fall-back writes no padding.
    assert target.read_bytes() == data
