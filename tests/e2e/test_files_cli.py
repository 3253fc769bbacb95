"""Files on the command line, between two real ``sidedoor up`` processes.

Ann and Bob run as background nodes on 127.0.0.1 for the whole module and become
contacts through the CLI. Files go with ``sidedoor send`` in a real subprocess (the
progress bar, the exit code); the rest goes through the same click commands in
process. Kill tests SIGKILL a node halfway and start it again, then check that the
transfer completed and that no more than one window was sent twice.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli import (
    UP_LOOPBACK,
    Detached,
    as_json,
    detached_nodes,
    failed,
    ok,
    sd,
    sd_in,
    stop_node,
    usage_error,
)

from sidedoor.proto.transfer_receiver import WINDOW_BYTES
from sidedoor.services.transfers import PIECE, human_bytes
from sidedoor.testing.disks import cached_bytes, fincore_missing, on_tmpfs

MiB = 1 << 20
UP = UP_LOOPBACK
# Re-sent at most: the window of requests in flight, and one chunk in the sender's hands.
RESEND_BOUND = WINDOW_BYTES + PIECE


def start(home: Path) -> Detached:
    ok(sd(home, *UP))
    status = as_json(sd_in(home, "status", "--json"))
    return Detached(home, status["address"], status["port"], status["pid"])


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Detached]]:
    base = tmp_path_factory.mktemp("files")
    homes = {"Ann": base / "ann", "Bob": base / "bob"}
    for name, home in homes.items():
        ok(sd_in(home, "name", name))
    with detached_nodes(homes, UP) as (nodes, started):
        for result in started.values():
            ok(result)
        ann, bob = nodes["Ann"], nodes["Bob"]
        ok(sd_in(bob.home, "add", ann.address, "--addr", ann.addr))
        ok(sd_in(ann.home, "requests", "accept", "1"))
        yield nodes


def transfer(node: Detached, tid: str) -> dict[str, Any]:
    found = [t for t in as_json(sd_in(node.home, "transfers", "--json"))
             if t["id"].startswith(tid)]
    return dict(found[0]) if found else {"status": "not there"}


def until(node: Detached, tid: str, *statuses: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info = transfer(node, tid)
        if info["status"] in statuses:
            return info
        assert time.monotonic() < deadline, info
        time.sleep(0.05)


def write_random(path: Path, size: int, mode: int, mtime_ns: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def same_tree(src: Path, dst: Path) -> int:
    """Byte-identical files with the same modes and mtimes; returns how many files."""
    count = 0
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        for name in files:
            a, b = Path(root) / name, dst / rel / name
            sa, sb = a.stat(), b.stat()
            assert (sa.st_size, sa.st_mode, sa.st_mtime_ns) == \
                (sb.st_size, sb.st_mode, sb.st_mtime_ns), b
            assert a.read_bytes() == b.read_bytes(), b
            count += 1
        for name in dirs:
            assert (dst / rel / name).is_dir()
    return count


def no_partials(folder: Path) -> None:
    left = [p for p in folder.rglob(".sidedoor-*")]
    assert not left, left


# -------------------------------------------------------------------- tests

def test_a_200_mib_file_arrives_byte_identical(pair: dict[str, Detached],
                                               tmp_path: Path) -> None:
    ann, bob = pair["Ann"], pair["Bob"]
    src = tmp_path / "big.bin"
    write_random(src, 200 * MiB, 0o640, 1_700_000_000_123_456_789)
    dest = tmp_path / "inbox"
    ok(sd_in(bob.home, "config", "set", "downloads", str(dest)))
    ok(sd_in(bob.home, "config", "set", "auto-accept", "Ann"))
    try:
        result = ok(sd(ann.home, "send", str(src), "--to", "Bob", "-m", "the big one",
                       timeout=60))
    finally:
        ok(sd_in(bob.home, "config", "unset", "auto-accept"))
    assert "Sent big.bin (1 file) to Bob; they have everything." in result.stdout
    got = dest / "big.bin"
    assert got.stat().st_size == 200 * MiB
    assert (got.stat().st_mode & 0o777, got.stat().st_mtime_ns) == \
        (0o640, 1_700_000_000_123_456_789)
    if not fincore_missing() and not on_tmpfs(dest):
        assert cached_bytes(got) <= 4096  # written around the page cache (direct-writes)
    with src.open("rb") as a, got.open("rb") as b:
        while chunk := a.read(8 * MiB):
            assert chunk == b.read(8 * MiB)
    (sent,) = [t for t in as_json(sd_in(ann.home, "transfers", "--json"))
               if t["note"] == "the big one"]
    assert sent["status"] == "done" and sent["bytes_sent"] == 200 * MiB
    received = transfer(bob, sent["id"])
    assert received["status"] == "done" and received["bytes_received"] == 200 * MiB
    no_partials(dest)


def test_a_folder_of_1000_files_after_accepting(pair: dict[str, Detached],
                                                tmp_path: Path) -> None:
    ann, bob = pair["Ann"], pair["Bob"]
    src = tmp_path / "photos"
    for i in range(1000):
        sub = src / f"d{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"f{i:04}.txt"
        path.write_bytes(os.urandom(i * 7 % 5000))
        os.chmod(path, 0o600 if i % 3 else 0o755)
        os.utime(path, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
    (src / "empty").mkdir()
    dest = tmp_path / "there"
    dest.mkdir()
    (dest / "photos").mkdir()  # taken: the folder arrives as "photos (1)"
    sent = as_json(sd_in(ann.home, "send", str(src), "--to", "Bob", "--background", "--json"))
    assert sent["files"] == 1000 and sent["status"] in ("queued", "offered")
    until(bob, sent["id"], "offered")
    listing = ok(sd_in(bob.home, "transfers")).stdout
    assert f"Accept with: sidedoor transfers accept {sent['short']}" in listing
    # The offer is in the conversation too, referring to the transfer.
    deadline = time.monotonic() + 10
    while True:
        said = [m for m in as_json(sd_in(bob.home, "history", "Ann", "--json"))
                if sent["id"] in m["attachments"]]
        if said:
            break
        assert time.monotonic() < deadline, "the offer's message did not arrive"
        time.sleep(0.1)
    assert [m["text"] for m in said] == [
        f"Sent files: photos (1000 files, {human_bytes(sent['total_bytes'])})"]
    ok(sd_in(bob.home, "transfers", "accept", sent["short"], "--to", str(dest)))
    until(ann, sent["id"], "done")
    info = until(bob, sent["id"], "done")
    assert info["roots"] == {"photos": "photos (1)"}
    assert same_tree(src, dest / "photos (1)") == 1000
    assert (dest / "photos (1)" / "empty").is_dir()
    assert list((dest / "photos").iterdir()) == []
    no_partials(dest)


def kill_halfway(victim: Detached, watcher: Detached, tid: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        info = transfer(watcher, tid)
        if info["done_bytes"] >= info["total_bytes"] // 2:
            break
        assert info["status"] not in ("done", "failed"), info
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:
        try:
            os.kill(victim.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    stop_node(victim.home)  # removes the stale lock holder, if any


@pytest.mark.parametrize("killed", ["Bob", "Ann"])
def test_a_node_killed_halfway_resumes_without_resending(
        pair: dict[str, Detached], tmp_path: Path, killed: str) -> None:
    ann, bob = pair["Ann"], pair["Bob"]
    size = 200 * MiB
    src = tmp_path / f"resume-{killed}.bin"
    write_random(src, size, 0o600, 1_650_000_000_000_000_000)
    dest = tmp_path / "resumed"
    sent = as_json(sd_in(ann.home, "send", str(src), "--to", "Bob", "--background", "--json"))
    tid = sent["id"]
    until(bob, tid, "offered")
    ok(sd_in(bob.home, "transfers", "accept", tid[:8], "--to", str(dest)))
    victim = pair[killed]
    kill_halfway(victim, ann if killed == "Bob" else bob, tid)
    before = transfer(ann if killed == "Bob" else bob, tid)
    with sqlite3.connect(victim.home / "sidedoor.db") as db:  # what the dead node had saved
        (saved_sent,) = db.execute("SELECT bytes_sent FROM transfers WHERE id = ?",
                                   (bytes.fromhex(tid),)).fetchone()
    pair[killed] = start(victim.home)
    ann, bob = pair["Ann"], pair["Bob"]
    until(bob, tid, "done", timeout=60)
    out = until(ann, tid, "done", timeout=30)
    got = dest / src.name
    assert got.read_bytes() == src.read_bytes()
    assert got.stat().st_mtime_ns == 1_650_000_000_000_000_000
    received = transfer(bob, tid)
    if killed == "Bob":
        # Ann saw it all: what she sent beyond the file is what Bob lost in flight.
        assert size <= out["bytes_sent"] <= size + RESEND_BOUND, (out, before)
    else:
        # Bob saw it all: what arrived twice is what was in flight when Ann died.
        assert size <= received["bytes_received"] <= size + RESEND_BOUND, (received, before)
        # And the restarted Ann sent only what Bob had not verified, plus one window.
        assert out["bytes_sent"] - saved_sent <= size - before["done_bytes"] + RESEND_BOUND
    no_partials(dest)


def test_send_to_nobody_and_bad_ids_fail_clearly(pair: dict[str, Detached],
                                                 tmp_path: Path) -> None:
    ann = pair["Ann"]
    (tmp_path / "a.txt").write_text("a")
    failed(sd(ann.home, "send", str(tmp_path / "a.txt"), "--to", "Nobody"),
           "no contact or room matches 'Nobody'")
    failed(sd_in(ann.home, "transfers", "accept", "zz"), "not a transfer id")
    failed(sd_in(ann.home, "transfers", "cancel", "abcdef12"), "no transfer abcdef12")
    data = json.loads(ok(sd_in(ann.home, "transfers", "--json")).stdout)
    assert isinstance(data, list)


@pytest.mark.parametrize("key", ["direct-writes", "fsync"])
def test_the_on_off_transfer_settings(tmp_path: Path, key: str) -> None:
    home = tmp_path / "home"
    default = {"direct-writes": "on", "fsync": "off"}[key]
    assert ok(sd_in(home, "config", "get", key)).stdout.strip() == default
    other = "off" if default == "on" else "on"
    changed = ok(sd_in(home, "config", "set", key, other))
    assert f"{key} = {other} (for transfers that start from now on)" in changed.stdout
    assert ok(sd_in(home, "config", "get", key)).stdout.strip() == other
    wrong = sd_in(home, "config", "set", key, "sometimes")
    usage_error(wrong)
    assert f"{key} is one of: on, off" in wrong.stderr
    assert ok(sd_in(home, "config", "get", key)).stdout.strip() == other  # unchanged
