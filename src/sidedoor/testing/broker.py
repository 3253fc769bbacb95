"""A real `sidedoor broker` process on loopback, for tests and benchmarks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ADDRESS_PREFIX = "sidedoor-broker://"


def start_broker(data: Path, *extra: str, port: int = 0,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """Start ``sidedoor broker`` on 127.0.0.1 (``port`` 0: the OS picks); the process and
    the address it printed. ``extra``: more ``sidedoor broker`` options."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidedoor", "broker", "--listen", f"127.0.0.1:{port}",
         "--data", str(data), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        start_new_session=True)
    assert proc.stdout is not None
    for _ in range(20):
        line = proc.stdout.readline().strip()
        if line.startswith(ADDRESS_PREFIX):
            return proc, line
    stop_broker(proc)
    raise RuntimeError("the broker did not print its address")


def stop_broker(proc: subprocess.Popen[str]) -> None:
    """Kill it (SIGKILL: a broker must survive that) and reap it."""
    proc.kill()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()
