"""Two colleagues on one LAN, each node in its own namespace, through the real CLI.

They see each other with `nearby`, pair with an invite code, and a wrong code
fails on both sides and burns the code. Also: a contact request to a node found
nearby, by its number; and a contact who appears on the LAN is reached at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidedoor.testing.netlab import Host, NetLab
from sidedoor.testing.nodes import wait_until

TIMEOUT = 30


def sd(host: Host, home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = host.run(sys.executable, "-m", "sidedoor", "--home", str(home), *args,
                      timeout=TIMEOUT, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"sidedoor {' '.join(args)} failed: {result.stderr}")
    return result


def sd_json(host: Host, home: Path, *args: str) -> Any:
    return json.loads(sd(host, home, *args, "--json").stdout)


@pytest.fixture
def office(netlab: NetLab, tmp_path: Path) -> Iterator[tuple[Host, Path, Host, Path]]:
    """Alice and Bob, each running a node (discovery on) in their own namespace."""
    alice, bob = netlab.lan(2)
    homes = tmp_path / "alice", tmp_path / "bob"
    def start(host: Host, home: Path, name: str) -> None:
        sd(host, home, "name", name)
        sd(host, home, "up", "--detach")

    # Both nodes start at once: each start costs a second or two here.
    starters = [threading.Thread(target=start, args=args) for args in
                ((alice, homes[0], "Alice Office"), (bob, homes[1], "Bob Office"))]
    for thread in starters:
        thread.start()
    for thread in starters:
        thread.join(TIMEOUT * 2)
    try:
        yield alice, homes[0], bob, homes[1]
    finally:
        for host, home in ((alice, homes[0]), (bob, homes[1])):
            sd(host, home, "down", check=False)


def test_nearby_then_pair_with_a_code(office: tuple[Host, Path, Host, Path]) -> None:
    alice, alice_home, bob, bob_home = office
    alice_address = sd_json(alice, alice_home, "id")["address"]

    seen = wait_until(lambda: sd_json(bob, bob_home, "nearby")["nearby"], timeout=15.0,
                      what="Alice nearby")
    assert [p["address"] for p in seen] == [alice_address]
    assert seen[0]["name"] == "Alice Office"
    assert seen[0]["hosts"] == [alice.ipv4]
    assert seen[0]["standing"] == "stranger"

    code = sd_json(alice, alice_home, "invite")["code"]
    joined = sd(bob, bob_home, "join", code)
    assert "Alice Office and you are now contacts" in joined.stdout

    for host, home, other in ((alice, alice_home, "Bob Office"), (bob, bob_home, "Alice Office")):
        contacts = sd_json(host, home, "contacts")
        assert [(c["name"], c["verified"], c["source"]) for c in contacts] == [
            (other, True, "invite")
        ]
    # The code is spent: a second join finds no open invite.
    again = sd(bob, bob_home, "join", code, "--wait", "2", check=False)
    assert again.returncode == 1 and "no colleague nearby has an open invite" in again.stderr


def test_a_wrong_code_fails_on_both_sides_and_burns_the_code(
    office: tuple[Host, Path, Host, Path],
) -> None:
    alice, alice_home, bob, bob_home = office
    wait_until(lambda: sd_json(bob, bob_home, "nearby")["nearby"], timeout=15.0,
               what="Alice nearby")
    events = alice.popen(sys.executable, "-c", _EVENT_PRINTER, str(alice_home),
                         stdout=subprocess.PIPE)
    log = EventLog(events)
    try:
        code = sd_json(alice, alice_home, "invite")["code"]
        nameplate, first, second = code.split("-")
        wrong = f"{nameplate}-{first}-{'zebra' if second != 'zebra' else 'acorn'}"
        failed = sd(bob, bob_home, "join", wrong, check=False)
        assert failed.returncode == 1
        assert "did not match" in failed.stderr and "Traceback" not in failed.stderr
        # Alice's node saw the failure too, and retired the code.
        line = wait_until(lambda: log.first("invite.failed"), timeout=15.0, what="invite.failed")
        assert line["nameplate"] == int(nameplate)
        right = sd(bob, bob_home, "join", code, "--wait", "2", check=False)
        assert right.returncode == 1
        assert sd_json(alice, alice_home, "contacts") == []
        assert sd_json(bob, bob_home, "contacts") == []
    finally:
        events.kill()
        events.wait(5)
        log.close()


def test_contact_request_to_someone_nearby(office: tuple[Host, Path, Host, Path]) -> None:
    alice, alice_home, bob, bob_home = office
    wait_until(lambda: sd_json(bob, bob_home, "nearby")["nearby"], timeout=15.0,
               what="Alice nearby")
    sent = sd(bob, bob_home, "add", "1", "-m", "hello from the next desk")
    assert "Request sent" in sent.stdout
    incoming = sd_json(alice, alice_home, "requests")["incoming"]
    assert [(r["name"], r["message"]) for r in incoming] == [
        ("Bob Office", "hello from the next desk")
    ]
    sd(alice, alice_home, "requests", "accept", str(incoming[0]["id"]))
    assert [c["name"] for c in sd_json(bob, bob_home, "contacts")] == ["Alice Office"]
    nearby = sd_json(bob, bob_home, "nearby")["nearby"]
    assert nearby[0]["standing"] == "contact"


# A tiny event-stream reader run inside the namespace (the control API is per namespace).
_EVENT_PRINTER = """
import asyncio, json, sys
from pathlib import Path
from sidedoor.control.client import ControlClient
async def main():
    async with ControlClient(Path(sys.argv[1])) as client:
        async for event in client.events():
            print(json.dumps(event), flush=True)
asyncio.run(main())
"""


class EventLog:
    """Collects the JSON lines of an event printer, on a thread (no lost buffered lines)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.events: list[dict[str, Any]] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.events.append(json.loads(line))

    def close(self) -> None:
        self._thread.join(5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def first(self, kind: str) -> dict[str, Any] | None:
        return next((e for e in list(self.events) if e["type"] == kind), None)


def test_a_contact_appearing_on_the_lan_is_reached_at_once(
    office: tuple[Host, Path, Host, Path],
) -> None:
    """Keep-in-touch's LAN trigger: Bob comes back while Alice's retry is a minute away,
    and Bob cannot reach Alice (her firewall drops his dial); Alice sees him appear
    nearby and reaches him, so both are online within seconds."""
    alice, alice_home, bob, bob_home = office
    wait_until(lambda: sd_json(bob, bob_home, "nearby")["nearby"], timeout=15.0,
               what="Alice nearby")
    code = sd_json(alice, alice_home, "invite")["code"]
    sd(bob, bob_home, "join", code)

    def online(host: Host, home: Path) -> bool:
        return any(c["online"] for c in sd_json(host, home, "contacts"))

    wait_until(lambda: online(alice, alice_home), timeout=15.0, what="Bob online for Alice")
    sd(bob, bob_home, "down")
    wait_until(lambda: not online(alice, alice_home), timeout=15.0,
               what="Bob offline for Alice")
    wait_until(lambda: not sd_json(alice, alice_home, "nearby")["nearby"], timeout=15.0,
               what="Bob gone from the LAN")
    # A session of seconds that ends counts as a failure: Alice's next try is a minute
    # away. Bob's dials to Alice are dropped, so only Alice can make the session.
    port = sd_json(alice, alice_home, "status")["port"]
    alice.run("nft", "-f", "-", input=(
        "table inet sidedoor_test {\n chain input {\n"
        "  type filter hook input priority 0;\n"
        f"  tcp dport {port} ct state new drop;\n }}\n}}\n"))
    sd(bob, bob_home, "up", "--detach")
    wait_until(lambda: online(alice, alice_home), timeout=20.0,
               what="Alice reaching Bob once he appeared nearby")
    assert online(bob, bob_home)
    [contact] = sd_json(bob, bob_home, "contacts")
    assert contact["path"] == "lan", contact
