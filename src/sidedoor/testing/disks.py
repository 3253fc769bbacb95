"""Disks for tests: small tmpfs mounts, and how much of a file sits in the page cache."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path


def fincore_missing() -> bool:
    return shutil.which("fincore") is None


def cached_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache, by util-linux's ``fincore``."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    return int(out.split()[0])


def on_tmpfs(path: Path) -> bool:
    """A tmpfs keeps its files in the page cache: nothing is written around it."""
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True,
                         text=True, check=True, timeout=10).stdout
    return out.strip() == "tmpfs"


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``24m``) mounted at ``mount`` (made here), unmounted after
    (root only)."""
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                   check=True, timeout=10)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=10)
