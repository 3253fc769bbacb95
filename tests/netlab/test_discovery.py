"""LAN discovery between nodes in network namespaces (a veth pair, or a bridge).

Each node is a separate Python process (``discovery_peer.py``) started with
``ip netns exec``; it prints what its `Discovery` sees as JSON lines. mDNS only
ever runs inside the namespaces these tests create; the lab kills the processes
and deletes the namespaces at teardown, pass or fail.
"""

from __future__ import annotations

import json
import queue
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidedoor.testing.netlab import Host, NetLab
from sidedoor.testing.sessions import identity_from

PEER_SCRIPT = Path(__file__).with_name("discovery_peer.py")
ROGUE_SCRIPT = Path(__file__).with_name("rogue_peer.py")
AVAHI_SCRIPT = Path(__file__).with_name("avahi.sh")
AVAHI_TOOLS = ("avahi-daemon", "avahi-browse", "avahi-publish", "dbus-daemon", "mount")
IPV6_SUBNET = "fd5e:d00:1::/64"
START_TIMEOUT = 10.0  # a process starts, imports, probes and announces
SEE_TIMEOUT = 10.0
Event = dict[str, Any]


class PeerProcess:
    """A Python script run in a namespace; its JSON lines are read by a thread."""

    def __init__(self, host: Host, label: str, *argv: str) -> None:
        self.label = label
        self.address = identity_from(label).address
        self.started_at = time.monotonic()
        self.proc = host.popen(
            sys.executable, "-u", *argv,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[Event] = queue.Queue()
        self.seen: list[Event] = []  # everything, in order
        self.pending: list[Event] = []  # seen but not yet returned by `expect`
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.stderr.append(f"(stdout) {line}")

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _pull(self, timeout: float) -> bool:
        try:
            event = self.lines.get(timeout=timeout) if timeout > 0 else self.lines.get_nowait()
        except queue.Empty:
            return False
        self.seen.append(event)
        self.pending.append(event)
        return True

    def expect(self, what: str, match: Callable[[Event], bool], timeout: float) -> Event:
        """The first event not yet expected that ``match``es, waiting at most ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.pending:
                if match(event):
                    self.pending.remove(event)
                    return event
            left = deadline - time.monotonic()
            if left <= 0 or not self._pull(left):
                break
        raise AssertionError(
            f"{self.label}: no {what} within {timeout} s; it saw {self.seen}; "
            f"stderr: {''.join(self.stderr)[-2000:]}"
        )

    def events(self, kind: str) -> list[Event]:
        """Every event of ``kind`` seen so far, expected or not."""
        while self._pull(0):
            pass
        return [e for e in self.seen if e["event"] == kind]

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        """End the process (if it still runs) and release its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for thread in self._threads:
            thread.join(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


Spawn = Callable[..., PeerProcess]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """``spawn(host, label, name, port, *args)`` runs discovery_peer.py for the identity
    ``identity_from(label)``; every process is ended at teardown."""
    started: list[PeerProcess] = []

    def start(host: Host, label: str, name: str, port: int, *extra: str) -> PeerProcess:
        argv = [str(PEER_SCRIPT), label, name, str(port), *host.addresses, *extra]
        peer = PeerProcess(host, label, *argv)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.close()


def joined_by(peer: PeerProcess) -> Callable[[Event], bool]:
    return lambda e: e["event"] == "joined" and e["peer"]["address"] == peer.address


def test_peers_see_each_other_updates_and_goodbye(
    netlab: NetLab, spawn: Spawn
) -> None:
    a, b = netlab.lan(2, ipv6_subnet=IPV6_SUBNET)
    alice = spawn(a, "netlab alice", "Alice", 4100)
    bob = spawn(b, "netlab bob", "Zoë\tBob", 4200)
    for peer in (alice, bob):
        peer.expect("start", lambda e: e["event"] == "started", START_TIMEOUT)

    seen_bob = alice.expect("Bob joining", joined_by(bob), SEE_TIMEOUT)["peer"]
    seen_alice = bob.expect("Alice joining", joined_by(alice), SEE_TIMEOUT)["peer"]
    print(f"both seen {time.monotonic() - alice.started_at:.2f} s after the processes started")
    assert seen_bob["name"] == "Zoë Bob"  # non-ASCII kept, the tab made a space
    assert seen_bob["port"] == 4200
    assert seen_bob["hosts"] == [b.ipv4, b.ipv6]
    assert seen_bob["properties"] == {}
    assert seen_alice["name"] == "Alice"
    assert seen_alice["port"] == 4100
    assert seen_alice["hosts"] == [a.ipv4, a.ipv6]
    # Neither reports itself.
    assert all(e["peer"]["address"] != alice.address for e in alice.events("joined"))
    assert all(e["peer"]["address"] != bob.address for e in bob.events("joined"))

    alice.send(cmd="update", extra={"inv": "7,12"})
    sent = alice.expect("its update done", lambda e: e["event"] == "updated-self", 5)
    got = bob.expect(
        "Alice's new properties",
        lambda e: e["event"] == "updated" and e["peer"]["properties"] == {"inv": "7,12"},
        5,
    )
    print(f"update seen after {got['t'] - sent['t']:.2f} s")
    # Back and forth: zeroconf's browser alone misses a record that returns to an
    # earlier value its cache still holds.
    for extra in ({}, {"inv": "7,12"}, {}):
        alice.send(cmd="update", extra=extra)
        bob.expect(
            f"Alice's properties becoming {extra}",
            lambda e, extra=extra: e["event"] == "updated" and e["peer"]["properties"] == extra,
            5,
        )

    asked_to_stop = time.monotonic()
    bob.send(cmd="stop")
    stopped = bob.expect("its stop", lambda e: e["event"] == "stopped", 5)
    left = alice.expect(
        "Bob leaving",
        lambda e: e["event"] == "left" and e["peer"]["address"] == bob.address,
        5,
    )
    assert left["reason"] == "removed"  # its goodbye packets
    print(f"goodbye seen {left['t'] - asked_to_stop:.2f} s after Bob was asked to stop")
    assert bob.proc.wait(timeout=5) == 0
    assert alice.events("left") == [left]

    alice.send(cmd="stop")
    for peer, done in ((alice, alice.expect("its stop", lambda e: e["event"] == "stopped", 5)),
                       (bob, stopped)):
        assert done["tasks_left"] == [], f"{peer.label} left tasks running"
        assert done["threads"] == 1, f"{peer.label} left threads running"
        assert peer.events("asyncio-warning") == [], f"{peer.label} held its loop"


def test_vanished_peer_expires_but_live_one_stays(
    netlab: NetLab, spawn: Spawn
) -> None:
    ttl = 4
    a, b = netlab.lan(2)
    alice = spawn(a, "netlab alice", "Alice", 4100, "--ttl", str(ttl))
    bob = spawn(b, "netlab bob", "Bob", 4200, "--ttl", str(ttl))
    alice.expect("Bob joining", joined_by(bob), START_TIMEOUT + SEE_TIMEOUT)
    bob.expect("Alice joining", joined_by(alice), SEE_TIMEOUT)

    # Past one and a half TTLs, the refresh queries keep both in view.
    time.sleep(ttl * 1.5)
    assert alice.events("left") == [] and bob.events("left") == []

    bob.proc.kill()  # no goodbye
    killed = time.monotonic()
    left = alice.expect(
        "Bob expiring",
        lambda e: e["event"] == "left" and e["peer"]["address"] == bob.address,
        ttl + 3,
    )
    assert left["reason"] == "expired"
    print(f"vanished peer dropped {left['t'] - killed:.2f} s after it died (ttl {ttl} s)")


def test_hostile_records_are_ignored_and_logged_once(netlab: NetLab, spawn: Spawn) -> None:
    a, r, b = netlab.lan(3)  # three namespaces on a bridge
    carol = identity_from("netlab carol").address
    records: list[dict[str, str | None]] = [
        {"v": "2", "id": carol, "name": "Future"},
        {"v": "1", "id": carol[:-1] + ("a" if carol[-1] != "a" else "b"), "name": "Typo"},
        {"v": "1", "name": "No id"},
        {"v": "1", "id": carol, "name": "x" * 65},
        {"v": "1", "id": carol, "name": "hex:416cff"},
        {"v": "1", "id": carol, "name": "Carol", "inv": "7\x0712"},
        {"v": "1", "id": identity_from("netlab alice").address, "name": "Alice's twin"},
        {"v": "1", "id": carol, "name": "Carol"},  # the one good record
    ]
    rogue = PeerProcess(r, "rogue", str(ROGUE_SCRIPT), r.ipv4, "4300", json.dumps(records))
    try:
        rogue.expect("start", lambda e: e["event"] == "started", START_TIMEOUT)
        alice = spawn(a, "netlab alice", "Alice", 4100, "--debug")
        bob = spawn(b, "netlab bob", "Bob", 4200)
        alice.expect("Bob joining", joined_by(bob), START_TIMEOUT + SEE_TIMEOUT)
        got = alice.expect(
            "Carol joining",
            lambda e: e["event"] == "joined" and e["peer"]["address"] == carol,
            SEE_TIMEOUT,
        )
        assert got["peer"]["name"] == "Carol"
        assert got["peer"]["hosts"] == [r.ipv4]
        time.sleep(1.5)  # time for the other records to be resolved (and refused)
        assert sorted(e["peer"]["address"] for e in alice.events("joined")) == sorted(
            [bob.address, carol]
        )
        ignored = [line for line in alice.stderr if "mDNS: ignoring" in line]
        assert len(ignored) == 6, ignored  # one line for each bad record, no more
        assert len({line.split("'")[1] for line in ignored}) == 6
    finally:
        rogue.close()


def test_avahi_and_sidedoor_see_each_other(
    netlab: NetLab, spawn: Spawn, tmp_path: Path
) -> None:
    """Interop with avahi (Debian: avahi-daemon, avahi-utils) in a namespace of its own."""
    missing = [tool for tool in AVAHI_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian packages avahi-daemon avahi-utils)")
    a, b = netlab.lan(2)
    alice = spawn(a, "netlab alice", "Alice", 4100)
    alice.expect("start", lambda e: e["event"] == "started", START_TIMEOUT)
    dave = identity_from("netlab dave").address
    inner = (
        f"avahi-publish -s Dave _sidedoor._tcp 4500 v=1 id={dave} 'name=Dave (avahi)' & "
        "publisher=$!; timeout 10 avahi-browse --resolve --terminate --parsable "
        "_sidedoor._tcp; read _; kill $publisher"
    )
    avahi = b.popen(
        "sh", str(AVAHI_SCRIPT), str(tmp_path), "eth0", "sh", "-c", inner,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        # sidedoor sees the service avahi publishes...
        got = alice.expect(
            "avahi's service",
            lambda e: e["event"] == "joined" and e["peer"]["address"] == dave,
            START_TIMEOUT + SEE_TIMEOUT,
        )
        assert got["peer"]["name"] == "Dave (avahi)"
        assert got["peer"]["hosts"] == [b.ipv4]
        assert got["peer"]["port"] == 4500
        # ... and `avahi-browse -rtp _sidedoor._tcp` lists ours.
        out, err = avahi.communicate("\n", timeout=20)
    finally:
        if avahi.poll() is None:
            avahi.kill()
            avahi.communicate()
    resolved = [line.split(";") for line in out.splitlines() if line.startswith("=;")]
    ours = [f for f in resolved if f[3] == alice.address[:16]]
    assert ours, f"avahi-browse did not list our node: {out!r} {err!r}"
    fields = ours[0]
    assert fields[7:9] == [a.ipv4, "4100"]
    txt = shlex.split(fields[9])
    assert sorted(txt) == sorted(["v=1", f"id={alice.address}", "name=Alice"])
