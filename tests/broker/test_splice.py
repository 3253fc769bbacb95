"""The relay joined in the kernel (splice): bytes, order, back-pressure, ends and errors."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sidedoor.broker import splice
from sidedoor.broker.server import BrokerServer
from sidedoor.broker.splice import AVAILABLE, BULK_PIPE_SIZE, SplicedRelay
from sidedoor.errors import SidedoorError
from sidedoor.identity import PublicIdentity
from sidedoor.node import Node
from sidedoor.testing.nodes import befriend, eventually

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="needs os.splice (Linux)")


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one loopback TCP connection, non-blocking."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    for sock in (client, accepted):
        sock.setblocking(False)
    return client, accepted


class Rig:
    def __init__(self, a_first: bytes = b"", b_first: bytes = b"") -> None:
        self.a_peer, a_relay = tcp_pair()
        self.b_peer, b_relay = tcp_pair()
        self.counted = 0
        self.ended: list[SplicedRelay] = []
        self.relay = SplicedRelay(asyncio.get_running_loop(), a_relay, b_relay, a_first,
                                  b_first, on_bytes=self._count, on_end=self.ended.append)

    def _count(self, n: int) -> None:
        self.counted += n

    def close(self) -> None:
        self.relay.abort()
        self.a_peer.close()
        self.b_peer.close()


@pytest.fixture
async def rig_factory() -> AsyncIterator[Any]:
    rigs: list[Rig] = []

    def make(**kwargs: bytes) -> Rig:
        rig = Rig(**kwargs)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


async def read_to_eof(sock: socket.socket, slow: bool = False) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    async with asyncio.timeout(20):
        while chunk := await loop.sock_recv(sock, 1 << 16):
            got += chunk
            if slow and len(got) < (4 << 20):
                await asyncio.sleep(0.001)  # a slow reader: the relay must hold back
    return bytes(got)


async def send_and_end(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)
    sock.shutdown(socket.SHUT_WR)


async def test_both_ways_at_once_in_order_with_the_early_bytes_first(rig_factory: Any) -> None:
    rig: Rig = rig_factory(a_first=b"early from a;", b_first=b"early from b;")
    a_to_b, b_to_a = os.urandom(24 << 20), os.urandom(6 << 20)
    rig.relay.start()
    results = await asyncio.gather(
        send_and_end(rig.a_peer, a_to_b), send_and_end(rig.b_peer, b_to_a),
        read_to_eof(rig.b_peer, slow=True), read_to_eof(rig.a_peer))
    assert results[2] == b"early from a;" + a_to_b
    assert results[3] == b"early from b;" + b_to_a
    await eventually(lambda: rig.ended, what="the relay to end once both ways ended")
    assert rig.ended == [rig.relay] and rig.relay.error is None
    assert rig.counted == len(a_to_b) + len(b_to_a)  # the early bytes are counted by the caller
    # Bulk data grew the pipe of the busy direction (root: no pipe quota here).
    assert rig.relay._directions[0].pipe_size == BULK_PIPE_SIZE


async def test_a_half_close_is_passed_on_and_the_other_way_goes_on(rig_factory: Any) -> None:
    rig: Rig = rig_factory()
    rig.relay.start()
    loop = asyncio.get_running_loop()
    await send_and_end(rig.a_peer, b"question")
    assert await read_to_eof(rig.b_peer) == b"question"
    assert not rig.ended  # b may still answer
    await loop.sock_sendall(rig.b_peer, b"answer after a's end")
    assert await asyncio.wait_for(loop.sock_recv(rig.a_peer, 100), 5) == b"answer after a's end"
    rig.b_peer.shutdown(socket.SHUT_WR)
    assert await read_to_eof(rig.a_peer) == b""
    await eventually(lambda: rig.ended, what="the relay to end")
    # A few bytes each way: the pipes kept the kernel's default size.
    assert all(d.pipe_size < BULK_PIPE_SIZE for d in rig.relay._directions)


async def test_out_of_descriptors_while_joining_leaks_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[int] = []
    real_pipe2 = os.pipe2

    def pipe2_once(flags: int) -> tuple[int, int]:
        if made:
            raise OSError(24, "Too many open files")
        fds = real_pipe2(flags)
        made.extend(fds)
        return fds

    monkeypatch.setattr(splice.os, "pipe2", pipe2_once)
    a, a_far = tcp_pair()
    b, b_far = tcp_pair()
    try:
        with pytest.raises(OSError, match="Too many"):
            SplicedRelay(asyncio.get_running_loop(), a, b, b"", b"",
                         on_bytes=lambda n: None, on_end=lambda r: None)
        for fd in made:  # the first direction's pipe was given back
            with pytest.raises(OSError):
                os.fstat(fd)
    finally:
        for sock in (a, a_far, b, b_far):
            sock.close()


async def test_a_reset_ends_the_relay_and_closes_the_other_side(rig_factory: Any) -> None:
    rig: Rig = rig_factory()
    rig.relay.start()
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(rig.a_peer, b"x" * 1000)
    assert len(await asyncio.wait_for(loop.sock_recv(rig.b_peer, 2000), 5)) > 0
    # Close with a reset (linger 0) while b still sends: a's relay socket errors.
    rig.a_peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    rig.a_peer.close()
    with pytest.raises(OSError):
        for _ in range(200):
            await loop.sock_sendall(rig.b_peer, b"y" * 65536)
            await asyncio.sleep(0.01)
    assert rig.ended == [rig.relay]
    assert rig.relay.sockets[0].fileno() == -1 and rig.relay.sockets[1].fileno() == -1


# ------------------------------------------------------------ through the broker
async def relayed_pair(node_factory: Any, broker: BrokerServer) -> tuple[Node, Node, Any]:
    a: Node = await node_factory(keep_in_touch=False)
    b: Node = await node_factory(keep_in_touch=False)
    await befriend(a, b)
    for conn in [*a.sessions, *b.sessions]:
        conn.close("start over")
    link = await a.add_broker(broker.url())
    await asyncio.wait_for(link.registered.wait(), 10)
    link_b = await b.add_broker(broker.url())
    await asyncio.wait_for(link_b.registered.wait(), 10)
    conn = await link.relay(b.public, timeout=10)
    return a, b, conn


async def test_a_session_relayed_in_the_kernel_carries_megabytes_intact(
        node_factory: Any, broker_factory: Any) -> None:
    broker: BrokerServer = await broker_factory()
    assert broker.splice
    _, b, conn = await relayed_pair(node_factory, broker)
    got: list[bytes] = []

    async def sink(remote: PublicIdentity, stream: Any) -> None:
        got.append(await stream.read_all(64 << 20))

    b.add_channel_handler("test-sink", sink)
    payload = os.urandom(20 << 20)
    stream = await conn.open_channel("test-sink")
    await stream.write(payload)
    stream.end()
    await eventually(lambda: got, timeout=30, what="the payload")
    assert got == [payload]
    assert len(broker._spliced) == 1 and not broker._halves
    assert broker.metrics.relay_bytes > len(payload)  # the payload, encrypted and framed
    conn.close("done")
    await eventually(lambda: broker.metrics.relays_active == 0, what="the relay to end")
    assert not broker._spliced and broker.state.active_relays == 0


async def test_a_relay_that_cannot_be_joined_fails_alone(
        node_factory: Any, broker_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    broker: BrokerServer = await broker_factory()

    def no_descriptors(*args: Any, **kwargs: Any) -> SplicedRelay:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr("sidedoor.broker.server.SplicedRelay", no_descriptors)
    with pytest.raises((SidedoorError, OSError)):
        await relayed_pair(node_factory, broker)
    assert broker.metrics.relays_active == 0 and broker.state.active_relays == 0
    assert not broker._spliced and not broker._halves
    monkeypatch.undo()
    # The broker goes on: the next relay works.
    _, _, conn = await relayed_pair(node_factory, broker)
    assert conn.is_open and len(broker._spliced) == 1


async def test_an_idle_spliced_relay_is_cut(node_factory: Any, broker_factory: Any) -> None:
    broker: BrokerServer = await broker_factory(relay_idle=0.5, relay_wait=0.6)
    _, _, conn = await relayed_pair(node_factory, broker)
    assert len(broker._spliced) == 1
    await eventually(lambda: not conn.is_open, timeout=10, what="the idle relay cut")
    await eventually(lambda: broker.metrics.relays_active == 0, what="the count to drop")
