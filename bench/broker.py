"""Benchmark: the broker on loopback.

    python bench/broker.py [--size-mib 1024] [--rounds 3] [--peers 10000] [--mail 2000]

Measures, with a real `sidedoor broker` process and real nodes:
  * relay throughput: SIZE bytes over one sidedoor session relayed by the broker,
    next to the same session dialled directly, in interleaved rounds (medians);
  * capacity: how many idle registered peers one broker process holds (each a
    Noise session with a registration), and the broker's memory (RSS) with them;
  * mailbox: deposits per second (sealed 1 KiB envelopes for an offline contact),
    then deliveries per second when the contact comes online.

The sender node runs in this process; the receiving node and the broker are
processes of their own. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sidedoor.identity import Identity, PublicIdentity, verify_noise_proof
from sidedoor.net.broker_client import BrokerLink
from sidedoor.net.connection import ChannelStream, Connection, dial, local_keys, new_session
from sidedoor.node import Node
from sidedoor.proto import broker as wire
from sidedoor.proto.broker import BrokerAddress
from sidedoor.proto.session import Role
from sidedoor.testing.broker import start_broker, stop_broker

HOST = "127.0.0.1"
CHUNK = 1 << 20
SINK = "bench-sink"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else 0.0


async def registered(node: Node, url: str) -> BrokerLink:
    link = await node.add_broker(url)
    await asyncio.wait_for(link.registered.wait(), 20)
    return link


# ------------------------------------------------------------- receiving node

async def receiver(home: Path, url: str) -> None:
    """A node that sinks channels and reports byte counts; joins the sender's invite."""
    node = Node(home, host=HOST, port=0, remember_port=False, keep_in_touch=False)

    async def sink(remote: PublicIdentity, stream: ChannelStream) -> None:
        total = 0
        while chunk := await stream.read():
            total += len(chunk)
        await stream.write(str(total).encode())
        stream.end()

    node.add_channel_handler(SINK, sink)
    await node.start()
    await registered(node, url)
    print(json.dumps({"address": node.public.address, "port": node.port}), flush=True)
    code = sys.stdin.readline().strip()
    await node.invites.join(code)
    print("joined", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await node.aclose()


# ------------------------------------------------------------------ relay

async def send_through(conn: Connection, size: int) -> float:
    payload = os.urandom(CHUNK)
    start = time.perf_counter()
    stream = await conn.open_channel(SINK)
    sent = 0
    while sent < size:
        n = min(CHUNK, size - sent)
        await stream.write(payload[:n])
        sent += n
    stream.end()
    answer = await stream.read_all(64, timeout=300)
    elapsed = time.perf_counter() - start
    if int(answer) != size:
        raise SystemExit(f"the receiver counted {answer!r}, not {size}")
    return size / elapsed / 1e6


async def relay_rounds(workdir: Path, size: int, rounds: int) -> dict[str, list[float]]:
    broker, url = start_broker(workdir / "broker-relay")
    loop = asyncio.get_running_loop()
    peer = subprocess.Popen(  # noqa: ASYNC220 (started once, before any timing)
        [sys.executable, __file__, "--role", "receiver", "--home", str(workdir / "bob"),
         "--url", url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert peer.stdin is not None and peer.stdout is not None
    results: dict[str, list[float]] = {"direct": [], "relayed": [], "broker_cpu": []}
    try:
        stdout = peer.stdout
        info = json.loads(await loop.run_in_executor(None, stdout.readline))
        bob = PublicIdentity.from_address(info["address"])
        # No background sessions: each round chooses its path.
        async with Node(workdir / "alice", host=HOST, port=0, remember_port=False,
                        keep_in_touch=False) as alice:
            link = await registered(alice, url)
            invite = await alice.invites.create()
            peer.stdin.write(f"{invite.code}\n")
            peer.stdin.flush()
            # Read in a thread: this loop must keep serving the invite meanwhile.
            if (await loop.run_in_executor(None, stdout.readline)).strip() != "joined":
                raise SystemExit("the receiver could not join")
            for conn in list(alice.sessions):
                await conn.aclose("bench starts")
            for _ in range(rounds):
                for kind in ("direct", "relayed"):
                    if kind == "direct":
                        conn = await alice.connect(bob, HOST, info["port"])
                    else:
                        conn = await link.relay(bob, timeout=10)
                    cpu = cpu_seconds(broker.pid)
                    results[kind].append(await send_through(conn, size))
                    if kind == "relayed":
                        results["broker_cpu"].append(cpu_seconds(broker.pid) - cpu)
                    await conn.aclose("round done")
                    await asyncio.sleep(0.2)
        peer.stdin.write("\n")
        peer.stdin.flush()
        await loop.run_in_executor(None, peer.wait, 30)
    finally:
        for proc in (peer, broker):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if broker.stdout is not None:
            broker.stdout.close()
    return results


# --------------------------------------------------------------- capacity

async def hold_peers(url: str, count: int) -> tuple[float, list[Connection]]:
    """``count`` registered idle peers, each its own identity and session."""
    address = BrokerAddress.parse(url)
    conns: list[Connection] = []
    gate = asyncio.Semaphore(64)

    async def one() -> None:
        async with gate:
            identity = Identity.generate()
            session = new_session(Role.INITIATOR, local_keys(identity), verify_noise_proof,
                                  expected_remote=address.identity.key)
            conn = await dial(address.host, address.port, session, timeout=60)
            stream = await conn.open_channel(wire.KIND_BROKER, timeout=60)
            await stream.write_message(wire.encode(wire.Register(1, [], 0, [], True)))
            reply = wire.decode_from_broker(await stream.read_message(1 << 16, timeout=60)
                                            or b"")
            if not isinstance(reply, wire.Registered):
                raise SystemExit(f"registration refused: {reply}")
            conns.append(conn)

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return time.perf_counter() - start, conns


async def capacity(workdir: Path, count: int) -> dict[str, Any]:
    broker, url = start_broker(workdir / "broker-capacity")
    try:
        base = rss_mib(broker.pid)
        elapsed, conns = await hold_peers(url, count)
        await asyncio.sleep(2)
        rss = rss_mib(broker.pid)
        alive = sum(1 for c in conns if c.is_open)
        for conn in conns:
            conn.close("done")
        return {"peers": count, "alive": alive, "seconds": elapsed, "rss_mib": rss,
                "rss_base_mib": base, "kib_per_peer": (rss - base) * 1024 / count}
    finally:
        stop_broker(broker)
        if broker.stdout is not None:
            broker.stdout.close()


# ----------------------------------------------------------------- mailbox

async def mailbox(workdir: Path, count: int) -> dict[str, float]:
    broker, url = start_broker(workdir / "broker-mail", "--mailbox-max", str(count * 4),
                               "--mailbox-mib", "1024")
    try:
        from sidedoor.testing.nodes import befriend

        alice = Node(workdir / "mail-alice", host=HOST, port=0, remember_port=False)
        bob = Node(workdir / "mail-bob", host=HOST, port=0, remember_port=False)
        got = 0
        all_in = asyncio.Event()

        async def handler(sender: PublicIdentity, payload: bytes) -> None:
            nonlocal got
            got += 1
            if got == count:
                all_in.set()

        bob.mail.add_handler("bench", handler)
        await alice.start()
        await bob.start()
        await befriend(alice, bob)
        await registered(alice, url)
        await registered(bob, url)
        await bob.aclose()
        await asyncio.sleep(0.5)
        payload = os.urandom(1024)
        gate = asyncio.Semaphore(32)

        async def deposit() -> None:
            async with gate:
                if not await alice.mail.send(bob.public.key, "bench", payload):
                    raise SystemExit("a deposit failed")

        start = time.perf_counter()
        await asyncio.gather(*(deposit() for _ in range(count)))
        deposit_s = time.perf_counter() - start
        await alice.aclose()
        bob = Node(workdir / "mail-bob", host=HOST, port=0, remember_port=False)
        bob.mail.add_handler("bench", handler)
        start = time.perf_counter()
        await bob.start()
        await asyncio.wait_for(all_in.wait(), 600)
        deliver_s = time.perf_counter() - start
        await bob.aclose()
        return {"count": count, "deposits_per_s": count / deposit_s,
                "deliveries_per_s": count / deliver_s}
    finally:
        stop_broker(broker)
        if broker.stdout is not None:
            broker.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--mail", type=int, default=2000)
    parser.add_argument("--role", default="", help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "receiver":
        asyncio.run(receiver(args.home, args.url))
        return
    with tempfile.TemporaryDirectory(prefix="sidedoor-bench-") as tmp:
        workdir = Path(tmp)
        size = args.size_mib << 20
        rounds = asyncio.run(relay_rounds(workdir, size, args.rounds))
        direct = statistics.median(rounds["direct"])
        relayed = statistics.median(rounds["relayed"])
        print(f"\nRelay: {args.size_mib} MiB over one session, median of {args.rounds}")
        print(f"  {'path':<10}{'MB/s':>10}{'÷ direct':>12}")
        print(f"  {'direct':<10}{direct:>10.0f}{1.0:>12.2f}")
        print(f"  {'relayed':<10}{relayed:>10.0f}{relayed / direct:>12.2f}")
        broker_cpu = statistics.median(rounds["broker_cpu"]) / (size / (1 << 30))
        print(f"  broker CPU: {broker_cpu:.2f} s per GiB relayed")
        cap = asyncio.run(capacity(workdir, args.peers))
        print(f"\nCapacity: {cap['alive']} of {cap['peers']} idle registered peers held; "
              f"registered in {cap['seconds']:.1f} s; broker RSS {cap['rss_mib']:.0f} MiB "
              f"({cap['kib_per_peer']:.1f} KiB per peer)")
        mail = asyncio.run(mailbox(workdir, args.mail))
        print(f"\nMailbox: {mail['count']} sealed 1 KiB envelopes: "
              f"{mail['deposits_per_s']:.0f} deposits/s, "
              f"{mail['deliveries_per_s']:.0f} deliveries/s")


if __name__ == "__main__":
    main()
