"""Real TCP on loopback, in one process: nodes, raw hostile sockets, and bare connections."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from sidedoor.errors import (
    HandshakeFailed,
    IdentityMismatch,
    PeerTimeout,
    RemoteProtocolError,
    VersionMismatch,
)
from sidedoor.identity import verify_noise_proof
from sidedoor.net.connection import ChannelClosedError, ChannelStream, Connection, dial, new_session
from sidedoor.node import Node
from sidedoor.proto.messages import IdentityProof
from sidedoor.proto.session import LocalKeys, Role, SessionConfig
from sidedoor.testing.sessions import identity_from, local_keys

HOST = "127.0.0.1"
FAST_HANDSHAKE = SessionConfig(handshake_timeout=0.5)


# ----------------------------------------------------------------- helpers

async def eventually(check: Callable[[], bool], timeout: float = 3.0, what: str = "") -> None:
    """Wait until ``check()`` is true, polling the loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.01)


async def raw_exchange(port: int, data: bytes, *, half_close: bool = False,
                       timeout: float = 3.0) -> tuple[bytes, int]:
    """Send ``data`` on a raw socket; return (everything read until EOF, our local port)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    local_port = writer.get_extra_info("sockname")[1]
    try:
        if data:
            writer.write(data)
            await writer.drain()
        if half_close:
            writer.write_eof()
        got = await asyncio.wait_for(reader.read(), timeout)
        return got, local_port
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def refusals(caplog: pytest.LogCaptureFixture, local_port: int) -> list[logging.LogRecord]:
    """Records at INFO and above, from sidedoor's loggers, that are about this client port."""
    pattern = re.compile(rf"\b{local_port}\b")
    return [
        r for r in caplog.records
        if r.name.startswith("sidedoor") and r.levelno >= logging.INFO
        and pattern.search(r.getMessage())
    ]


async def refused_once(caplog: pytest.LogCaptureFixture, node: Node, local_port: int,
                       error: type[RemoteProtocolError]) -> logging.LogRecord:
    """The node logged exactly one record about this connection, carrying the typed error."""
    await eventually(lambda: bool(refusals(caplog, local_port)), what="the refusal to be logged")
    await eventually(lambda: not node._pending, what="the node to forget the connection")
    await asyncio.sleep(0.05)  # give a second (unwanted) record the chance to appear
    records = refusals(caplog, local_port)
    assert len(records) == 1, [r.getMessage() for r in records]
    record = records[0]
    errors = [a for a in (record.args or ()) if isinstance(a, BaseException)]
    assert errors and isinstance(errors[0], error), (record.getMessage(), errors)
    assert not node.sessions
    return record


async def assert_serving(node: Node, pinger: Node) -> None:
    """The node still completes handshakes and answers pings."""
    result = await pinger.ping(node.public.address, HOST, node.port, count=1, timeout=5)
    assert result.rtts_ms and result.rtts_ms[0] >= 0


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="sidedoor")
    return caplog


# ------------------------------------------------------------ node to node

async def test_two_nodes_ping_xx_then_ik(node_factory) -> None:
    a = await node_factory()
    b = await node_factory()
    events = b.events.subscribe()

    first = await a.ping(b.public.address, HOST, b.port, count=3, timeout=5)
    assert first.pattern == "XX"  # a has never met b
    assert len(first.rtts_ms) == 3 and all(rtt >= 0 for rtt in first.rtts_ms)
    assert first.address == b.public.address
    assert first.addr == f"{HOST}:{b.port}" and first.path == "lan"
    assert first.as_dict()["reachable"] is True and first.contact is False

    opened = await asyncio.wait_for(events.get(), 5)
    assert opened is not None and opened["type"] == "session.opened"
    assert opened["address"] == a.public.address and opened["direction"] == "in"

    second = await a.ping(b.public.address, HOST, b.port, timeout=5)
    assert second.pattern == "IK"  # a remembered b's static key

    # b keeps no key of a stranger who dialled it (that table would grow for anyone
    # knocking), so b's first dial to a is XX.
    back = await b.ping(a.public.address, HOST, a.port, timeout=5)
    assert back.pattern == "XX"

    await eventually(lambda: not a.sessions and not b.sessions, what="sessions to close")
    b.events.unsubscribe(events)


async def test_wrong_expected_identity_is_refused(node_factory, info_logs) -> None:
    a = await node_factory()
    b = await node_factory()
    stranger = identity_from("someone else")

    with pytest.raises(IdentityMismatch, match="not the one you asked for"):
        await a.connect(stranger.public, HOST, b.port, timeout=5)
    assert not a.sessions

    await eventually(lambda: not b._pending and not b.sessions, what="b to drop the dial")
    refused = [r for r in info_logs.records
               if r.name.startswith("sidedoor") and "refused" in r.getMessage()]
    assert len(refused) == 1  # b noticed once that the dialler walked away
    await assert_serving(b, a)


async def test_forged_identity_proof_is_refused(node_factory, info_logs) -> None:
    """Mallory replays the victim's identity proof with her own Noise key."""
    node = await node_factory()
    pinger = await node_factory()
    mallory, victim = identity_from("mallory"), identity_from("victim")
    replayed = local_keys(victim).proof  # a valid signature, but over the victim's static key
    keys = LocalKeys(mallory.noise_private, IdentityProof(replayed.identity, replayed.signature))
    session = new_session(Role.INITIATOR, keys, verify_noise_proof,
                          expected_remote=node.public.key)
    # The initiator finishes XX by sending its proof; the node checks it and hangs up.
    conn = await dial(HOST, node.port, session, timeout=5)
    try:
        closed = await asyncio.wait_for(conn.closed, 3)
        assert closed.by_peer
        await refused_once(info_logs, node, conn.sockname[1], HandshakeFailed)
        assert not node.sessions
    finally:
        await conn.aclose()
    await assert_serving(node, pinger)


# ------------------------------------------------------- hostile raw sockets

async def test_garbage_is_refused(node_factory, info_logs) -> None:
    node = await node_factory()
    pinger = await node_factory()
    got, port = await raw_exchange(node.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert got == b""  # not even our greeting: the node hung up at once
    record = await refused_once(info_logs, node, port, HandshakeFailed)
    assert "not a sidedoor node" in record.getMessage()

    got, port = await raw_exchange(node.port, bytes(range(256)) * 8)
    assert got == b""
    await refused_once(info_logs, node, port, HandshakeFailed)
    await assert_serving(node, pinger)


async def test_truncated_handshake(node_factory, info_logs) -> None:
    node = await node_factory()
    pinger = await node_factory()
    # A valid XX preamble, then a frame announcing 32 bytes carrying only 10, then EOF.
    partial = b"sdor\x01\x01" + (32).to_bytes(2, "big") + os.urandom(10)
    got, port = await raw_exchange(node.port, partial, half_close=True)
    assert got == b"sdor\x01\x00"  # the node greeted us back, then gave up on us
    record = await refused_once(info_logs, node, port, HandshakeFailed)
    assert "during the handshake" in record.getMessage()
    await assert_serving(node, pinger)


async def test_slowloris_is_closed_after_the_handshake_timeout(node_factory, info_logs) -> None:
    node = await node_factory(session_config=FAST_HANDSHAKE)
    pinger = await node_factory()
    loop = asyncio.get_running_loop()
    start = loop.time()
    got, port = await raw_exchange(node.port, b"", timeout=2.0)  # connect, say nothing
    elapsed = loop.time() - start
    assert got == b""
    assert 0.4 <= elapsed < 2.0, elapsed
    await refused_once(info_logs, node, port, PeerTimeout)
    await assert_serving(node, pinger)


async def test_silent_after_preamble_also_times_out(node_factory, info_logs) -> None:
    node = await node_factory(session_config=FAST_HANDSHAKE)
    pinger = await node_factory()
    reader, writer = await asyncio.open_connection(HOST, node.port)
    port = writer.get_extra_info("sockname")[1]
    try:
        writer.write(b"sdor\x01\x01")  # greet, then stall mid-handshake
        await writer.drain()
        got = await asyncio.wait_for(reader.read(), 2.0)
        assert got == b"sdor\x01\x00"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    await refused_once(info_logs, node, port, PeerTimeout)
    await assert_serving(node, pinger)


async def test_version_mismatch(node_factory, info_logs) -> None:
    node = await node_factory()
    pinger = await node_factory()
    got, port = await raw_exchange(node.port, b"sdor\x09\x01")
    assert got == b"sdor\x01\x00"  # our version, so the peer can tell its user; then EOF
    record = await refused_once(info_logs, node, port, VersionMismatch)
    assert "v9" in record.getMessage() and "update" in record.getMessage()
    await assert_serving(node, pinger)


async def test_many_bad_peers_at_once(node_factory) -> None:
    """Hostile connections side by side do not stop a good one."""
    node = await node_factory(session_config=FAST_HANDSHAKE)
    pinger = await node_factory()
    bad = [
        raw_exchange(node.port, b"", timeout=2.0),
        raw_exchange(node.port, b"sdor\x09\x01"),
        raw_exchange(node.port, b"\xff" * 100),
        raw_exchange(node.port, b"sdor\x01\x01\x00\x20abc", half_close=True),
    ]
    results = await asyncio.gather(assert_serving(node, pinger), *bad)
    assert [got for got, _ in results[1:]] == [b"", b"sdor\x01\x00", b"", b"sdor\x01\x00"]
    await eventually(lambda: not node._pending, what="the node to drop the bad peers")


# ------------------------------------------------------- bare connections

@dataclass
class Link:
    """A dialled `Connection` and what the server side saw."""

    client: Connection
    server_conns: list[Connection] = field(default_factory=list)


@contextlib.asynccontextmanager
async def bare_link(handler: Callable[[ChannelStream], object],
                    config: SessionConfig | None = None) -> AsyncIterator[Link]:
    """Two bare Connections on loopback; ``handler(stream)`` runs (as a task) per channel."""
    loop = asyncio.get_running_loop()
    alice, bob = identity_from("alice"), identity_from("bob")
    tasks: set[asyncio.Task[object]] = set()
    server_conns: list[Connection] = []

    def on_channel(conn: Connection, stream: ChannelStream) -> None:
        tasks.add(loop.create_task(handler(stream)))  # type: ignore[arg-type]

    def accept() -> Connection:
        conn = Connection(new_session(Role.RESPONDER, local_keys(bob), verify_noise_proof,
                                      config=config), on_channel=on_channel)
        server_conns.append(conn)
        return conn

    server = await loop.create_server(accept, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    session = new_session(Role.INITIATOR, local_keys(alice), verify_noise_proof,
                          expected_remote=bob.public.key, config=config)
    client = await dial(HOST, port, session, timeout=5)
    assert client.remote_identity == bob.public.key
    try:
        yield Link(client, server_conns)
    finally:
        await client.aclose("test done")
        for conn in server_conns:
            await conn.aclose("test done")
        server.close()
        await server.wait_closed()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def echo(stream: ChannelStream) -> None:
    while chunk := await stream.read():
        await stream.write(chunk)
    stream.end()


async def test_stream_round_trip_of_a_few_mib() -> None:
    payload = os.urandom((3 << 20) + 12345)
    async with bare_link(echo) as link:
        stream = await link.client.open_channel("echo", b"meta")

        async def send() -> None:
            view = memoryview(payload)
            for i in range(0, len(payload), 200_000):
                await stream.write(view[i : i + 200_000])
            stream.end()

        async def receive() -> bytes:
            parts = []
            while chunk := await stream.read():
                parts.append(chunk)
            return b"".join(parts)

        _, echoed = await asyncio.wait_for(asyncio.gather(send(), receive()), 30)
        assert len(echoed) == len(payload)
        assert echoed == payload
        assert stream.at_eof
        assert link.client.is_open  # the channel ended; the session goes on
        assert await link.client.ping(5) >= 0


async def test_bulk_cannot_starve_chat() -> None:
    total = 64 << 20
    block = os.urandom(1 << 20)
    loop = asyncio.get_running_loop()
    seen = {"bulk": 0}
    bulk_hash = hashlib.sha256()
    bulk_done = loop.create_future()
    chat_got = loop.create_future()

    async def handler(stream: ChannelStream) -> None:
        if stream.kind == "bulk":
            while chunk := await stream.read():
                seen["bulk"] += len(chunk)
                bulk_hash.update(chunk)
            bulk_done.set_result(loop.time())
        else:
            message = await stream.read_exactly(5)
            chat_got.set_result((loop.time(), seen["bulk"], message))

    async with bare_link(handler) as link:
        bulk = await link.client.open_channel("bulk")
        chat = await link.client.open_channel("chat")
        data = block * (total // len(block))

        async def send_bulk() -> None:
            # All 64 MiB queued in one go: only the session's scheduler can let chat through.
            await bulk.write(data)
            bulk.end()

        sender = loop.create_task(send_bulk())
        try:
            # Once bulk data is flowing, say something small on the other channel.
            await eventually(lambda: seen["bulk"] >= 2 << 20, timeout=10, what="bulk to flow")
            await chat.write(b"hello")
            chat_at, bulk_at_chat, message = await asyncio.wait_for(chat_got, 10)
            assert message == b"hello"
            await asyncio.wait_for(sender, 60)
            finished = await asyncio.wait_for(bulk_done, 60)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        assert seen["bulk"] == total
        assert bulk_hash.digest() == hashlib.sha256(data).digest()
        # The chat message overtook most of the bulk transfer, not queued behind it.
        assert chat_at < finished
        assert bulk_at_chat < total // 2, bulk_at_chat


async def test_channel_refused_by_a_node(node_factory) -> None:
    """A node with no service for a channel kind refuses it; the session survives."""
    a = await node_factory()
    b = await node_factory()
    conn = await a.connect(b.public, HOST, b.port, timeout=5)
    try:
        with pytest.raises(ChannelClosedError, match="no service"):
            await conn.open_channel("no-such-service")
        assert conn.is_open
        assert await conn.ping(5) >= 0
    finally:
        await conn.aclose()


async def test_node_aclose_is_idempotent(node_factory) -> None:
    node = await node_factory()
    port = node.port
    await node.aclose()
    await node.aclose()
    with pytest.raises(OSError):
        await asyncio.open_connection(HOST, port)
