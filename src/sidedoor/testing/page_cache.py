"""How much of a file the kernel holds in its page cache (for tests of direct writes)."""

from __future__ import annotations

import shutil
import subprocess
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
