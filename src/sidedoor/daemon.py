"""Running a node as a program: logging, signals, foreground and background (detached) runs."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidedoor.control.server import ControlServer
from sidedoor.errors import NodeAlreadyRunning, NodeError
from sidedoor.home import CONTROL_FILE, LOCK_FILE, LOG_FILE, ensure_home
from sidedoor.node import Node

DETACH_START_TIMEOUT = 15.0
STARTUP_ERROR_FILE = "startup-error.txt"


def setup_logging(home: Path, *, debug: bool = False, to_stderr: bool = False) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    handler = logging.handlers.RotatingFileHandler(
        home / LOG_FILE, maxBytes=5 << 20, backupCount=3, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    if to_stderr:
        stream = logging.StreamHandler()
        stream.setLevel(logging.DEBUG if debug else logging.WARNING)
        root.addHandler(stream)


async def run_node(
    home: Path,
    *,
    host: str = "0.0.0.0",
    port: int | None = None,
    discovery: bool = True,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Run a node and its control API until SIGINT/SIGTERM or `sidedoor down`."""
    loop = asyncio.get_running_loop()
    async with Node(home, host=host, port=port, discovery=discovery) as node:
        control = ControlServer(node)
        # Handlers go in before control.json appears: whoever sees that file may signal us.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, node.stop)
        try:
            await control.start()
            if on_ready is not None:
                status = node.status()
                status["control_port"] = control.port
                on_ready(status)
            await node.wait_stopped()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await control.aclose()
    logging.getLogger(__name__).info("node stopped")


def start_detached(home: Path, *, host: str, port: int | None, debug: bool,
                   discovery: bool = True) -> int:
    """Start ``sidedoor up`` in the background; return its pid once its API answers.

    Refuses (NodeAlreadyRunning) while a process holds the home's lock: that node is
    alive even if its API did not answer, and its control.json must stay.
    """
    ensure_home(home)
    try:
        fd = os.open(home / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        pass
    else:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise NodeAlreadyRunning(
                f"a node is already running for {home} (pid {pid or '?'}); "
                f"stop it with `sidedoor --home {home} down`"
            ) from None
        finally:
            os.close(fd)  # and with it our hold on the lock, for the new node to take
    # Nobody holds the lock: a control.json here is stale (left by a crash).
    error_file = home / STARTUP_ERROR_FILE
    with contextlib.suppress(FileNotFoundError):
        error_file.unlink()
    with contextlib.suppress(FileNotFoundError):
        (home / CONTROL_FILE).unlink()
    cmd = [sys.executable, "-m", "sidedoor", "--home", str(home)]
    if debug:
        cmd.append("--debug")
    cmd += ["up", "--host", host]
    if port is not None:
        cmd += ["--port", str(port)]
    if not discovery:
        cmd.append("--no-discovery")
    with open(error_file, "wb") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True, close_fds=True,
        )
    deadline = time.monotonic() + DETACH_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            message = error_file.read_text(errors="replace").strip().splitlines()
            raise NodeError(message[-1] if message else f"the node exited with {proc.returncode}")
        if (home / CONTROL_FILE).exists():
            return proc.pid
        time.sleep(0.05)
    proc.terminate()
    raise NodeError(f"the node did not start within {DETACH_START_TIMEOUT:g} s; "
                    f"see {home / LOG_FILE}")


def wait_for_exit(home: Path, timeout: float = 10.0) -> bool:
    """Wait until the node of ``home`` has released its lock (it has fully stopped)."""
    deadline = time.monotonic() + timeout
    path = home / LOCK_FILE
    while time.monotonic() < deadline:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
        time.sleep(0.05)
    return False
