"""The daemon keeps big buffers in the heap (glibc): checked in a process of its own."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

# Where does a fresh 4 MiB buffer live: in the [heap] mapping, or a mapping of its own?
_WHERE = """
import ctypes, sys
from sidedoor import allocator
if sys.argv[1] == "tuned":
    assert allocator.tune_for_bulk_io()
buf = bytearray(4 << 20)
address = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
for line in open("/proc/self/maps"):
    span, *rest = line.split()
    low, high = (int(x, 16) for x in span.split("-"))
    if low <= address < high:
        print("heap" if line.rstrip().endswith("[heap]") else "own mapping")
"""


@pytest.mark.parametrize(("mode", "expected"), [("plain", "own mapping"), ("tuned", "heap")])
def test_big_buffers_come_from_the_heap_once_tuned(mode: str, expected: str) -> None:
    out = subprocess.run([sys.executable, "-c", _WHERE, mode], capture_output=True,
                         text=True, timeout=30, check=True).stdout.strip()
    assert out == expected
