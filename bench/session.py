"""Benchmark: one sidedoor session on loopback, next to a raw TCP copy of the same bytes.

    python bench/session.py [--size-mib 1024] [--rounds 3] [--handshakes 200]

Measures
  * handshake time (XX and IK, dial to handshake complete, in one process), and
  * bulk throughput: SIZE bytes through one encrypted stream channel between two
    processes, against (a) a plain asyncio socket pair in two processes and
    (b) socat, when installed, copying the same number of bytes.

The tools run in interleaved rounds in one run, and the medians are compared, so
the VM's warm-up effects hit every tool alike. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sidedoor.identity import verify_noise_proof
from sidedoor.net.connection import ChannelStream, Connection, dial, new_session
from sidedoor.proto.noise import Pattern
from sidedoor.proto.session import Role
from sidedoor.testing.sessions import identity_from, local_keys

CHUNK = 256 * 1024
HOST = "127.0.0.1"


# ------------------------------------------------------------------ receivers

async def sidedoor_receiver(port_file: Path) -> None:
    bob = identity_from("bench-bob")
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    sinks: set[asyncio.Task[None]] = set()

    def on_channel(conn: Connection, stream: ChannelStream) -> None:
        async def sink() -> None:
            total = 0
            while chunk := await stream.read():
                total += len(chunk)
            await stream.write(str(total).encode())
            stream.end()
        task = loop.create_task(sink())
        sinks.add(task)
        task.add_done_callback(sinks.discard)

    def factory() -> Connection:
        session = new_session(Role.RESPONDER, local_keys(bob), verify_noise_proof)
        conn = Connection(session, on_channel=on_channel)
        conn.closed.add_done_callback(lambda _: done.set())
        return conn

    server = await loop.create_server(factory, HOST, 0)
    port_file.write_text(str(server.sockets[0].getsockname()[1]))  # noqa: ASYNC240
    await done.wait()
    server.close()


class _RawSink(asyncio.Protocol):
    def __init__(self, finished: asyncio.Future[int]) -> None:
        self.total = 0
        self.finished = finished

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.total += len(data)

    def eof_received(self) -> bool:
        self.transport.write(str(self.total).encode())
        self.transport.close()
        if not self.finished.done():
            self.finished.set_result(self.total)
        return False


async def raw_receiver(port_file: Path) -> None:
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[int] = loop.create_future()
    server = await loop.create_server(lambda: _RawSink(finished), HOST, 0)
    port_file.write_text(str(server.sockets[0].getsockname()[1]))  # noqa: ASYNC240
    await finished
    server.close()


# -------------------------------------------------------------------- senders

async def sidedoor_send(port: int, size: int) -> float:
    alice, bob = identity_from("bench-alice"), identity_from("bench-bob")
    session = new_session(Role.INITIATOR, local_keys(alice), verify_noise_proof,
                          expected_remote=bob.public.key)
    conn = await dial(HOST, port, session)
    stream = await conn.open_channel("bench")
    block = memoryview(b"\x5a" * CHUNK)
    start = time.perf_counter()
    sent = 0
    while sent < size:
        n = min(CHUNK, size - sent)
        await stream.write(block[:n])
        sent += n
    stream.end()
    reply = await stream.read()
    elapsed = time.perf_counter() - start
    if int(reply) != size:
        raise SystemExit(f"receiver got {reply!r} bytes, expected {size}")
    await conn.aclose()
    return elapsed


async def raw_send(port: int, size: int) -> float:
    reader, writer = await asyncio.open_connection(HOST, port)
    block = b"\x5a" * CHUNK
    start = time.perf_counter()
    sent = 0
    while sent < size:
        n = min(CHUNK, size - sent)
        writer.write(block[:n] if n < CHUNK else block)
        await writer.drain()
        sent += n
    writer.write_eof()
    reply = await reader.read()
    elapsed = time.perf_counter() - start
    if int(reply) != size:
        raise SystemExit(f"raw receiver got {reply!r} bytes, expected {size}")
    writer.close()
    return elapsed


# ------------------------------------------------------------------ runners

def run_pair(kind: str, size: int, workdir: Path) -> float:
    port_file = workdir / f"{kind}.port"
    port_file.unlink(missing_ok=True)
    receiver = subprocess.Popen(
        [sys.executable, __file__, "--role", f"{kind}-receiver", "--port-file", str(port_file)]
    )
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or receiver.poll() is not None:
                raise SystemExit(f"{kind} receiver did not start")
            time.sleep(0.02)
        port = int(port_file.read_text())
        sender = asyncio.run(sidedoor_send(port, size) if kind == "sidedoor"
                             else raw_send(port, size))
        receiver.wait(timeout=60)
        return sender
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()


def run_socat(size: int, workdir: Path) -> float | None:
    socat = shutil.which("socat")
    if socat is None:
        return None
    source = workdir / "source.bin"
    if not source.exists() or source.stat().st_size != size:
        with open(source, "wb") as f:
            f.truncate(size)  # sparse: reading it costs no disk I/O
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    sink = subprocess.Popen(
        [socat, "-u", "-b", str(CHUNK), f"TCP-LISTEN:{port},bind={HOST},reuseaddr",
         "OPEN:/dev/null,wronly"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        start = time.perf_counter()
        subprocess.run(
            [socat, "-u", "-b", str(CHUNK), f"OPEN:{source},rdonly", f"TCP:{HOST}:{port}"],
            check=True, timeout=120,
        )
        sink.wait(timeout=60)
        return time.perf_counter() - start
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()


async def measure_handshakes(count: int) -> dict[str, float]:
    alice, bob = identity_from("hs-alice"), identity_from("hs-bob")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Connection(new_session(Role.RESPONDER, local_keys(bob), verify_noise_proof)),
        HOST, 0,
    )
    port = server.sockets[0].getsockname()[1]
    results: dict[str, float] = {}
    for pattern in (Pattern.XX, Pattern.IK):
        times = []
        for _ in range(count):
            session = new_session(
                Role.INITIATOR, local_keys(alice), verify_noise_proof, pattern=pattern,
                expected_remote=bob.public.key,
                remote_static=bob.noise_public if pattern is Pattern.IK else None,
            )
            start = time.perf_counter()
            conn = await dial(HOST, port, session)
            times.append(time.perf_counter() - start)
            await conn.aclose()
        results[pattern.value] = statistics.median(times) * 1000
    server.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--handshakes", type=int, default=200)
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "sidedoor-receiver":
        asyncio.run(sidedoor_receiver(args.port_file))
        return
    if args.role == "raw-receiver":
        asyncio.run(raw_receiver(args.port_file))
        return

    size = args.size_mib << 20
    hs = asyncio.run(measure_handshakes(args.handshakes))
    print(f"handshake (dial to authenticated, loopback, median of {args.handshakes}): "
          f"XX {hs['XX']:.2f} ms, IK {hs['IK']:.2f} ms")

    times: dict[str, list[float]] = {"sidedoor": [], "raw asyncio": [], "socat": []}
    with tempfile.TemporaryDirectory(prefix="sidedoor-bench-") as tmp:
        workdir = Path(tmp)
        # Warm-up: page cache, memory handed back by the VM, socat's sparse source file.
        run_pair("raw", min(size, 256 << 20), workdir)
        run_socat(size, workdir)
        for round_no in range(1, args.rounds + 1):
            times["raw asyncio"].append(run_pair("raw", size, workdir))
            times["sidedoor"].append(run_pair("sidedoor", size, workdir))
            socat_time = run_socat(size, workdir)
            if socat_time is not None:
                times["socat"].append(socat_time)
            print(f"  round {round_no}: " + ", ".join(
                f"{name} {size / t[-1] / 1e6:.0f} MB/s" for name, t in times.items() if t))

    def rate(name: str) -> float:
        return size / statistics.median(times[name]) / 1e6

    print(f"\nbulk transfer, {args.size_mib} MiB, one stream, two processes, "
          f"median of {args.rounds} interleaved rounds:")
    print(f"  {'tool':<22}{'MB/s':>10}{'sidedoor / tool':>18}")
    ours = rate("sidedoor")
    for name in ("sidedoor", "raw asyncio", "socat"):
        if times[name]:
            print(f"  {name:<22}{rate(name):>10.0f}{ours / rate(name):>18.2f}")
        else:
            print(f"  {name:<22}{'(not installed)':>10}")
    if os.environ.get("SIDEDOOR_BENCH_STRICT") and hs["XX"] >= 5:
        raise SystemExit("handshake over the 5 ms target")


if __name__ == "__main__":
    main()
