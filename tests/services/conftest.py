"""Fixtures shared by the service tests."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidedoor.testing.disks import mounted_tmpfs


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[Path, str], Path]]:
    """``tmpfs(where, "24m")`` mounts a small tmpfs at ``where``; all are unmounted
    after the test. Skips the test when not root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    with contextlib.ExitStack() as mounts:
        yield lambda where, size: mounts.enter_context(mounted_tmpfs(where, size))
