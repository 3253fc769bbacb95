"""`sidedoor demo`: the one-machine tour runs, says what it did, and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def demo_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("sidedoor-demo-*")}


def test_demo_pairs_two_nodes_and_cleans_up() -> None:
    before = demo_folders()
    result = subprocess.run([sys.executable, "-m", "sidedoor", "demo"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Bob's request was accepted by Alice" in out
    assert "Alice's contacts: Bob" in out and "Bob's contacts: Alice" in out
    assert "reachable as a contact" in out and "as a stranger" in out
    assert demo_folders() == before


def test_demo_keep_serves_the_cli_until_ctrl_c() -> None:
    before = demo_folders()
    proc = subprocess.Popen([sys.executable, "-m", "sidedoor", "demo", "--keep"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Press Ctrl-C" in line or not line:
                break
        home = next(ln.split("--home ")[1].split()[0] for ln in lines if "--home" in ln)
        status = subprocess.run([sys.executable, "-m", "sidedoor", "--home", home, "contacts",
                                 "--json"], capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stderr
        assert '"Bob"' in status.stdout
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    assert demo_folders() == before
