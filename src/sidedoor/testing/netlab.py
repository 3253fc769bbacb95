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
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

__all__ = [
    "DEFAULT_PREFIX",
    "Host",
    "NetLab",
    "NetLabError",
    "kill_group",
    "list_namespaces",
    "remove_stale",
    "unavailable_reason",
]

DEFAULT_PREFIX = "sdlab"
COMMAND_TIMEOUT = 10.0  # seconds for one `ip` command
MULTICAST_NET = "224.0.0.0/4"

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
