"""Benchmark: chat between two nodes on loopback.

    python bench/chat.py [--rtt 1000] [--messages 20000]

Measures
  * round trip: a message posted to the sender's control API (HTTP) until it shows
    up on the receiver's event stream (SSE), one at a time: p50 and p99. Both nodes
    are real ``sidedoor up`` processes.
  * one-way throughput: messages a second from the sender node to the receiver's
    node, stored on both sides (the receiver stored each one and its "stored" answer
    came back and was recorded by the sender). The sender node runs in this process
    and sends through ``node.chat.send`` (the API's own call, without HTTP); the
    receiver is a real process.
  * CPU time per message of each node in the throughput run (the receiver's from
    /proc, the sender's process time, which includes this script's loop).

The control API's own round trip (GET /v1/status) is measured alongside, as the
floor under the chat round trip. The round trips are timed with a bare HTTP/1.1
client (one keep-alive connection, `LeanHTTP`) rather than aiohttp's: aiohttp's
client spends some 0.15 ms of CPU a request on this machine, which is the
instrument's cost, not the node's; ``--aiohttp-client`` times with it instead.
Next to them, the same measures for a plain asyncio TCP echo of 100-byte messages
between two processes (no encryption, no storage): the ceiling any chat over Python
sockets has here. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from sidedoor import event_loop
from sidedoor.control.client import ControlClient
from sidedoor.node import Node

HOST = "127.0.0.1"
TEXT = "x" * 100


def sd(home: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "sidedoor", "--home", str(home), *args],
                            capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise SystemExit(f"sidedoor {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


# ------------------------------------------------------- a bare HTTP client

class LeanHTTP(asyncio.Protocol):
    """The control API over one keep-alive HTTP/1.1 connection, one request at a time,
    or (`events`) its event stream: as little client work as HTTP allows."""

    def __init__(self, home: Path) -> None:
        info = json.loads((home / "control.json").read_text())
        self.port, self.token = int(info["port"]), str(info["token"])
        self.buf = bytearray()
        self.answer: asyncio.Future[Any] | None = None
        self.on_event: Any = None
        self.streaming = False

    async def open(self) -> LeanHTTP:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: self, HOST, self.port)
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = transport
        return self

    def close(self) -> None:
        self.transport.close()

    def _request(self, method: str, path: str, body: bytes) -> None:
        self.transport.write(
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        self.answer = asyncio.get_running_loop().create_future()
        self._request(method, path, b"" if body is None else json.dumps(body).encode())
        return await asyncio.wait_for(self.answer, 10)

    async def events(self, on_event: Any) -> None:
        """Follow the event stream, calling ``on_event(event)`` for each."""
        self.on_event, self.streaming = on_event, True
        self._request("GET", "/v1/events", b"")

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.streaming:
            self._stream()
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        size = 0
        for line in head.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                size = int(line[15:])
        if len(buf) < end + 4 + size:
            return
        body = bytes(buf[end + 4 : end + 4 + size])
        del buf[: end + 4 + size]
        status = int(head[9:12])
        if self.answer is not None and not self.answer.done():
            if status >= 400:
                self.answer.set_exception(RuntimeError(f"HTTP {status}: {body!r}"))
            else:
                self.answer.set_result(json.loads(body))

    def _stream(self) -> None:
        """Chunked transfer of SSE text; every chunk the node writes is one whole event."""
        buf = self.buf
        if buf.startswith(b"HTTP/"):
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            del buf[: end + 4]
        while True:
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                return
            size = int(buf[:line_end], 16)
            if len(buf) < line_end + 2 + size + 2:
                return
            chunk = bytes(buf[line_end + 2 : line_end + 2 + size])
            del buf[: line_end + 2 + size + 2]
            for line in chunk.split(b"\n"):
                if line.startswith(b"data: "):
                    self.on_event(json.loads(line[6:]))


# ------------------------------------------------------------------ sidedoor

async def rtt_sidedoor(sender: Path, receiver: Path, receiver_address: str, count: int,
                       pids: tuple[int, int], lean: bool = True
                       ) -> tuple[list[float], list[float], list[float]]:
    """Chat round trips, (the floor under them) bare control API round trips, and the
    CPU time per round trip of the sender and receiver nodes (status calls included)."""
    if lean:
        a_lean = await LeanHTTP(sender).open()
        b_lean = await LeanHTTP(receiver).open()
    async with ControlClient(sender) as a_aio, ControlClient(receiver) as b_aio:
        seen: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

        def on_event(event: dict[str, Any]) -> None:
            if event["type"] == "chat.message":
                seen.put_nowait((event["message"]["text"], time.perf_counter()))

        async def follow() -> None:
            if lean:
                await b_lean.events(on_event)
                return
            async for event in b_aio.events():
                on_event(event)

        a: LeanHTTP | ControlClient = a_lean if lean else a_aio
        watcher = asyncio.get_running_loop().create_task(follow())
        await asyncio.sleep(0.3)
        path = f"/v1/chat/conversations/{receiver_address}/messages"
        times = []
        api_times = []
        cpu0: list[float] = []
        try:
            for i in range(count + 100):
                if i == 100:
                    cpu0 = [proc_cpu(pid) for pid in pids]
                text = f"{i} {TEXT}"
                t0 = time.perf_counter()
                await a.call("POST", path, {"text": text})
                while True:
                    got, t1 = await asyncio.wait_for(seen.get(), 10)
                    if got == text:
                        break
                t2 = time.perf_counter()
                await a.call("GET", "/v1/status")
                if i >= 100:  # warm-up
                    times.append(t1 - t0)
                    api_times.append(time.perf_counter() - t2)
        finally:
            watcher.cancel()
            if lean:
                a_lean.close()
                b_lean.close()
        cpu = [(proc_cpu(pid) - c) / count for pid, c in zip(pids, cpu0, strict=True)]
        return times, api_times, cpu


async def throughput_sidedoor(sender_home: Path, receiver_pid: int, receiver_address: str,
                              count: int) -> dict[str, float]:
    from sidedoor.identity import PublicIdentity

    peer = PublicIdentity.from_address(receiver_address).key
    async with Node(sender_home, host=HOST, port=0, remember_port=False) as node:
        await node.reach(peer)
        assert node.db is not None
        db, store = node.db, node.chat.store

        def waiting() -> int:
            # Answered or not: the partial index on waiting messages makes this cheap
            # (a count of every undelivered row scans the table, on the sender's own
            # database thread, every few milliseconds: the instrument's cost, not chat's).
            return int(db.call(lambda c: c.execute(
                "SELECT count(*) FROM chat_messages WHERE mine = 1 "
                "AND state IN ('pending', 'mailed')").fetchone()[0]))

        def undelivered() -> int:
            return int(db.call(lambda c: c.execute(
                "SELECT count(*) FROM chat_messages WHERE mine = 1 AND state != 'delivered'"
            ).fetchone()[0]))

        cpu_rx0, cpu_tx0 = proc_cpu(receiver_pid), time.process_time()
        t0 = time.perf_counter()
        window = 2000
        for start in range(0, count, window):
            await asyncio.gather(*(node.chat.send(peer, f"{i} {TEXT}")
                                   for i in range(start, min(count, start + window))))
        async with asyncio.timeout(300):
            while await db.run(waiting):  # noqa: ASYNC110 (polling the database)
                await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - t0
        cpu_rx, cpu_tx = proc_cpu(receiver_pid) - cpu_rx0, time.process_time() - cpu_tx0
        failed = await db.run(undelivered)
        if failed:
            raise SystemExit(f"{failed} of {count} messages were not delivered")
        del store
    return {"rate": count / elapsed, "cpu_rx_us": cpu_rx / count * 1e6,
            "cpu_tx_us": cpu_tx / count * 1e6}


# ------------------------------------------------------------- raw baseline

class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def raw_server(port_file: Path) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, HOST, 0)
    port_file.write_text(str(server.sockets[0].getsockname()[1]))  # noqa: ASYNC240
    await asyncio.sleep(3600)


async def raw_client(port: int, rtt_count: int, count: int) -> dict[str, float]:
    reader, writer = await asyncio.open_connection(HOST, port)
    payload = (TEXT + "\n").encode()
    times = []
    for _ in range(rtt_count):
        t0 = time.perf_counter()
        writer.write(payload)
        await reader.readexactly(len(payload))
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for start in range(0, count, 1000):
        writer.write(payload * min(1000, count - start))
        await writer.drain()
    await reader.readexactly(len(payload) * count)
    rate = count / (time.perf_counter() - t0)
    writer.close()
    return {"p50": pct(times, 0.5), "p99": pct(times, 0.99), "rate": rate}


def run_raw(workdir: Path, rtt_count: int, count: int) -> dict[str, float]:
    port_file = workdir / "raw.port"
    server = subprocess.Popen([sys.executable, __file__, "--role", "raw-server",
                               "--port-file", str(port_file)])
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline:
                raise SystemExit("the raw echo server did not start")
            time.sleep(0.05)
        return event_loop.run(raw_client(int(port_file.read_text()), rtt_count, count))
    finally:
        server.kill()
        server.wait()


# --------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rtt", type=int, default=1000, help="round trips to time")
    parser.add_argument("--messages", type=int, default=20000, help="messages for throughput")
    parser.add_argument("--aiohttp-client", action="store_true",
                        help="time round trips with aiohttp's client (the CLI's) instead")
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "raw-server":
        event_loop.run(raw_server(args.port_file))
        return

    with tempfile.TemporaryDirectory(prefix="sidedoor-bench-") as tmp:
        work = Path(tmp)
        alice, bob = work / "alice", work / "bob"
        for home, name in ((alice, "Alice"), (bob, "Bob")):
            sd(home, "name", name)
        up = ("up", "--detach", "--host", HOST, "--no-discovery")
        sd(alice, *up)
        sd(bob, *up)
        try:
            link = json.loads(sd(alice, "invite", "--link", "--json"))["link"]
            sd(bob, "join", link)
            bob_status: dict[str, Any] = json.loads(sd(bob, "status", "--json"))
            alice_pid = int(json.loads(sd(alice, "status", "--json"))["pid"])
            rtts, api, rtt_cpu = event_loop.run(rtt_sidedoor(
                alice, bob, bob_status["address"], args.rtt, (alice_pid, int(bob_status["pid"])),
                lean=not args.aiohttp_client))
            # Throughput: Alice's node, now in this process, writes to Bob (a real process).
            sd(alice, "down")
            tput = event_loop.run(throughput_sidedoor(alice, int(bob_status["pid"]),
                                                   bob_status["address"], args.messages))
        finally:
            for home in (alice, bob):
                subprocess.run([sys.executable, "-m", "sidedoor", "--home", str(home), "down"],
                               capture_output=True, timeout=30, check=False)
        raw = run_raw(work, args.rtt, args.messages)

    p50, p99 = pct(rtts, 0.5) * 1e3, pct(rtts, 0.99) * 1e3
    print(f"chat between two nodes on {HOST} ({args.rtt} round trips, "
          f"{args.messages} messages of {len(TEXT)}+ bytes)\n")
    print(f"  {'measure':<44}{'sidedoor':>12}{'raw TCP echo':>14}{'ratio':>8}   target")
    rows = [
        ("round trip p50, ms (API -> peer's SSE)", p50, raw["p50"] * 1e3, "< 1 ms"),
        ("round trip p99, ms", p99, raw["p99"] * 1e3, "< 5 ms"),
        ("one-way, messages/s stored on both sides", tput["rate"], raw["rate"], ">= 10000"),
    ]
    for name, ours, base, target in rows:
        print(f"  {name:<44}{ours:>12.2f}{base:>14.2f}{ours / base:>8.2f}   {target}")
    print(f"  {'CPU per message, receiver node, us':<44}{tput['cpu_rx_us']:>12.1f}")
    print(f"  {'CPU per message, sender node + driver, us':<44}{tput['cpu_tx_us']:>12.1f}")
    print(f"\n  round trip mean {statistics.mean(rtts) * 1e3:.2f} ms, "
          f"max {max(rtts) * 1e3:.2f} ms; the control API alone (GET /v1/status): "
          f"p50 {pct(api, 0.5) * 1e3:.2f} ms, p99 {pct(api, 0.99) * 1e3:.2f} ms")
    print(f"  CPU per round trip: sender node {rtt_cpu[0] * 1e6:.0f} us, receiver node "
          f"{rtt_cpu[1] * 1e6:.0f} us (with one GET /v1/status each)")
    print(f"  event loop of the nodes and of this script: {bob_status.get('event_loop', '?')}")
    print(f"  machine load average while measuring: {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
