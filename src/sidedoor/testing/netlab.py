"""Network namespaces for tests: small private LANs that touch no real interface.

``with NetLab() as lab: a, b = lab.lan(2)`` builds two namespaces joined by a veth
pair (three or more are joined by a bridge that lives in a namespace of its own),
with ``lo`` up, one address each from a private subnet, and a multicast route
(224.0.0.0/4) so that mDNS works. Run programs inside with ``host.run(...)`` or
``host.popen(...)`` (``ip netns exec NAME ...``). Leaving the ``with`` block kills
the process groups started that way and deletes every namespace the lab made,
which takes their interfaces with them, even when the test failed.

Every namespace is named ``<prefix>-<pid>-<n>-<role>``, so parallel runs do not
collide; a new lab first deletes namespaces with its prefix whose pid is gone
(left over by a run that crashed). Nothing is created in the root namespace.

Needs root and iproute2's ``ip``; `unavailable_reason` says why a lab cannot be
built, for the test to skip with.

``lab.internet()`` adds a "public" segment (a bridge in a namespace of its own,
documentation addresses only) with public hosts on it (``public_host()``) and private
LANs behind NAT routers (``nat_lan(...)``): each router is a namespace with nftables
masquerade (port-preserving, as Linux does, or fully random) and a firewall for
unsolicited inbound traffic (drop, reject or accept). A public link can lose packets
(an nftables ``numgen`` rule in the bridge's namespace) and delay them: this kernel
has no ``netem``, so a small forwarder (``python -m sidedoor.testing.netlab wire``)
holds the frames in a namespace of its own between the host and the bridge. NAT and
loss need nftables' ``nft``; `nat_unavailable_reason` says when it is missing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, get_args

__all__ = [
    "DEFAULT_PREFIX",
    "PUBLIC_NATS",
    "PUBLIC_SERVERS",
    "Host",
    "Inbound",
    "Internet",
    "NatLan",
    "NetLab",
    "NetLabError",
    "PortMapping",
    "Router",
    "kill_group",
    "list_namespaces",
    "nat_unavailable_reason",
    "remove_stale",
    "unavailable_reason",
]

DEFAULT_PREFIX = "sdlab"
COMMAND_TIMEOUT = 10.0  # seconds for one `ip` command
MULTICAST_NET = "224.0.0.0/4"
PUBLIC_SERVERS = "203.0.113.0/24"  # public hosts (TEST-NET-3)
PUBLIC_NATS = "198.51.100.0/24"  # NAT routers' public side (TEST-NET-2)
WIRE_READY_TIMEOUT = 5.0  # seconds for a delay forwarder to bind its sockets

PortMapping = Literal["preserve", "random"]
"""NAT port mapping: keep the source port when free (Linux's default) or pick a random
one for every connection (``--random-fully``: the mapping depends on the destination)."""
Inbound = Literal["drop", "reject", "accept"]
"""What a NAT router does with unsolicited inbound traffic on its public side: drop it
silently, reject it (TCP reset, ICMP port unreachable), or nothing (a plain Linux box)."""

_counter = itertools.count(1)


class NetLabError(RuntimeError):
    """An `ip` command failed while building or tearing down a lab."""


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or None if they can."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    try:
        done = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns list` failed: {exc}"
    if done.returncode != 0:
        return f"`ip netns list` failed: {done.stderr.strip()}"
    return None


def nat_unavailable_reason() -> str | None:
    """Why NAT routers cannot be built here (`unavailable_reason`, or no ``nft``)."""
    reason = unavailable_reason()
    if reason is None and shutil.which("nft") is None:
        reason = "nftables' `nft` is not installed (Debian package nftables)"
    return reason


def _run(argv: Sequence[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, input=input, timeout=COMMAND_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        raise NetLabError(f"{' '.join(argv)}: timed out") from exc
    if done.returncode != 0:
        raise NetLabError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def _nft(netns: str, script: str) -> None:
    """Load an nftables script into ``netns`` (atomically: all of it or nothing)."""
    _run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=script)


def _sysctl(netns: str, key: str, value: str) -> None:
    """Set a sysctl inside ``netns`` (``net.ipv4.ip_forward``; procps is not needed)."""
    path = "/proc/sys/" + key.replace(".", "/")
    _run(["ip", "netns", "exec", netns, "sh", "-c", 'echo "$1" > "$2"', "sh", value, path])


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise NetLabError(f"{' '.join(argv)}: timed out") from exc
    if check and done.returncode != 0:
        raise NetLabError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def list_namespaces() -> list[str]:
    """The names of the network namespaces that exist now."""
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Delete namespaces ``<prefix>-<pid>-...`` whose process is gone; return their names."""
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)-\d+-")
    removed: list[str] = []
    for name in list_namespaces():
        match = pattern.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _ip("netns", "delete", name, check=False)
            removed.append(name)
    return removed


@dataclass
class Host:
    """One network namespace with one interface on the lab's LAN."""

    netns: str
    ifname: str
    ipv4: str
    ipv6: str | None = None
    prefixlen: int = 24
    processes: list[subprocess.Popen[str]] = field(default_factory=list, repr=False)

    @property
    def addresses(self) -> list[str]:
        return [self.ipv4] + ([self.ipv6] if self.ipv6 else [])

    def command(self, *argv: str) -> list[str]:
        """``argv`` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(
        self,
        *argv: str,
        timeout: float = COMMAND_TIMEOUT,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and wait for it, output captured as text.

        On timeout the command's whole process group is killed (``TimeoutExpired``).
        """
        proc = self.popen(
            *argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except BaseException:
            kill_group(proc)
            proc.communicate()
            raise
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check:
            done.check_returncode()
        return done

    def popen(self, *argv: str, **kwargs: Any) -> subprocess.Popen[str]:
        """Start a command inside the namespace (``ip netns exec`` execs it: same pid).

        It gets a session (and process group) of its own; the lab kills the group when
        it closes, so daemons a test starts do not outlive it.
        """
        kwargs.setdefault("text", True)
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.command(*argv), **kwargs)
        self.processes.append(proc)
        return proc

    def kill_all(self) -> None:
        """Kill every process group started with `popen` or `run` here."""
        for proc in self.processes:
            kill_group(proc)
        self.processes.clear()


@dataclass
class Router(Host):
    """A NAT router: ``ifname``/``ipv4`` are its public side (``wan0``), ``lan_ipv4``
    its address on the private LAN (``lan0``, a bridge), which is the hosts' gateway."""

    lan_ipv4: str = ""
    mapping: PortMapping = "preserve"
    inbound: Inbound = "drop"


@dataclass
class NatLan:
    """A private LAN: its hosts and the router that masquerades them."""

    router: Router
    hosts: list[Host]
    subnet: str


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the process group ``proc`` leads, and reap ``proc``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=COMMAND_TIMEOUT)


@dataclass
class NetLab:
    """Builds namespaces and deletes them all on exit (a context manager)."""

    prefix: str = DEFAULT_PREFIX
    tag: str = field(init=False)
    namespaces: list[str] = field(init=False, default_factory=list)
    hosts: list[Host] = field(init=False, default_factory=list)
    helpers: list[subprocess.Popen[str]] = field(init=False, default_factory=list)
    _internet: Internet | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", self.prefix):
            raise ValueError("a lab prefix is 1-12 lower-case letters and digits")
        self.tag = f"{self.prefix}-{os.getpid()}-{next(_counter)}"

    def __enter__(self) -> NetLab:
        reason = unavailable_reason()
        if reason is not None:
            raise NetLabError(reason)
        remove_stale(self.prefix)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Kill the processes started in the lab's hosts, then delete every namespace
        it made (their interfaces go with them)."""
        for host in self.hosts:
            host.kill_all()
        self.hosts.clear()
        for proc in self.helpers:
            kill_group(proc)
        self.helpers.clear()
        self._internet = None
        errors: list[str] = []
        for name in reversed(self.namespaces):
            done = _ip("netns", "delete", name, check=False)
            if done.returncode != 0 and name in list_namespaces():
                errors.append(f"{name}: {done.stderr.strip()}")
        self.namespaces.clear()
        if errors:
            raise NetLabError("could not delete namespaces: " + "; ".join(errors))

    # ------------------------------------------------------------- building
    def namespace(self, role: str) -> str:
        """Create an empty namespace with ``lo`` up; return its name.

        ``role`` (letters and digits) ends the name; a number is added if it is taken.
        """
        name, n = f"{self.tag}-{role}", 1
        while name in self.namespaces:
            n += 1
            name = f"{self.tag}-{role}{n}"
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def lan(
        self,
        count: int,
        subnet: str = "10.250.0.0/24",
        *,
        ipv6_subnet: str | None = None,
    ) -> list[Host]:
        """``count`` hosts on one LAN: a veth pair for two, a bridge for more.

        Host ``i`` gets the subnet's address ``i + 1`` (and the same in
        ``ipv6_subnet`` if given, without duplicate address detection).
        """
        if count < 2:
            raise ValueError("a LAN has at least two hosts")
        net4 = ipaddress.IPv4Network(subnet)
        net6 = ipaddress.IPv6Network(ipv6_subnet) if ipv6_subnet else None
        if count + 1 >= net4.num_addresses:
            raise ValueError(f"{subnet} is too small for {count} hosts")
        first = len(self.hosts)
        names = [self.namespace(f"h{first + i}") for i in range(count)]
        if count == 2:
            _ip("link", "add", "eth0", "netns", names[0], "type", "veth",
                "peer", "name", "eth0", "netns", names[1])
        else:
            switch = self.namespace("sw")
            _ip("-n", switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", switch, "link", "set", "br0", "up")
            for i, name in enumerate(names):
                port = f"p{i}"
                _ip("link", "add", "eth0", "netns", name, "type", "veth",
                    "peer", "name", port, "netns", switch)
                _ip("-n", switch, "link", "set", port, "master", "br0")
                _ip("-n", switch, "link", "set", port, "up")
        hosts: list[Host] = []
        for i, name in enumerate(names):
            ipv4 = str(net4.network_address + i + 1)
            _ip("-n", name, "addr", "add", f"{ipv4}/{net4.prefixlen}", "dev", "eth0")
            ipv6 = None
            if net6 is not None:
                ipv6 = str(net6.network_address + i + 1)
                _ip("-n", name, "addr", "add", f"{ipv6}/{net6.prefixlen}", "dev", "eth0",
                    "nodad")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "route", "add", MULTICAST_NET, "dev", "eth0")
            hosts.append(Host(name, "eth0", ipv4, ipv6, net4.prefixlen))
        self.hosts.extend(hosts)
        return hosts

    def internet(self) -> Internet:
        """The lab's public segment (made on first use): see `Internet`."""
        if self._internet is None:
            netns = self.namespace("inet")
            _sysctl(netns, "net.ipv6.conf.all.disable_ipv6", "1")
            _sysctl(netns, "net.ipv6.conf.default.disable_ipv6", "1")
            _ip("-n", netns, "link", "add", "br0", "type", "bridge")
            _ip("-n", netns, "link", "set", "br0", "up")
            self._internet = Internet(self, netns)
        return self._internet


@dataclass
class Internet:
    """A public segment: a bridge in a namespace of its own carrying two documentation
    networks, on link with each other: public hosts take addresses in
    `PUBLIC_SERVERS` (203.0.113.10, .11, ...), NAT routers in `PUBLIC_NATS`
    (198.51.100.10, ...). Neither has a default route, so nothing leaves the lab: an
    address outside these two networks is unreachable (from a LAN, the router says so).

    Every link to the bridge can lose a share of its frames (``loss_percent``, in each
    direction, an nftables ``numgen random`` rule in the bridge's namespace, counted by
    `dropped`) and delay them (``delay_ms`` one way, so in each direction: a round trip
    over that link grows by twice as much). Public interfaces send frames of at most one
    segment (``gso_max_segs 1``) so that a loss drops one packet, not a 64 KiB burst.
    """

    lab: NetLab
    netns: str
    servers: list[Host] = field(default_factory=list)
    nats: list[NatLan] = field(default_factory=list)
    ports: dict[str, str] = field(default_factory=dict)  # endpoint namespace -> bridge port
    _loss_table: bool = field(default=False, repr=False)

    def public_host(self, *, loss_percent: float = 0.0, delay_ms: float = 0.0) -> Host:
        """A host with a public address (the future broker, a relay, a STUN server)."""
        address = self._address(PUBLIC_SERVERS, len(self.servers))
        name = self.lab.namespace(f"pub{len(self.servers)}")
        self._plug(name, "eth0", loss_percent, delay_ms)
        self._public_address(name, "eth0", address, PUBLIC_SERVERS, PUBLIC_NATS)
        host = Host(name, "eth0", address)
        self.lab.hosts.append(host)
        self.servers.append(host)
        return host

    def nat_lan(
        self,
        hosts: int = 1,
        *,
        mapping: PortMapping = "preserve",
        inbound: Inbound = "drop",
        subnet: str | None = None,
        loss_percent: float = 0.0,
        delay_ms: float = 0.0,
    ) -> NatLan:
        """A router with a public address masquerading ``hosts`` hosts on a private LAN.

        The LAN is ``subnet`` (default ``192.168.<n>.0/24``, n = 1, 2, ... for each new
        LAN; two LANs may be given the same subnet, as at home): the router is ``.1``,
        the hosts ``.2``, ``.3``, ... on a bridge in the router's namespace, with a
        default route through the router. ``mapping`` and ``inbound`` are described at
        `PortMapping` and `Inbound`; loss and delay apply to the router's public link.
        Traffic from a LAN host to its own router's public address is not hairpinned.
        """
        if hosts < 1:
            raise ValueError("a NAT LAN has at least one host")
        if mapping not in get_args(PortMapping):
            raise ValueError(f"mapping is one of {get_args(PortMapping)}, not {mapping!r}")
        if inbound not in get_args(Inbound):
            raise ValueError(f"inbound is one of {get_args(Inbound)}, not {inbound!r}")
        reason = nat_unavailable_reason()
        if reason is not None:
            raise NetLabError(reason)
        index = len(self.nats)
        net = ipaddress.IPv4Network(subnet or f"192.168.{index + 1}.0/24")
        if hosts + 2 >= net.num_addresses:
            raise ValueError(f"{net} is too small for {hosts} hosts")
        public = self._address(PUBLIC_NATS, index)
        gateway = str(net.network_address + 1)

        name = self.lab.namespace(f"nat{index}")
        _sysctl(name, "net.ipv4.ip_forward", "1")
        self._plug(name, "wan0", loss_percent, delay_ms)
        self._public_address(name, "wan0", public, PUBLIC_NATS, PUBLIC_SERVERS)
        _ip("-n", name, "link", "add", "lan0", "type", "bridge")
        _ip("-n", name, "addr", "add", f"{gateway}/{net.prefixlen}", "dev", "lan0")
        _ip("-n", name, "link", "set", "lan0", "up")
        _nft(name, _router_rules(mapping, inbound))
        router = Router(name, "wan0", public, None, 24, lan_ipv4=gateway,
                        mapping=mapping, inbound=inbound)
        self.lab.hosts.append(router)

        members: list[Host] = []
        for i in range(hosts):
            host_ns = self.lab.namespace(f"nat{index}h{i}")
            port = f"h{i}"
            _ip("link", "add", "eth0", "netns", host_ns, "type", "veth",
                "peer", "name", port, "netns", name)
            _ip("-n", name, "link", "set", port, "master", "lan0")
            _ip("-n", name, "link", "set", port, "up")
            address = str(net.network_address + 2 + i)
            _ip("-n", host_ns, "addr", "add", f"{address}/{net.prefixlen}", "dev", "eth0")
            _ip("-n", host_ns, "link", "set", "eth0", "up")
            _ip("-n", host_ns, "route", "add", "default", "via", gateway)
            _ip("-n", host_ns, "route", "add", MULTICAST_NET, "dev", "eth0")
            members.append(Host(host_ns, "eth0", address, None, net.prefixlen))
        self.lab.hosts.extend(members)
        lan = NatLan(router, members, str(net))
        self.nats.append(lan)
        return lan

    def dropped(self, host: Host | None = None) -> int:
        """Frames the loss rules dropped so far, on ``host``'s public link or on all."""
        if not self._loss_table:
            return 0
        out = _run(["ip", "netns", "exec", self.netns,
                    "nft", "list", "table", "bridge", "sdlab"]).stdout
        port = None
        if host is not None:
            if host.netns not in self.ports:
                raise ValueError(f"{host.netns} has no link to the public segment")
            port = self.ports[host.netns]
        total = 0
        for match in re.finditer(r'[io]ifname "(\w+)" .*? counter packets (\d+)', out):
            if port is None or match.group(1) == port:
                total += int(match.group(2))
        return total

    # ------------------------------------------------------------- building
    @staticmethod
    def _address(network: str, index: int) -> str:
        net = ipaddress.IPv4Network(network)
        if index + 10 >= net.num_addresses - 1:
            raise ValueError(f"no address left in {network}")
        return str(net.network_address + 10 + index)

    @staticmethod
    def _public_address(netns: str, ifname: str, address: str, own: str, other: str) -> None:
        _ip("-n", netns, "addr", "add", f"{address}/{ipaddress.IPv4Network(own).prefixlen}",
            "dev", ifname)
        _ip("-n", netns, "link", "set", ifname, "up")
        _ip("-n", netns, "route", "add", other, "dev", ifname)

    def _plug(self, netns: str, ifname: str, loss_percent: float, delay_ms: float) -> None:
        """Join ``ifname`` (made here, in ``netns``) to the bridge, through a delay
        forwarder if ``delay_ms``; add the loss rules if ``loss_percent``."""
        if not 0.0 <= loss_percent <= 100.0:
            raise ValueError("loss_percent is between 0 and 100")
        if not 0.0 <= delay_ms <= 10_000.0:
            raise ValueError("delay_ms is between 0 and 10000")
        if loss_percent > 0 and (reason := nat_unavailable_reason()) is not None:
            raise NetLabError(reason)
        port = f"p{len(self.ports)}"
        if delay_ms > 0:
            wire = self.lab.namespace(f"wire{len(self.ports)}")
            _sysctl(wire, "net.ipv6.conf.all.disable_ipv6", "1")
            _sysctl(wire, "net.ipv6.conf.default.disable_ipv6", "1")
            _ip("link", "add", ifname, "netns", netns, "type", "veth",
                "peer", "name", "near", "netns", wire)
            _ip("link", "add", "far", "netns", wire, "type", "veth",
                "peer", "name", port, "netns", self.netns)
            for end in ("near", "far"):
                _ip("-n", wire, "link", "set", end, "up")
            self._start_wire(wire, delay_ms)
        else:
            _ip("link", "add", ifname, "netns", netns, "type", "veth",
                "peer", "name", port, "netns", self.netns)
        _ip("-n", netns, "link", "set", ifname, "gso_max_segs", "1")
        _ip("-n", self.netns, "link", "set", port, "master", "br0")
        _ip("-n", self.netns, "link", "set", port, "up")
        self.ports[netns] = port
        if loss_percent > 0:
            self._add_loss(port, loss_percent)

    def _add_loss(self, port: str, loss_percent: float) -> None:
        threshold = max(1, round(loss_percent * 100))  # out of 10000
        script = ""
        if not self._loss_table:
            script += (
                "table bridge sdlab {\n"
                "  chain forward { type filter hook forward priority 0; policy accept; }\n"
                "}\n"
            )
        for direction in ("iifname", "oifname"):
            script += (f'add rule bridge sdlab forward {direction} "{port}" '
                       f"numgen random mod 10000 < {threshold} counter drop\n")
        _nft(self.netns, script)
        self._loss_table = True

    def _start_wire(self, wire: str, delay_ms: float) -> None:
        argv = ["ip", "netns", "exec", wire, sys.executable, "-m", __name__,
                "wire", "near", "far", str(delay_ms)]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                text=True, start_new_session=True)
        self.lab.helpers.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], WIRE_READY_TIMEOUT)
        line = proc.stdout.readline() if ready else ""
        proc.stdout.close()
        if line.strip() != "ready":
            raise NetLabError(f"the delay forwarder in {wire} did not start")


def _router_rules(mapping: PortMapping, inbound: Inbound) -> str:
    """The nftables ruleset of a NAT router (``wan0`` public, ``lan0`` private)."""
    masquerade = "masquerade fully-random" if mapping == "random" else "masquerade"
    refuse = {
        "drop": "drop",
        "reject": "meta l4proto tcp reject with tcp reset; reject",
        "accept": "",
    }[inbound]
    filters = ""
    if refuse:
        for hook in ("input", "forward"):
            filters += (
                f"  chain {hook} {{\n"
                f"    type filter hook {hook} priority filter; policy accept;\n"
                f'    iifname "wan0" ct state established,related accept\n'
                + "".join(f'    iifname "wan0" {verdict}\n' for verdict in refuse.split("; "))
                + "  }\n"
            )
    return (
        "table ip sdlab {\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    oifname "wan0" {masquerade}\n'
        "  }\n"
        f"{filters}"
        "}\n"
    )


# ----------------------------------------------------------------- the delay forwarder
_ETH_P_ALL = 0x0003
_SOL_PACKET = 263
_PACKET_VNET_HDR = 15  # frames carry a virtio_net_hdr: offload metadata survives
_PACKET_IGNORE_OUTGOING = 23  # do not see the frames this socket sends
_SO_RCVBUFFORCE = 33
_WIRE_QUEUE_LIMIT = 100_000  # frames held per direction; more are dropped (a full queue)


def delay_forwarder(near: str, far: str, delay: float) -> None:
    """Forward every frame between the interfaces ``near`` and ``far`` ``delay`` seconds
    late, both ways, until killed: a cable with a delay (this kernel has no ``netem``).

    Packet sockets with a virtio_net_hdr move frames as they are, checksum-offload and
    GSO metadata included, so nothing is recomputed; the interfaces have no address, so
    the namespace's own stack ignores them. Prints ``ready`` once both sockets are bound;
    exits when its parent (the lab) is gone, should the lab die without killing it.
    """
    parent = os.getppid()
    socks: list[socket.socket] = []
    for name in (near, far):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # nothing before bind
        sock.setsockopt(_SOL_PACKET, _PACKET_VNET_HDR, 1)
        sock.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 8 << 20)
        sock.bind((name, _ETH_P_ALL))
        sock.setblocking(False)
        socks.append(sock)
    # queues[i]: frames that came in on socks[i], to go out on the other one
    queues: list[deque[tuple[float, bytes]]] = [deque(), deque()]
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        for i, queue in enumerate(queues):
            out = socks[1 - i]
            while queue and queue[0][0] <= now:
                with contextlib.suppress(OSError):  # ENOBUFS and the like: a lost frame
                    out.send(queue.popleft()[1])
        due = [queue[0][0] for queue in queues if queue]
        timeout = max(0.0, min(due) - now) if due else 1.0
        readable, _, _ = select.select(socks, [], [], min(timeout, 1.0))
        if not readable and os.getppid() != parent:
            return
        now = time.monotonic()
        for sock in readable:
            queue = queues[socks.index(sock)]
            for _ in range(256):
                try:
                    frame = sock.recv(70_000)
                except BlockingIOError:
                    break
                if len(queue) < _WIRE_QUEUE_LIMIT:
                    queue.append((now + delay, frame))


def _main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "wire":
        delay_forwarder(argv[1], argv[2], float(argv[3]) / 1000.0)
        return 0
    print("usage: python -m sidedoor.testing.netlab wire NEAR FAR DELAY_MS", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
