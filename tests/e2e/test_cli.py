"""The `sidedoor` command, run as a user runs it: ``python -m sidedoor`` subprocesses.

Every call has a timeout; every node started here listens on 127.0.0.1 only and is
stopped (or killed) at teardown. A CLI process costs about a second of start-up, so
each behaviour is shown once in a real subprocess (exit code, stderr, signals), and
the longer tables of bad input go through the same click command in process
(`sd_in`), which exercises the same code in a fraction of the time.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sidedoor.cli.main import cli
from sidedoor.daemon import wait_for_exit
from sidedoor.home import CONTROL_FILE, LOCK_FILE, LOG_FILE
from sidedoor.identity import KEY_FILE, load_or_create_identity

CALL_TIMEOUT = 30.0
COMMANDS = ["id", "name", "up", "down", "status", "ping"]
Result = subprocess.CompletedProcess[str]


# ------------------------------------------------------------------ helpers

def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SIDEDOOR_HOME"}
    env["COLUMNS"] = "200"
    return env


def _argv(home: Path | None, args: tuple[str, ...]) -> list[str]:
    argv = [sys.executable, "-m", "sidedoor"]
    if home is not None:
        argv += ["--home", str(home)]
    return argv + list(args)


def sd(home: Path | None, *args: str, timeout: float = CALL_TIMEOUT) -> Result:
    """Run ``python -m sidedoor --home HOME ARGS...`` in a subprocess."""
    return subprocess.run(_argv(home, args), capture_output=True, text=True, timeout=timeout,
                          env=_env(), stdin=subprocess.DEVNULL, check=False)


def sd_in(home: Path | None, *args: str) -> Result:
    """The same command line, run in this process through click (for long tables of cases)."""
    argv = (["--home", str(home)] if home is not None else []) + list(args)
    result = CliRunner().invoke(cli, argv, prog_name="sidedoor", env={"SIDEDOOR_HOME": None})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a crash, not a handled error
    return subprocess.CompletedProcess(argv, result.exit_code, result.stdout, result.stderr)


def control(home: Path, method: str, path: str, body: Any = None) -> Any:
    """A call to the node's control API with its bearer token, as the CLI makes it."""
    info = json.loads((home / CONTROL_FILE).read_text())
    request = urllib.request.Request(
        f"http://127.0.0.1:{info['port']}{path}", method=method,
        data=json.dumps(body if body is not None else {}).encode() if method != "GET" else None,
        headers={"Authorization": f"Bearer {info['token']}",
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=CALL_TIMEOUT) as resp:
        return json.loads(resp.read())


def ok(result: Result) -> Result:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result


def as_json(result: Result) -> Any:
    return json.loads(ok(result).stdout)


def failed(result: Result, *words: str) -> str:
    """Exit 1 with one clear line on stderr, no traceback, containing ``words``."""
    assert result.returncode == 1, (result.args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith("error:"), message
    for word in words:
        assert word in message, (word, message)
    return message


def usage_error(result: Result) -> None:
    assert result.returncode == 2, (result.args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "Usage:" in result.stderr, result.stderr


def new_identity(home: Path) -> str:
    """Create an identity without a subprocess; return its address."""
    identity, _ = load_or_create_identity(home)
    return identity.address


def free_port() -> int:
    with socket.socket() as probe:  # free a moment ago; nobody listens there
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def lock_free(home: Path) -> bool:
    """No process holds the home's lock: no node runs for it."""
    try:
        fd = os.open(home / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def stop_node(home: Path) -> None:
    """Best effort, for teardown: `down`, else kill the pid named in the lock file."""
    if lock_free(home):
        return
    with contextlib.suppress(Exception):
        sd_in(home, "down")
    if wait_for_exit(home, timeout=5):
        return
    with contextlib.suppress(OSError, ValueError):
        os.kill(int((home / LOCK_FILE).read_text().strip()), signal.SIGKILL)


@dataclass
class Detached:
    home: Path
    address: str
    port: int
    pid: int

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.contextmanager
def detached_node(home: Path) -> Iterator[Detached]:
    """``sidedoor up --detach --host 127.0.0.1`` for the block; stopped afterwards."""
    try:
        result = ok(sd(home, "up", "--detach", "--host", "127.0.0.1"))
        assert "Node started" in result.stdout
        status = as_json(sd_in(home, "status", "--json"))
        assert status["address"] in result.stdout
        yield Detached(home, status["address"], status["port"], status["pid"])
    finally:
        stop_node(home)


UP_LOOPBACK = ("up", "--detach", "--host", "127.0.0.1", "--no-discovery")


@contextlib.contextmanager
def detached_nodes(homes: dict[str, Path], up: tuple[str, ...] = UP_LOOPBACK
                   ) -> Iterator[tuple[dict[str, Detached], dict[str, Result]]]:
    """``up --detach`` for every home at once; the nodes by key, and what each ``up``
    printed. All are stopped (or killed) when the block ends, whatever happened."""
    procs = {key: subprocess.Popen(_argv(home, up), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                   text=True, env=_env())
             for key, home in homes.items()}
    try:
        started = {}
        for key, proc in procs.items():
            out, err = proc.communicate(timeout=CALL_TIMEOUT)
            started[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        nodes = {}
        for key, home in homes.items():
            if started[key].returncode != 0:
                continue  # the caller checks `started`
            status = as_json(sd_in(home, "status", "--json"))
            nodes[key] = Detached(home, status["address"], status["port"], status["pid"])
        yield nodes, started
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        for home in homes.values():
            stop_node(home)


@pytest.fixture(scope="module")
def node_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Detached]:
    """One background node shared by the tests of this module (they do not stop it)."""
    with detached_node(tmp_path_factory.mktemp("cli") / "a") as node:
        yield node


# ----------------------------------------------------------- identity, name

def test_id_and_name(tmp_path: Path) -> None:
    home = tmp_path / "new" / "home"  # created on first use
    first = ok(sd(home, "id"))
    assert "Created a new identity" in first.stdout
    key = home / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700

    assert "Ada Lovelace" in ok(sd(home, "name", "  Ada Lovelace ")).stdout
    info = as_json(sd(home, "id", "--json"))
    assert info["created"] is False  # the same key, loaded again
    assert info["name"] == "Ada Lovelace"
    assert info["address"].startswith("sd") and len(info["address"]) == 58
    assert info["address"] in first.stdout and info["fingerprint"] in first.stdout
    assert len(info["fingerprint"].split("-")) == 4
    assert info["home"] == str(home)


def test_bad_names_are_usage_errors(home: Path) -> None:
    for bad in (" ", "", "x" * 65):
        usage_error(sd_in(home, "name", bad))
    usage_error(sd_in(home, "name"))


def test_readable_key_file_is_refused(home: Path) -> None:
    new_identity(home)
    key = home / KEY_FILE
    key.chmod(0o644)
    try:
        for result in (sd(home, "id"), sd(home, "up", "--host", "127.0.0.1"),
                       sd_in(home, "up", "--detach", "--host", "127.0.0.1")):
            message = failed(result, "chmod 600", str(key))
            assert "other users" in message
        assert not (home / CONTROL_FILE).exists()
    finally:
        stop_node(home)
    assert stat.S_IMODE(key.stat().st_mode) == 0o644  # reported, not silently "fixed"


# ------------------------------------------------------------ a running node

def test_status_of_a_running_node(node_a: Detached) -> None:
    status = as_json(sd(node_a.home, "status", "--json"))
    assert status["running"] is True
    assert status["address"] == node_a.address and status["pid"] == node_a.pid
    assert status["port"] == node_a.port > 0
    assert status["listening"] == [node_a.addr]
    assert 0 <= status["uptime"] < 120
    assert isinstance(status["sessions"], list)
    assert stat.S_IMODE((node_a.home / CONTROL_FILE).stat().st_mode) == 0o600

    text = ok(sd_in(node_a.home, "status")).stdout
    assert "Running" in text and node_a.address in text and node_a.addr in text


def test_name_shows_in_status(node_a: Detached) -> None:
    ok(sd(node_a.home, "name", "Grace Hopper"))
    assert as_json(sd_in(node_a.home, "status", "--json"))["name"] == "Grace Hopper"
    assert as_json(sd_in(node_a.home, "id", "--json"))["name"] == "Grace Hopper"


def test_one_node_per_home(node_a: Detached) -> None:
    failed(sd(node_a.home, "up", "--detach", "--host", "127.0.0.1"), "already running")
    failed(sd(node_a.home, "up", "--host", "127.0.0.1"), "already running")
    assert as_json(sd_in(node_a.home, "status", "--json"))["pid"] == node_a.pid


def test_ping_without_a_running_node(node_a: Detached, home: Path) -> None:
    new_identity(home)
    text = ok(sd(home, "ping", node_a.address, "--addr", node_a.addr, "-c", "2"))
    assert "reachable; not a contact" in text.stdout
    assert "round trip 2" in text.stdout

    data = as_json(sd_in(home, "ping", node_a.address, "--addr", node_a.addr, "--json"))
    assert data["reachable"] is True and data["contact"] is False
    assert data["address"] == node_a.address and data["addr"] == node_a.addr
    assert len(data["rtts_ms"]) == 3 and all(rtt >= 0 for rtt in data["rtts_ms"])
    assert data["pattern"] == "IK"  # the first ping taught this home the node's static key
    assert not (home / CONTROL_FILE).exists()  # the one-shot node did not linger


def test_ping_through_a_running_node_then_down(node_a: Detached, home: Path) -> None:
    with detached_node(home) as b:
        data = as_json(sd(home, "ping", node_a.address, "--addr", node_a.addr, "--json"))
        assert data["reachable"] is True and len(data["rtts_ms"]) == 3
        # B's node made the session (its log says so), not a one-shot node in the command.
        assert f"session out with {node_a.address}" in (home / LOG_FILE).read_text()

        assert "Node stopped" in ok(sd(home, "down")).stdout
        assert lock_free(home)  # the lock is free: the process is gone
        assert not (home / CONTROL_FILE).exists()
        failed(sd(home, "status"), "no node is running")
        failed(sd_in(home, "down"), "no node is running")
        stopped = sd_in(home, "status", "--json")
        assert stopped.returncode == 1 and json.loads(stopped.stdout)["running"] is False
        assert b.pid != node_a.pid


def test_ping_errors(node_a: Detached, home: Path) -> None:
    new_identity(home)
    a = node_a.address
    typo = a[:20] + ("x" if a[20] != "x" else "y") + a[21:]
    failed(sd(home, "ping", typo, "--addr", node_a.addr), "this address has a typo")
    failed(sd(home, "ping", a, "--addr", "127.0.0.1"), "HOST:PORT")

    for bad in (typo, a[:-3], a + "q", a[:5] + "!" + a[6:]):
        failed(sd_in(home, "ping", bad, "--addr", node_a.addr), "this address has a typo")
    failed(sd_in(home, "ping", "hello", "--addr", node_a.addr), "not a sidedoor address")
    for addr, words in (("127.0.0.1:99999", "out of range"), ("127.0.0.1:0", "out of range"),
                        ("127.0.0.1:http", "not a port number"), (":7070", "HOST:PORT"),
                        ("", "HOST:PORT")):
        failed(sd_in(home, "ping", a, "--addr", addr), words)
    # Fine addresses, wrong place: someone else's node, and nobody at all.
    other = new_identity(home.parent / "other")
    failed(sd_in(home, "ping", other, "--addr", node_a.addr, "--timeout", "5"),
           "not the one you asked for")
    port = free_port()
    failed(sd_in(home, "ping", a, "--addr", f"127.0.0.1:{port}", "--timeout", "3"),
           f"127.0.0.1:{port}")
    failed(sd_in(home, "ping", new_identity(home), "--addr", node_a.addr), "own address")


def test_debug_shows_the_traceback(home: Path) -> None:
    result = sd(home, "--debug", "ping", "sdnope", "--addr", "127.0.0.1:1")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "InvalidAddress" in result.stderr


# -------------------------------------------------------------------- usage

def test_usage_errors_exit_2(home: Path) -> None:
    usage_error(sd(home, "frobnicate"))
    usage_error(sd(home, "status", "--frob"))
    for args in (("ping",), ("ping", "sdabc", "--addr", "1.2.3.4:1", "-c", "0"),
                 ("ping", "sdabc", "--addr", "1.2.3.4:1", "--timeout", "0"),
                 ("up", "--port", "70000"), ("up", "--port", "x"), ("--no-such-option", "id"),
                 ("id", "extra"), ("down", "--json")):
        usage_error(sd_in(home, *args))
    assert not (home / KEY_FILE).exists()  # nothing ran


def test_every_command_has_help_with_an_example() -> None:
    real = ok(sd(None, "up", "--help")).stdout
    assert "Example" in real and "--detach" in real
    for command in COMMANDS:
        text = ok(sd_in(None, command, "--help")).stdout
        assert "Example" in text, (command, text)
        assert text.startswith(f"Usage: sidedoor {command}"), text
    top = ok(sd_in(None, "--help")).stdout
    assert all(command in top for command in COMMANDS)
    assert "sidedoor up --detach" in top  # the overview walks through first steps


# --------------------------------------------------------------- foreground

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_foreground_up_stops_cleanly_on_signal(home: Path, sig: signal.Signals) -> None:
    control = home / CONTROL_FILE
    proc = subprocess.Popen(_argv(home, ("up", "--host", "127.0.0.1")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=_env())
    try:
        deadline = time.monotonic() + 15
        while not control.exists():  # written once the node and its API are up
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the node did not start within 15 s"
            time.sleep(0.05)
        assert json.loads(control.read_text())["pid"] == proc.pid
        start = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
        assert time.monotonic() - start < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, (out, err)
    assert "Traceback" not in err
    assert "Node stopped" in out
    assert not control.exists()
    assert lock_free(home)


# ------------------------------------------ up --detach next to a live node

class _Answer(http.server.BaseHTTPRequestHandler):
    """A node's control API in trouble: an error in JSON, a bug in plain text, or silence."""

    mode = "error"
    release = threading.Event()

    def do_GET(self) -> None:
        if self.mode == "slow":
            self.release.wait(10)
            return
        if self.mode == "error":
            body, kind = b'{"error": {"type": "X", "message": "busy right now"}}', "json"
        else:
            body, kind = b"500 Internal Server Error", "plain"
        self.send_response(503 if self.mode == "error" else 500)
        self.send_header("Content-Type", f"application/{kind}" if kind == "json" else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _troubled_node(home: Path, mode: str) -> Iterator[str]:
    """``home`` as a live node with a troubled API leaves it: its lock held, its
    control.json naming a server that answers in ``mode``. Yields control.json's text."""
    new_identity(home)
    handler = type("Handler", (_Answer,), {"mode": mode, "release": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        control = json.dumps({"port": server.server_address[1], "token": "t", "pid": os.getpid()})
        (home / CONTROL_FILE).write_text(control)
        yield control
    finally:
        os.close(fd)
        handler.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("mode", ["error", "bug", "slow"])
def test_up_detach_does_not_touch_a_node_whose_api_fails(home: Path, mode: str) -> None:
    """Only "no node runs" lets `up --detach` start one; any other trouble asking is
    reported, and the live node keeps its control.json (it was deleted)."""
    with _troubled_node(home, mode) as control:
        start = time.monotonic()
        message = failed(sd_in(home, "up", "--detach", "--host", "127.0.0.1", "--no-discovery"),
                         "cannot tell whether the node", "not starting another")
        assert {"error": "busy right now", "bug": "HTTP 500",
                "slow": "did not answer within 5 s"}[mode] in message
        assert time.monotonic() - start < 10
        assert (home / CONTROL_FILE).read_text() == control
        assert not (home / "startup-error.txt").exists()  # no second node was started


def test_up_detach_refuses_while_the_lock_is_held(home: Path) -> None:
    """A control.json whose API does not answer looks stale; but a process holds the
    lock, so a node lives: no second node, and its control.json stays."""
    with _troubled_node(home, "error"):
        control = json.dumps({"port": free_port(), "token": "t", "pid": os.getpid()})
        (home / CONTROL_FILE).write_text(control)  # nobody listens there
        failed(sd_in(home, "up", "--detach", "--host", "127.0.0.1", "--no-discovery"),
               "already running", f"pid {os.getpid()}")
        assert (home / CONTROL_FILE).read_text() == control


def test_up_detach_replaces_a_stale_control_file(home: Path) -> None:
    """A control.json left by a crash (no lock held, nobody listening) does not stop `up`."""
    new_identity(home)
    (home / CONTROL_FILE).write_text(json.dumps({"port": free_port(), "token": "t", "pid": 1}))
    try:
        ok(sd(home, "up", "--detach", "--host", "127.0.0.1", "--no-discovery"))
        assert as_json(sd_in(home, "status", "--json"))["running"] is True
    finally:
        stop_node(home)


# --------------------------------------------------- how long ago, one way

def test_one_way_to_say_how_long_ago() -> None:
    from sidedoor.cli import common, main, people

    assert main._ago is common._ago and people._ago is common._ago
    now = 1_700_000_000.0
    said = {seconds: common._ago(now - seconds, now)
            for seconds in (0, 89, 90, 5399, 5400, 172799, 172800, 10 * 86400)}
    assert said == {0: "just now", 89: "just now", 90: "1 min ago", 5399: "89 min ago",
                    5400: "1 h ago", 172799: "47 h ago", 172800: "2 days ago",
                    10 * 86400: "10 days ago"}
    assert common._ago(None) == common._ago(0) == "never"


def test_status_says_when_the_node_started(node_a: Detached) -> None:
    text = ok(sd_in(node_a.home, "status")).stdout
    assert re.search(r"Running \(pid \d+, started (just now|\d+ min ago)\)", text), text
