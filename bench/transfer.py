"""Benchmark: sidedoor send next to the tools a power user would reach for, on loopback.

    python bench/transfer.py [--rounds 5] [--size-mib 1024] [--files 10000] [--only TOOLS]

Two cases: one large file (``--size-mib``) and a folder of ``--files`` files of 10 KiB.
Tools, in interleaved rounds within one run (medians are compared):

* sidedoor   two ``sidedoor up`` nodes (separate processes, encrypted session), driven
             through the control API: offer, auto-accept, pull, verify, rename
* scp        OpenSSH, default cipher (chacha20-poly1305) and ``-c aes128-gcm``
* rsync      ``rsync -a`` over the same ssh
* wormhole   magic-wormhole with a local mailbox server and transit relay (in its own
             virtualenv: its dependencies want a newer ``cryptography`` than sidedoor's)
* socat      raw TCP (a ``tar`` stream for the folder): the ceiling

The ssh server is private: ``sshd -i`` behind a one-connection ``socat`` listener on a
loopback port, with a throwaway host key and authorized key in a temporary folder.
Each side of each tool runs under its own parent here, so its CPU time and peak
memory come from ``wait4`` (the largest single process of the side); the long-lived
sidedoor nodes are measured from ``/proc`` (CPU delta, ``VmHWM`` reset before each
round through ``clear_refs``).

Traps of this VM, handled: memory the guest frees is handed back to the host
("free page reporting" of the virtio balloon, about half a second after it is freed),
and the next write into such memory costs 1-2.5 s of kernel time per GiB (page faults
on the host side, seen as a slow ``copy_folio_from_iter_atomic``) against about
0.5 s/GiB into memory freed a moment ago. Which one a tool got used to depend on what
ran just before it; so before each timed copy the benchmark waits ``--settle``
seconds (default 3), and every tool writes its copy into handed-back memory alike.
Before that wait, ``sync`` writes back what earlier copies left in memory: sidedoor
writes large files straight to the disk (direct I/O, see README) and would otherwise
queue behind another tool's write-back. The socat row shows what writing through the
page cache costs by itself. Every destination is a fresh folder that is kept until
the end (creating many files just after deleting many is several times slower), and
the file-creation speed is measured and printed before the small-file case.

That slowness comes from this VM's root file system, an ext4 without a journal: ext4
then avoids reusing an inode freed in the last 30 s (dirty_expire_centisecs), and
reads each candidate's inode to check, so file creation after mass deletion drops
from some 15,000 to under 1,000 files a second, for whatever tool runs then. A
desktop's ext4 has a journal and skips that check. ``--fs ext4`` runs everything on
a fresh ext4 with a journal (``mkfs.ext4`` on a sparse image, loop-mounted; root
only), where file creation stays at 9,000-16,000 files a second.

Every copy is checked against the source's BLAKE3 hash (outside the timing). One
untimed warm-up round runs first (sidedoor then also has its hash cache filled, as
after any earlier send).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import blake3

HOST = "127.0.0.1"
MiB = 1 << 20
DEFAULT_VENV = Path("/opt/sidedoor-bench-venv")
WORMHOLE_VENV = Path(os.environ.get("SIDEDOOR_BENCH_VENV", DEFAULT_VENV))
SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"]


@dataclass
class Sample:
    seconds: float
    cpu_send: float
    cpu_recv: float
    mem_send: int  # bytes
    mem_recv: int


@dataclass
class Tool:
    name: str
    run: Callable[[Path, Path], Sample]  # (source, fresh destination folder) -> sample
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    note: str = ""


# ---------------------------------------------------------------- helpers

# What each outside tool comes in (Debian packages), found by the command it needs.
SYSTEM_TOOLS = {"socat": "socat", "sshd": "openssh-server", "scp": "openssh-client",
                "rsync": "rsync", "time": "time"}


def install_system_tools(only: set[str]) -> None:
    """Install the packages of the tools about to run that are missing, when we are root
    on a system with apt-get; otherwise say what is missing (those tools are skipped)."""
    ssh = bool(only & {"scp", "rsync"})  # sshd behind a socat listener, and ssh
    wanted = {cmd: pkg for cmd, pkg in SYSTEM_TOOLS.items()
              if not only or cmd == "time" or cmd in only
              or (ssh and cmd in ("sshd", "scp", "socat"))}
    missing = sorted({pkg for cmd, pkg in wanted.items()
                      if not (shutil.which(cmd) or Path("/usr/sbin", cmd).exists())})
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"missing {', '.join(missing)}: the tools that need them are skipped "
              "(install them, or run as root to have them installed)", file=sys.stderr)
        return
    print(f"installing {', '.join(missing)} ...", file=sys.stderr)
    # policy-rc.d answering 101 keeps apt from starting sshd as a service on this
    # machine's own network: the benchmark runs its own sshd, on loopback only.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    finally:
        if made_policy:
            policy.unlink()
    if "openssh-server" in missing and shutil.which("systemctl"):
        # Installing enables the ssh service for the next boot: undo that.
        subprocess.run(["systemctl", "disable", "--now", "ssh.service"],
                       capture_output=True, check=False, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Until something listens on ``port`` (seen in /proc: a probe connection would be
    taken by a one-connection listener as its one connection)."""
    deadline = time.monotonic() + timeout
    wanted = f":{port:04X} "
    while time.monotonic() < deadline:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if (fields[1] + " ").endswith(wanted) and fields[3] == "0A":
                return
        time.sleep(0.005)
    raise RuntimeError(f"nothing listens on {port}")


GNU_TIME = Path("/usr/bin/time")


class Side:
    """A process tree whose CPU time and peak memory are measured.

    With GNU time (``/usr/bin/time``) between us and the tool, the peak is the tool's
    own: ``wait4`` on a child forked from this Python process would count the forked
    copy of the benchmark itself (about 45 MB) as the child's peak.
    """

    def __init__(self, argv: list[str], check: bool = True, **kwargs: object) -> None:
        self.check = check
        self.report: Path | None = None
        if GNU_TIME.exists():
            fd, name = tempfile.mkstemp(prefix="sidedoor-bench-time-")
            os.close(fd)
            self.report = Path(name)
            argv = [str(GNU_TIME), "-f", "%M %U %S", "-o", name, *argv]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, **kwargs)  # type: ignore[call-overload]
        self.cpu = 0.0
        self.maxrss = 0

    def wait(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"{self.proc.args} timed out")
            time.sleep(0.002)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        _, err = self.proc.communicate()
        if self.proc.returncode != 0 and self.check:
            raise RuntimeError(f"{self.proc.args} failed: {err.decode(errors='replace')[-500:]}")
        self.cpu = usage.ru_utime + usage.ru_stime
        self.maxrss = usage.ru_maxrss * 1024
        if self.report is not None:
            fields = self.report.read_text().split()[-3:]
            self.report.unlink()
            with contextlib.suppress(ValueError, IndexError):
                self.maxrss = int(fields[0]) * 1024
                self.cpu = float(fields[1]) + float(fields[2])


def pair(receiver: list[str], sender: list[str], port: int | None = None,
         env: dict[str, str] | None = None, check_receiver: bool = True) -> Sample:
    recv = Side(receiver, check=check_receiver, env=env)
    if port is not None:
        wait_port(port)
    start = time.perf_counter()
    send = Side(sender, env=env)
    send.wait()
    recv.wait()
    seconds = time.perf_counter() - start
    return Sample(seconds, send.cpu, recv.cpu, send.maxrss, recv.maxrss)


def tree_digest(path: Path) -> str:
    """BLAKE3 over every file's relative name and bytes (a single file: its bytes)."""
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    if path.is_file():
        with path.open("rb") as f:
            while block := f.read(8 * MiB):
                h.update(block)
        return h.hexdigest()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = Path(root) / name
            h.update(str(full.relative_to(path)).encode() + b"\0")
            h.update(full.read_bytes())
    return h.hexdigest()


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_hwm(pid: int) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


# ---------------------------------------------------------------- sidedoor

class TransferEvents:
    """The sender node's event stream, read on a thread: the end of a transfer is seen
    when it happens, without polling the node (polling at 50 Hz cost the node about
    5% of its CPU time during a transfer: the instrument's cost, not sidedoor's)."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=600)
        self.conn.request("GET", "/v1/events", headers={"Authorization": f"Bearer {token}"})
        self.response = self.conn.getresponse()
        if self.response.status != 200:
            raise RuntimeError(f"/v1/events answered {self.response.status}")
        self.ended: dict[str, tuple[str, dict[str, object]]] = {}
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        kind = ""
        with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind.startswith("transfer."):
                    info = json.loads(line[6:])
                    if info.get("status") not in ("done", "failed", "declined", "cancelled"):
                        continue
                    with self.changed:
                        self.ended[str(info["id"])] = (kind, info)
                        self.changed.notify_all()

    def outcome(self, transfer: str, timeout: float) -> tuple[str, dict[str, object]]:
        with self.changed:
            if not self.changed.wait_for(lambda: transfer in self.ended, timeout):
                raise RuntimeError(f"transfer {transfer} did not end within {timeout:g} s")
            return self.ended[transfer]

    def __enter__(self) -> TransferEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        # The reader ends on the shut socket; closing the connection under it instead
        # makes http.client fail inside its own code.
        self.thread.join(5)
        self.conn.close()


class SidedoorPair:
    """Two ``sidedoor up`` nodes that are each other's contacts; Bob accepts from Ann."""

    def __init__(self, base: Path, settings: list[str]) -> None:
        self.homes = {"ann": base / "ann", "bob": base / "bob"}
        env = dict(os.environ)
        env.pop("SIDEDOOR_HOME", None)
        self.env = env
        self.ports: dict[str, int] = {}
        self.tokens: dict[str, str] = {}
        self.pids: dict[str, int] = {}
        for name, home in self.homes.items():
            self.cli(home, "name", name.title())
            self.cli(home, "up", "--detach", "--host", HOST, "--no-discovery")
            info = json.loads((home / "control.json").read_text())
            self.ports[name], self.tokens[name], self.pids[name] = (
                info["port"], info["token"], info["pid"])
        status = self.api("ann", "GET", "/v1/status")
        self.api("bob", "POST", "/v1/add", {"address": status["address"],
                                            "addrs": [f"{HOST}:{status['port']}"]})
        request = self.api("ann", "GET", "/v1/requests")["incoming"][0]
        self.api("ann", "POST", f"/v1/requests/{request['id']}/accept", {})
        self.cli(self.homes["bob"], "config", "set", "auto-accept", "Ann")
        for setting in settings:  # KEY=VALUE, for the receiving node
            key, _, value = setting.partition("=")
            self.cli(self.homes["bob"], "config", "set", key, value)

    def cli(self, home: Path, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "sidedoor", "--home", str(home), *args],
                       check=True, capture_output=True, env=self.env, timeout=60)

    def api(self, who: str, method: str, path: str, body: object = None) -> dict[str, object]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://{HOST}:{self.ports[who]}{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {self.tokens[who]}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            result: dict[str, object] = json.loads(response.read())
            return result

    def run(self, source: Path, dest: Path) -> Sample:
        self.cli(self.homes["bob"], "config", "set", "downloads", str(dest))
        ann, bob = self.pids["ann"], self.pids["bob"]
        reset_hwm(ann)
        reset_hwm(bob)
        cpu_a, cpu_b = proc_cpu(ann), proc_cpu(bob)
        with TransferEvents(HOST, self.ports["ann"], self.tokens["ann"]) as events:
            start = time.perf_counter()
            sent = self.api("ann", "POST", "/v1/transfers", {"paths": [str(source)],
                                                             "to": "Bob"})
            kind, info = events.outcome(str(sent["id"]), timeout=600)
            seconds = time.perf_counter() - start
        if kind != "transfer.done":
            raise RuntimeError(f"sidedoor transfer ended with {kind}: {info.get('error')}")
        return Sample(seconds, proc_cpu(ann) - cpu_a, proc_cpu(bob) - cpu_b,
                      proc_hwm(ann), proc_hwm(bob))

    def close(self) -> None:
        for home in self.homes.values():
            with contextlib.suppress(Exception):
                self.cli(home, "down")
        # `down` asks; wait until the nodes are gone (their files can be unmounted).
        deadline = time.monotonic() + 15
        for pid in self.pids.values():
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)


# --------------------------------------------------------------------- ssh

class PrivateSsh:
    """``sshd -i`` behind a one-connection socat listener, keys in a temporary folder."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "ssh"
        self.dir.mkdir(mode=0o700)
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not Path(sshd).exists():
            raise RuntimeError("sshd is missing: apt-get install openssh-server")
        self.sshd = sshd
        for name in ("host", "user"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(self.dir / name)], check=True)
        shutil.copy(self.dir / "user.pub", self.dir / "authorized_keys")
        (self.dir / "sshd_config").write_text(
            f"HostKey {self.dir / 'host'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nPermitRootLogin prohibit-password\nPidFile none\n"
            "Subsystem sftp internal-sftp\nLogLevel ERROR\n")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder

    def listener(self) -> tuple[list[str], int]:
        port = free_port()
        argv = ["socat", f"TCP-LISTEN:{port},bind={HOST},reuseaddr",
                f"EXEC:{self.sshd} -i -f {self.dir / 'sshd_config'}"]
        return argv, port

    def ssh_command(self, port: int, cipher: str | None = None) -> list[str]:
        argv = ["ssh", "-p", str(port), "-i", str(self.dir / "user"), *SSH_OPTS]
        if cipher:
            argv += ["-c", cipher]
        return argv

    def scp(self, cipher: str | None) -> Callable[[Path, Path], Sample]:
        def run(source: Path, dest: Path) -> Sample:
            listen, port = self.listener()
            argv = ["scp", "-q", "-r", "-P", str(port), "-i", str(self.dir / "user"),
                    *SSH_OPTS, *(["-c", cipher] if cipher else []),
                    str(source), f"root@{HOST}:{dest}/"]
            # sshd -i exits 255 when the client hangs up; the client's status is the verdict.
            return pair(listen, argv, port, check_receiver=False)
        return run

    def rsync(self, source: Path, dest: Path) -> Sample:
        listen, port = self.listener()
        argv = ["rsync", "-a", "-e", " ".join(self.ssh_command(port)), str(source),
                f"root@{HOST}:{dest}/"]
        return pair(listen, argv, port, check_receiver=False)


# ---------------------------------------------------------------- wormhole

class Wormhole:
    """magic-wormhole with its own mailbox server and transit relay on loopback."""

    def __init__(self, base: Path) -> None:
        self.bin = WORMHOLE_VENV / "bin"
        # Written last: a set-up that was interrupted is done again, not half used.
        done = WORMHOLE_VENV / "sidedoor-bench-complete"
        if not done.exists():
            if WORMHOLE_VENV.exists() and WORMHOLE_VENV != DEFAULT_VENV:
                raise RuntimeError(f"{WORMHOLE_VENV} exists but was not set up here; "
                                   "remove it, or set SIDEDOOR_BENCH_VENV to a new folder")
            print(f"setting up magic-wormhole in {WORMHOLE_VENV} ...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(WORMHOLE_VENV)],
                           check=True)
            subprocess.run([str(self.bin / "pip"), "install", "-q", "magic-wormhole",
                            "magic-wormhole-mailbox-server", "magic-wormhole-transit-relay"],
                           check=True)
            done.touch()
        self.mailbox_port, self.relay_port = free_port(), free_port()
        self.dir = base / "wormhole"
        self.dir.mkdir()
        self.servers = [
            subprocess.Popen([str(self.bin / "twistd"), "-n", "--pidfile=", "-l", "-",
                              "wormhole-mailbox", "--port",
                              f"tcp:{self.mailbox_port}:interface={HOST}",
                              "--channel-db", str(self.dir / "mailbox.sqlite")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             cwd=self.dir),
            subprocess.Popen([str(self.bin / "twistd"), "-n", "--pidfile=", "-l", "-",
                              "transitrelay", "--port",
                              f"tcp:{self.relay_port}:interface={HOST}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             cwd=self.dir),
        ]
        wait_port(self.mailbox_port)
        wait_port(self.relay_port)
        self.count = 0

    def run(self, source: Path, dest: Path) -> Sample:
        self.count += 1
        code = f"{self.count}-bench-round"
        common = [str(self.bin / "wormhole"), "--relay-url",
                  f"ws://{HOST}:{self.mailbox_port}/v1", "--transit-helper",
                  f"tcp:{HOST}:{self.relay_port}"]
        receiver = [*common, "receive", "--accept-file", "--hide-progress",
                    "-o", str(dest / source.name), code]
        sender = [*common, "send", "--code", code, "--hide-progress", str(source)]
        # The sender must claim the code before the receiver asks for it.
        send = Side(sender)
        time.sleep(0.3)
        start = time.perf_counter()
        recv = Side(receiver)
        recv.wait()
        send.wait()
        seconds = time.perf_counter() - start
        return Sample(seconds, send.cpu, recv.cpu, send.maxrss, recv.maxrss)

    def close(self) -> None:
        for server in self.servers:
            server.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(5)


# ------------------------------------------------------------------- socat

def socat_run(source: Path, dest: Path) -> Sample:
    port = free_port()
    if source.is_file():
        receiver = ["socat", "-u", f"TCP-LISTEN:{port},bind={HOST},reuseaddr",
                    f"CREATE:{dest / source.name}"]
        sender = ["socat", "-u", f"FILE:{source}", f"TCP:{HOST}:{port}"]
    else:
        receiver = ["sh", "-c", f"socat -u TCP-LISTEN:{port},bind={HOST},reuseaddr - | "
                                f"tar -C {dest} -xf -"]
        sender = ["sh", "-c", f"tar -C {source.parent} -cf - {source.name} | "
                              f"socat -u - TCP:{HOST}:{port}"]
    return pair(receiver, sender, port)


# -------------------------------------------------------------------- data

def make_big(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n


def make_folder(path: Path, count: int, size: int = 10 * 1024) -> None:
    for i in range(count):
        sub = path / f"d{i // 1000:02}"
        if i % 1000 == 0:
            sub.mkdir(parents=True)
        (sub / f"file{i:05}.bin").write_bytes(os.urandom(size))


def creation_rate(base: Path) -> float:
    """Files created per second in a fresh folder (slow right after mass deletion)."""
    probe = base / f"probe-{time.monotonic_ns()}"
    probe.mkdir()
    start = time.perf_counter()
    for i in range(2000):
        (probe / str(i)).write_bytes(b"x")
    return 2000 / (time.perf_counter() - start)


# ------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--only", default="", help="comma-separated tool names to run")
    parser.add_argument("--cases", default="file,folder")
    parser.add_argument("--dir", default=None, help="where to put the data (default: /tmp)")
    parser.add_argument("--fs", choices=("here", "ext4"), default="here",
                        help="'ext4': put the data on a fresh ext4 with a journal, "
                             "loop-mounted from an image in --dir (see above; root only)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the receiving sidedoor node (sidedoor config "
                             "set KEY VALUE), e.g. direct-writes=off or fsync=on; repeatable")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds to wait before each timed copy, so that every tool "
                             "writes into memory in the same state (see above)")
    args = parser.parse_args()

    # A plain kill (SIGTERM) also unwinds through the cleanups: apt's policy file
    # removed, nodes stopped, ext4 image unmounted, data removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    install_system_tools({t for t in args.only.split(",") if t})
    base = Path(tempfile.mkdtemp(prefix="sidedoor-bench-", dir=args.dir))
    cleanups: list[Callable[[], None]] = []
    try:
        if args.fs == "ext4":
            base = journaled_fs(base, cleanups)
        run_bench(base, args, cleanups)
    finally:
        for cleanup in reversed(cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        shutil.rmtree(base, ignore_errors=True)


def journaled_fs(where: Path, cleanups: list[Callable[[], None]]) -> Path:
    """A fresh ext4 with a journal, mounted from a sparse image in ``where``."""
    image, mount = where / "fs.img", where / "fs"
    mount.mkdir()
    with image.open("wb") as f:
        f.truncate(64 << 30)  # sparse: only what is written takes space
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "has_journal", str(image)], check=True)
    # --direct-io: the image is written like a disk, not through this system's cache.
    device = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", str(image)],
                            check=True,
                            capture_output=True, text=True).stdout.strip()

    def unmount() -> None:
        for _ in range(50):
            if subprocess.run(["umount", str(mount)], check=False,
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.2)  # a process that held a file there is still exiting
        else:
            subprocess.run(["umount", "-l", str(mount)], check=False)
        subprocess.run(["losetup", "-d", device], check=False)

    # Cleanups run last first: unmount and detach, then remove the image.
    cleanups.append(lambda: shutil.rmtree(where, ignore_errors=True))
    cleanups.append(unmount)
    subprocess.run(["mount", device, str(mount)], check=True)
    print(f"data on a fresh ext4 with a journal, mounted at {mount}", file=sys.stderr)
    return mount


def run_bench(base: Path, args: argparse.Namespace, cleanups: list[Callable[[], None]]) -> None:
    only = {t for t in args.only.split(",") if t}
    wanted = lambda name: not only or name.split(" ")[0] in only  # noqa: E731
    tools: list[Tool] = []
    if wanted("sidedoor"):
        sd = SidedoorPair(base / "nodes", args.set)
        cleanups.append(sd.close)
        tools.append(Tool("sidedoor", sd.run, note=(
            "the receiving node with " + ", ".join(args.set) if args.set else "")))
    if shutil.which("socat") and wanted("socat"):
        tools.append(Tool("socat (raw TCP)", socat_run))
    if wanted("scp") or wanted("rsync"):
        try:
            ssh = PrivateSsh(base)
        except RuntimeError as exc:
            print(f"no scp/rsync: {exc}", file=sys.stderr)
        else:
            if wanted("scp"):
                tools.append(Tool("scp (chacha20)", ssh.scp(None)))
                tools.append(Tool("scp (aes128-gcm)", ssh.scp("aes128-gcm@openssh.com")))
            if wanted("rsync") and shutil.which("rsync"):
                tools.append(Tool("rsync over ssh", ssh.rsync))
    if wanted("wormhole"):
        try:
            wormhole = Wormhole(base)
        except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
            print(f"no magic-wormhole: {exc}", file=sys.stderr)
        else:
            cleanups.append(wormhole.close)
            tools.append(Tool("magic-wormhole", wormhole.run))

    cases: dict[str, Path] = {}
    if "file" in args.cases:
        big = base / "src" / "big.bin"
        big.parent.mkdir(parents=True, exist_ok=True)
        print(f"making a {args.size_mib} MiB file ...", file=sys.stderr)
        make_big(big, args.size_mib * MiB)
        cases[f"{args.size_mib} MiB file"] = big
    if "folder" in args.cases:
        folder = base / "src" / "folder"
        print(f"making {args.files} files of 10 KiB ...", file=sys.stderr)
        make_folder(folder, args.files)
        cases[f"{args.files} x 10 KiB"] = folder
    digests = {name: tree_digest(path) for name, path in cases.items()}

    n = 0
    for round_no in range(args.rounds + 1):
        for case, source in cases.items():
            if source.is_dir():
                rate = creation_rate(base)
                print(f"round {round_no}: file creation {rate:,.0f}/s", file=sys.stderr)
            order = tools if round_no % 2 == 0 else list(reversed(tools))
            for tool in order:
                n += 1
                dest = base / "dst" / f"{n:04}"
                dest.mkdir(parents=True)
                # What earlier copies left in memory goes to the disk first: a tool
                # that writes to the disk as it goes (sidedoor's large files) would
                # otherwise queue behind another tool's write-back.
                os.sync()
                time.sleep(args.settle)
                sample = tool.run(source, dest)
                got = tree_digest(dest / source.name)
                if got != digests[case]:
                    raise RuntimeError(f"{tool.name}: the copy of {case} differs from the "
                                       "source")
                if round_no == 0:
                    continue  # warm-up
                tool.samples.setdefault(case, []).append(sample)
                print(f"round {round_no} {case:>16} {tool.name:>18}: "
                      f"{sample.seconds:7.3f} s (CPU {sample.cpu_send:.2f} + "
                      f"{sample.cpu_recv:.2f} s, load {os.getloadavg()[0]:.2f})",
                      file=sys.stderr)
                if source.is_file():
                    # A 1 GiB copy kept per round adds up: drop it (files, not folders).
                    (dest / source.name).unlink()

    for case, source in cases.items():
        size = (source.stat().st_size if source.is_file() else
                sum(p.stat().st_size for p in source.rglob("*") if p.is_file()))
        print(f"\n{case} ({size / 1e6:,.0f} MB), median of {args.rounds} rounds; "
              f"load average now {os.getloadavg()[0]:.2f}")
        header = (f"{'tool':<18} {'seconds':>8} {'MB/s':>8} {'CPU send':>9} {'CPU recv':>9} "
                  f"{'mem send':>9} {'mem recv':>9} {'sidedoor is':>12}")
        print(header)
        print("-" * len(header))
        ref = None
        rows = []
        for tool in tools:
            samples = tool.samples.get(case)
            if not samples:
                continue
            med = Sample(*(statistics.median(getattr(s, f) for s in samples)
                           for f in ("seconds", "cpu_send", "cpu_recv", "mem_send",
                                     "mem_recv")))
            if tool.name == "sidedoor":
                ref = med.seconds
            rows.append((tool.name, med))
        for name, med in rows:
            ratio = f"{med.seconds / ref:10.2f}x" if ref else ""
            print(f"{name:<18} {med.seconds:8.3f} {size / med.seconds / 1e6:8.0f} "
                  f"{med.cpu_send:9.2f} {med.cpu_recv:9.2f} {med.mem_send / 1e6:7.0f}MB "
                  f"{med.mem_recv / 1e6:7.0f}MB {ratio:>12}")
    print("\n'sidedoor is' = that tool's time / sidedoor's time (above 1: sidedoor is faster).")
    for tool in tools:
        if tool.note:
            print(f"{tool.name}: {tool.note}")


if __name__ == "__main__":
    main()
