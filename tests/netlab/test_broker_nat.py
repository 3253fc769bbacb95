"""The broker through real NAT routers: which path two colleagues' nodes end up on.

A public namespace runs `sidedoor broker`; Alice and Bob each sit on a private LAN
behind their own NAT router (see `sidedoor.testing.netlab`). They pair with an
invite code that meets at the broker, then `ping` each other, and the tests assert
the path the session took (lan, punched, relayed), not only that one worked, and what
the broker saw.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sidedoor.testing.netlab import Host, Internet, NetLab, nat_unavailable_reason
from sidedoor.testing.nodes import wait_until

TIMEOUT = 40
BROKER_PORT = 7700


@pytest.fixture(autouse=True)
def _need_nat() -> None:
    reason = nat_unavailable_reason()
    if reason is not None:
        pytest.skip(f"netlab NAT: {reason}")


def sd(host: Host, home: Path, *args: str, check: bool = True,
       timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    result = host.run(sys.executable, "-m", "sidedoor", "--home", str(home), *args,
                      timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"sidedoor {' '.join(args)} failed: {result.stderr}{result.stdout}")
    return result


def sd_json(host: Host, home: Path, *args: str) -> Any:
    return json.loads(sd(host, home, *args, "--json").stdout)


@dataclass
class Broker:
    host: Host
    data: Path
    tap: Path
    url: str = ""
    health: str = ""
    proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        with (self.data.parent / "broker.log").open("w") as log_file:
            self.proc = self._popen(log_file)
        self._wait_for_address()

    def _popen(self, log_file: Any) -> subprocess.Popen[str]:
        return self.host.popen(
            sys.executable, "-m", "sidedoor", "broker", "--listen", f"0.0.0.0:{BROKER_PORT}",
            "--data", str(self.data), "--public-host", self.host.ipv4,
            "--health", "127.0.0.1:7701", "--tap-dir", str(self.tap),
            stdout=subprocess.PIPE, stderr=log_file)

    def _wait_for_address(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        stdout = self.proc.stdout
        found = queue.Queue[str]()

        def read() -> None:
            # A thread, not select(): readline() buffers lines that select() cannot see.
            for line in stdout:
                if line.strip().startswith("sidedoor-broker://"):
                    found.put(line.strip())

        threading.Thread(target=read, daemon=True).start()
        with contextlib.suppress(queue.Empty):
            self.url = found.get(timeout=30)
        log = (self.data.parent / "broker.log").read_text()
        assert self.url, f"the broker did not print its address: {log}"

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stats(self) -> dict[str, Any]:
        out = self.host.run("python3", "-c", "import urllib.request,sys;"
                            "sys.stdout.write(urllib.request.urlopen("
                            "'http://127.0.0.1:7701/health', timeout=5).read().decode())")
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def relayed_bytes(self) -> bytes:
        return b"".join(p.read_bytes() for p in self.tap.glob("*.bin"))


@dataclass
class Person:
    host: Host
    home: Path
    name: str

    def sd(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return sd(self.host, self.home, *args, **kwargs)

    def up(self, broker: Broker) -> None:
        self.sd("name", self.name)
        self.sd("up", "--detach", "--no-discovery")
        self.sd("broker-add", broker.url)

    def down(self) -> None:
        self.sd("down", check=False)

    def session_path(self, other: Person) -> str | None:
        status = sd_json(self.host, self.home, "status")
        for session in status["sessions"]:
            if session["address"] == other.address:
                return str(session["path"])
        return None

    @property
    def address(self) -> str:
        return str(sd_json(self.host, self.home, "id")["address"])


@pytest.fixture
def internet(netlab: NetLab) -> Internet:
    return netlab.internet()


@pytest.fixture
def broker(internet: Internet, tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(internet.public_host(), tmp_path / "broker", tmp_path / "tap")
    try:
        broker.start()
        yield broker
    finally:
        if broker.proc is not None and broker.proc.stdout is not None:
            broker.proc.kill()
            broker.proc.wait(10)
            broker.proc.stdout.close()


def pair(alice: Person, bob: Person) -> None:
    """Alice makes a code; Bob joins it. The code meets at the broker."""
    invite = json.loads(alice.sd("invite", "--json").stdout)
    assert invite["broker"], "the code should be the broker's"
    joined = bob.sd("join", invite["code"])
    assert "contact" in joined.stdout.lower() or joined.returncode == 0


@contextlib.contextmanager
def people(internet: Internet, tmp_path: Path, broker: Broker, **routers: Any
           ) -> Iterator[tuple[Person, Person]]:
    lan_a = internet.nat_lan(**routers.get("a", {}))
    lan_b = internet.nat_lan(**routers.get("b", {}))
    alice = Person(lan_a.hosts[0], tmp_path / "alice", "Alice Plaintextname")
    bob = Person(lan_b.hosts[0], tmp_path / "bob", "Bob Plaintextname")
    try:
        alice.up(broker)
        bob.up(broker)
        yield alice, bob
    finally:
        alice.down()
        bob.down()


def ping(person: Person, other: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        person.sd("ping", other, "-c", "2", "--timeout", "20", "--json").stdout)
    return result


def test_two_nats_that_drop_inbound_connect_by_hole_punching(
        internet: Internet, tmp_path: Path, broker: Broker) -> None:
    with people(internet, tmp_path, broker) as (alice, bob):
        (link,) = sd_json(alice.host, alice.home, "brokers")
        assert link["state"] == "registered" and link["nat"] == "port-preserving"
        assert link["observed"].startswith("198.51.100.")  # her router's public address
        pair(alice, bob)
        assert alice.session_path(bob) in ("punched", None)
        # A fresh session, from Alice's side this time.
        alice.sd("down")
        alice.sd("up", "--detach", "--no-discovery")
        time.sleep(0.5)
        result = ping(alice, "Bob Plaintextname")
        assert result["path"] == "punched", result
        assert broker.stats()["relays_started"] == 0


def test_a_symmetric_nat_falls_back_to_the_relay_which_sees_ciphertext_only(
        internet: Internet, tmp_path: Path, broker: Broker) -> None:
    with people(internet, tmp_path, broker, a={"mapping": "random"}) as (alice, bob):
        (link,) = sd_json(alice.host, alice.home, "brokers")
        assert link["nat"] == "port-changing"
        pair(alice, bob)
        result = ping(bob, "Alice Plaintextname")
        assert result["path"] == "relayed", result
        stats = broker.stats()
        assert stats["relays_started"] >= 1 and stats["relay_bytes"] > 0
        seen = broker.relayed_bytes()
        assert len(seen) > 1000
        # The names (and cards) crossed the relay inside the Noise session.
        assert b"Plaintextname" not in seen


def test_a_relayed_contact_is_reached_directly_once_the_nat_allows_it(
        internet: Internet, tmp_path: Path, broker: Broker) -> None:
    with people(internet, tmp_path, broker, a={"mapping": "random"}) as (alice, bob):
        pair(alice, bob)
        assert ping(bob, "Alice Plaintextname")["path"] == "relayed"
        # Alice's router is replaced by a port-preserving one, and she reconnects.
        router = internet.nats[0].router
        router.run("nft", "delete", "table", "ip", "sdlab")
        from sidedoor.testing.netlab import _router_rules
        router.run("nft", "-f", "-", input=_router_rules("preserve", "drop"))
        # A router keeps the mappings it made for live flows; a new router would not.
        if shutil.which("conntrack"):
            router.run("conntrack", "-F", check=False)
        alice.sd("down")
        alice.sd("up", "--detach", "--no-discovery")
        time.sleep(0.5)
        assert ping(alice, "Bob Plaintextname")["path"] == "punched"


def test_loss_and_delay_on_the_public_links_still_connect(
        internet: Internet, tmp_path: Path, broker: Broker) -> None:
    lossy = {"loss_percent": 2.0, "delay_ms": 25.0}
    with people(internet, tmp_path, broker, a=lossy, b=lossy) as (alice, bob):
        start = time.monotonic()
        pair(alice, bob)
        result = ping(bob, "Alice Plaintextname")
        assert result["path"] in ("punched", "relayed")
        assert time.monotonic() - start < 30
        assert min(result["rtts_ms"]) >= 100  # two delayed links, both ways


def contact_view(person: Person, other: Person) -> dict[str, Any]:
    for contact in sd_json(person.host, person.home, "contacts"):
        if contact["address"] == other.address:
            return dict(contact)
    raise AssertionError(f"{other.name} is not {person.name}'s contact")


def test_a_contact_behind_a_symmetric_nat_is_online_without_holding_a_relay(
        internet: Internet, tmp_path: Path, broker: Broker) -> None:
    with people(internet, tmp_path, broker, a={"mapping": "random"}) as (alice, bob):
        pair(alice, bob)
        alice.sd("down")
        wait_until(lambda: contact_view(bob, alice)["presence"] == "offline", TIMEOUT,
                   what="Alice offline")
        alice.sd("up", "--detach", "--no-discovery")  # her broker is remembered
        # Nobody writes: each sees the other online from the broker alone.
        seen_by_bob = wait_until(lambda: (v := contact_view(bob, alice))["online"] and v,
                                 TIMEOUT, what="Bob to see Alice online")
        seen_by_alice = wait_until(lambda: (v := contact_view(alice, bob))["online"] and v,
                                   TIMEOUT, what="Alice to see Bob online")
        assert seen_by_bob["path"] == seen_by_alice["path"] == "broker"
        assert alice.session_path(bob) is None and bob.session_path(alice) is None
        assert broker.stats()["relays_active"] == 0
        # Writing opens the relayed session then.
        bob.sd("say", "Alice Plaintextname", "are you there?")
        wait_until(lambda: contact_view(bob, alice)["path"] == "relayed", TIMEOUT,
                   what="a relayed session")
