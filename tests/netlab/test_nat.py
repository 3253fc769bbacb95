"""The NAT lab behaves like the NAT routers it models (plain sockets, no sidedoor node).

Each test builds `NetLab.internet()` topologies and runs `nat_probe.py` inside the
namespaces; see README.md for the topology and the flavours.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sidedoor.testing.netlab import (
    Host,
    Internet,
    NetLab,
    list_namespaces,
    nat_unavailable_reason,
)

PROBE = str(Path(__file__).with_name("nat_probe.py"))
PORT = 7000


@pytest.fixture(autouse=True)
def _need_nat() -> None:
    reason = nat_unavailable_reason()
    if reason is not None:
        pytest.skip(f"netlab NAT: {reason}")


@pytest.fixture
def internet(netlab: NetLab) -> Internet:
    return netlab.internet()


def probe(host: Host, *args: str, timeout: float = 15.0) -> dict[str, Any]:
    done = host.run(sys.executable, PROBE, *args, timeout=timeout)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def probe_together(jobs: dict[str, tuple[Host, list[str]]]) -> dict[str, dict[str, Any]]:
    """Run several probes at once; their results by key."""
    procs = {key: host.popen(sys.executable, PROBE, *args, stdout=subprocess.PIPE)
             for key, (host, args) in jobs.items()}
    results: dict[str, dict[str, Any]] = {}
    for key, proc in procs.items():
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, (key, out)
        results[key] = json.loads(out.strip().splitlines()[-1])
    return results


def serve(host: Host, *ports: int) -> None:
    """Start the probe server on ``host`` (killed with the lab); wait until it listens."""
    proc = host.popen(sys.executable, PROBE, "serve", *map(str, ports or (PORT,)),
                      stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with proc.stdout:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready and proc.stdout.readline().strip() == "ready"


def test_masquerade_shows_the_router_address_and_keeps_the_port(internet: Internet) -> None:
    servers = [internet.public_host(), internet.public_host()]
    for server in servers:
        serve(server)
    lan = internet.nat_lan(2)  # port-preserving, drop: a home router
    first, second = lan.hosts
    assert lan.router.ipv4 == "198.51.100.10"
    assert [first.ipv4, second.ipv4] == ["192.168.1.2", "192.168.1.3"]

    for server in servers:  # the same public port towards every destination
        seen = probe(first, "dial", server.ipv4, str(PORT), "--bind", "40000")
        assert seen["outcome"] == "ok"
        assert seen["local"] == [first.ipv4, 40000]
        assert seen["seen"] == [lan.router.ipv4, 40000]

    # A second host of the LAN with the same private port and destination: the port
    # is taken on the router, so the NAT picks another one.
    seen = probe(second, "dial", servers[0].ipv4, str(PORT), "--bind", "40000")
    assert seen["seen"][0] == lan.router.ipv4
    assert seen["seen"][1] != 40000

    # Two peers on the same LAN reach each other directly, without NAT.
    serve(first)
    seen = probe(second, "dial", first.ipv4, str(PORT))
    assert seen["seen"][0] == second.ipv4


def test_random_fully_maps_every_destination_to_another_port(internet: Internet) -> None:
    servers = [internet.public_host(), internet.public_host()]
    for server in servers:
        serve(server, PORT, PORT + 1)
    lan = internet.nat_lan(mapping="random")
    ports = []
    for server, port in [(servers[0], PORT), (servers[0], PORT + 1), (servers[1], PORT)]:
        seen = probe(lan.hosts[0], "dial", server.ipv4, str(port), "--bind", "40000")
        assert seen["local"][1] == 40000
        assert seen["seen"][0] == lan.router.ipv4
        ports.append(seen["seen"][1])
    assert len(set(ports)) >= 2, ports  # all three equal: odds about 1e-9
    assert ports.count(40000) <= 1, ports


def test_unsolicited_inbound_per_firewall_flavour(internet: Internet) -> None:
    outside = internet.public_host()
    lans = {flavour: internet.nat_lan(inbound=flavour)
            for flavour in ("drop", "reject", "accept")}
    for lan in lans.values():
        serve(lan.hosts[0])  # something listens behind each router
        outside.run("ip", "route", "add", lan.subnet, "via", lan.router.ipv4)

    # To the router's public address: nothing is forwarded (no port forwarding).
    results = probe_together({
        flavour: (outside, ["dial", lan.router.ipv4, str(PORT), "--timeout", "1"])
        for flavour, lan in lans.items()})
    assert results["drop"]["outcome"] == "timeout"
    assert results["reject"]["outcome"] == "refused"  # the firewall's TCP reset
    assert results["accept"]["outcome"] == "refused"  # the router's kernel: no listener
    assert results["reject"]["elapsed"] < 0.5 and results["accept"]["elapsed"] < 0.5

    # Routed straight to the private address (as a neighbour on the public segment
    # could): only the "accept" router, a plain Linux box, lets it through.
    results = probe_together({
        flavour: (outside, ["dial", lan.hosts[0].ipv4, str(PORT), "--timeout", "1"])
        for flavour, lan in lans.items()})
    assert results["drop"]["outcome"] == "timeout"
    assert results["reject"]["outcome"] == "refused"
    assert results["accept"]["outcome"] == "ok"
    assert results["accept"]["seen"][0] == outside.ipv4  # and no NAT on the way in


def test_tcp_simultaneous_open_through_two_drop_nats(internet: Internet) -> None:
    a, b = internet.nat_lan(), internet.nat_lan()
    # (a's start, b's start) in seconds from now: b late, a late, together
    for round_, (delay_a, delay_b) in enumerate([(0.0, 0.2), (0.2, 0.0), (0.0, 0.0)]):
        port_a, port_b = 41000 + round_, 42000 + round_
        start = time.time() + 0.5
        results = probe_together({
            "a": (a.hosts[0], ["punch", str(port_a), b.router.ipv4, str(port_b),
                               str(start + delay_a), "6"]),
            "b": (b.hosts[0], ["punch", str(port_b), a.router.ipv4, str(port_a),
                               str(start + delay_b), "6"]),
        })
        for result, peer, peer_port in [(results["a"], b, port_b), (results["b"], a, port_a)]:
            assert result["ok"], results
            assert result["peer"] == [peer.router.ipv4, peer_port]
            assert result["got"] == f"hello from {peer_port}"


def test_loss_and_delay_on_a_public_link(internet: Internet) -> None:
    server = internet.public_host()
    serve(server)
    slow = internet.nat_lan(loss_percent=2, delay_ms=25)  # 25 ms each way: RTT + 50 ms
    fast = internet.nat_lan()

    upload = probe(slow.hosts[0], "upload", server.ipv4, str(PORT), str(1 << 20))
    assert upload["ok"], upload  # 1 MiB arrived whole despite the losses
    rtt = statistics.median(probe(slow.hosts[0], "rtt", server.ipv4, str(PORT), "9")["samples"])
    assert 0.050 <= rtt < 0.150, rtt
    assert internet.dropped(slow.router) > 0  # ~2% of ~1100 frames
    base = statistics.median(probe(fast.hosts[0], "rtt", server.ipv4, str(PORT), "9")["samples"])
    assert base < 0.010, base
    assert internet.dropped(fast.router) == 0


def root_state() -> tuple[str, str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10)
    rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True,
                           timeout=10)
    names = "\n".join(line.split(":")[1] for line in links.stdout.splitlines())
    return names, rules.stdout


ALLOWED = [ipaddress.IPv4Network(net) for net in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8",
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


def test_teardown_removes_every_namespace_and_forwarder_even_on_failure() -> None:
    before = root_state()
    with pytest.raises(RuntimeError, match="boom"), NetLab() as lab:
        internet = lab.internet()
        internet.public_host(delay_ms=5)
        internet.nat_lan(2, mapping="random", inbound="reject", loss_percent=1, delay_ms=5)
        internet.nat_lan(subnet="192.168.1.0/24")  # the same subnet twice, as at home
        names = set(lab.namespaces)
        forwarders = [proc.pid for proc in lab.helpers]
        assert len(forwarders) == 2 and names <= set(list_namespaces())
        assert root_state() == before  # nothing in the root namespace
        for name in names:  # private or documentation addresses only
            out = subprocess.run(["ip", "-n", name, "-4", "-o", "addr"], capture_output=True,
                                 text=True, timeout=10, check=True).stdout
            for line in out.splitlines():
                address = ipaddress.IPv4Interface(line.split()[3]).ip
                assert any(address in net for net in ALLOWED), (name, address)
        raise RuntimeError("boom")
    assert not names & set(list_namespaces())
    assert root_state() == before
    for pid in forwarders:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert lab.helpers == [] and lab.hosts == []
