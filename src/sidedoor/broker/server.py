"""The broker's asyncio glue: one TCP port for both Noise sessions and relay halves.

The first four bytes of a connection decide what it is: ``sdor`` starts a Noise
session (the broker's control channel, see `proto.broker`); ``sdrl`` + token is one
half of a relay, parked until its other half arrives, then joined byte for byte:
in the kernel (`broker.splice`) unless a tap wants to see the bytes. Anything else
is dropped at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from sidedoor.broker.core import BrokerState, PendingRelay
from sidedoor.broker.mailbox import Mailbox
from sidedoor.broker.splice import AVAILABLE as SPLICE_AVAILABLE
from sidedoor.broker.splice import SplicedRelay
from sidedoor.errors import BrokerError, MessageError, SidedoorError
from sidedoor.identity import Identity, PublicIdentity, load_or_create_identity, verify_noise_proof
from sidedoor.net.connection import ChannelStream, Connection, local_keys, new_session
from sidedoor.proto import broker as wire
from sidedoor.proto.session import Role, SessionConfig

log = logging.getLogger(__name__)

SNIFF_TIMEOUT = 10.0
MAX_PENDING_HANDSHAKES = 1024
MAX_SESSIONS = 50_000
RELAY_HIGH_WATER = 1 << 20
MAIL_IN_FLIGHT = 32
PUSH_QUEUE = 256
UPKEEP_INTERVAL = 10.0
# Thousands of idle peers: small read buffers, and a channel window just over the
# largest message (an envelope).
BROKER_SESSION = SessionConfig(channel_window=wire.MAX_MESSAGE + 4096, receive_buffer=4096)


def _raise_descriptor_limit() -> None:
    """Soft limit up to the hard one: thousands of sessions, six descriptors a relay."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Metrics:
    sessions: int = 0
    relays_started: int = 0
    relays_active: int = 0
    relay_bytes: int = 0
    deposits: int = 0
    deliveries: int = 0
    refused: int = 0


@dataclass
class Peer:
    identity: bytes
    conn: Connection
    stream: ChannelStream
    observed: str
    queue: asyncio.Queue[wire.FromBroker] = field(
        default_factory=lambda: asyncio.Queue(PUSH_QUEUE))
    rtt: float = 0.05
    mail_sent_upto: int = 0
    mail_unacked: set[int] = field(default_factory=set)
    registered: bool = False


class _RelayHalf(asyncio.Protocol):
    """One side of a relay; copies what it reads to its partner's transport."""

    def __init__(self, server: BrokerServer, transport: asyncio.Transport, token: bytes,
                 pending: PendingRelay) -> None:
        self.server = server
        self.transport = transport
        self.token = token
        self.pending = pending
        self.partner: _RelayHalf | None = None
        self.buffered = bytearray()
        self.last_active = time.monotonic()
        self.closed = False
        self.got_eof = False

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        partner = self.partner
        if partner is None:
            self.buffered += data
            if len(self.buffered) > RELAY_HIGH_WATER:
                self.transport.pause_reading()
            return
        self.server.metrics.relay_bytes += len(data)
        if self.server.tap is not None:
            self.server.tap(data)
        partner.transport.write(data)

    def pause_writing(self) -> None:
        if self.partner is not None:
            self.partner.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.partner is not None:
            self.partner.transport.resume_reading()

    def eof_received(self) -> bool | None:
        self.got_eof = True
        partner = self.partner
        if partner is not None and partner.got_eof:
            # Both ways have ended: nothing more can cross, so the relay is over (asyncio
            # would keep both half-closed transports until the idle timeout).
            partner.transport.close()
            return None
        if partner is not None and partner.transport.can_write_eof():
            partner.transport.write_eof()
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._relay_half_lost(self)
        if self.partner is not None and not self.partner.closed:
            self.partner.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    def detach(self) -> socket.socket:
        """Take the socket away from asyncio's transport (which is then closed)."""
        self.transport.pause_reading()
        raw = self.transport.get_extra_info("socket")
        sock = socket.socket(fileno=os.dup(raw.fileno()))
        self.closed = True
        self.transport.set_protocol(asyncio.Protocol())
        self.transport.abort()  # closes asyncio's descriptor; ours keeps the connection
        return sock


class _Sniffer(asyncio.Protocol):
    """Reads a connection's first bytes and hands it to the right protocol."""

    def __init__(self, server: BrokerServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not derive from
        # asyncio's classes.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(SNIFF_TIMEOUT, transport.abort)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        if len(self.buffer) < 4:
            return
        magic = bytes(self.buffer[:4])
        if magic == wire.RELAY_PREAMBLE:
            need = 4 + wire.RELAY_TOKEN_LEN
            if len(self.buffer) < need:
                return
            self._cancel_timer()
            token = bytes(self.buffer[4:need])
            self.server._relay_arrived(self.transport, token, bytes(self.buffer[need:]))
        elif magic == b"sdor":
            self._cancel_timer()
            self.server._session_arrived(self.transport, bytes(self.buffer))
        else:
            self._cancel_timer()
            self.server.metrics.refused += 1
            self.transport.abort()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()


class BrokerServer:
    """``async with BrokerServer(data_dir, host, port) as broker: ...``"""

    def __init__(self, data_dir: Path, host: str = "0.0.0.0", port: int = 7700, *,
                 public_host: str | None = None, max_relays: int = 512,
                 relay_idle: float = 120.0, relay_wait: float = 30.0,
                 mailbox_quota: tuple[int, int] = (2000, 64 << 20),
                 health: tuple[str, int] | None = None,
                 tap: Callable[[bytes], None] | None = None,
                 splice: bool = True) -> None:
        self.data_dir = data_dir
        self.host, self.requested_port = host, port
        self.public_host = public_host
        self.relay_idle = relay_idle
        self.relay_wait = relay_wait  # a half with no partner by then is dropped
        self.mailbox_quota = mailbox_quota
        self.health_addr = health
        self.tap = tap
        # The tap must see every byte, so it keeps the copy in Python.
        self.splice = splice and SPLICE_AVAILABLE and tap is None
        self.state = BrokerState(max_relays=max_relays)
        self.metrics = Metrics()
        self.identity: Identity | None = None
        self.mailbox: Mailbox | None = None
        self.port = 0
        self.health_port = 0
        self.peers: dict[bytes, Peer] = {}
        self._server: asyncio.Server | None = None
        self._health: web.AppRunner | None = None
        self._pending: set[Connection] = set()
        self._parked: dict[bytes, _RelayHalf] = {}
        self._halves: set[_RelayHalf] = set()
        self._spliced: set[SplicedRelay] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._upkeep: asyncio.Task[None] | None = None

    async def __aenter__(self) -> BrokerServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _raise_descriptor_limit()
        identity, _ = await asyncio.to_thread(load_or_create_identity, self.data_dir)
        self.identity = identity
        count, size = self.mailbox_quota
        self.mailbox = await asyncio.to_thread(Mailbox, self.data_dir / "mailbox.db",
                                               max_count=count, max_bytes=size)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Sniffer(self), self.host, self.requested_port, reuse_address=True)
        except OSError as exc:
            raise SidedoorError(f"cannot listen on {self.host}:{self.requested_port}: "
                                f"{exc.strerror}") from exc
        self.port = int(self._server.sockets[0].getsockname()[1])
        if self.health_addr is not None:
            await self._start_health(*self.health_addr)
        self._upkeep = asyncio.create_task(self._upkeep_loop())
        log.info("broker %s listening on %s:%d", identity.address, self.host, self.port)

    async def aclose(self) -> None:
        if self._upkeep is not None:
            self._upkeep.cancel()
        if self._server is not None:
            self._server.close()
        for peer in list(self.peers.values()):
            peer.conn.close("the broker is shutting down")
        for conn in list(self._pending):
            conn.close("the broker is shutting down")
        for half in list(self._halves):
            half.abort()
        for relay in list(self._spliced):
            relay.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._health is not None:
            await self._health.cleanup()
            self._health = None
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        if self.mailbox is not None:
            await asyncio.to_thread(self.mailbox.close)
            self.mailbox = None

    def url(self, host: str | None = None) -> str:
        assert self.identity is not None
        shown = host or self.public_host or (
            "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host)
        return str(wire.BrokerAddress(shown, self.port, self.identity.public))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- sessions
    def _session_arrived(self, transport: asyncio.Transport, first: bytes) -> None:
        if len(self._pending) >= MAX_PENDING_HANDSHAKES or len(self.peers) >= MAX_SESSIONS:
            self.metrics.refused += 1
            transport.abort()
            return
        assert self.identity is not None
        session = new_session(Role.RESPONDER, local_keys(self.identity), verify_noise_proof,
                              config=BROKER_SESSION)
        conn = Connection(session, on_handshake=self._on_handshake,
                          on_channel=self._on_channel, on_closed=self._on_closed)
        self._pending.add(conn)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        view = memoryview(first)
        while view:
            buf = conn.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            conn.buffer_updated(n)
            view = view[n:]

    def _on_handshake(self, conn: Connection) -> None:
        self._pending.discard(conn)
        self.metrics.sessions += 1

    def _on_channel(self, conn: Connection, stream: ChannelStream) -> str | None:
        if stream.kind != wire.KIND_BROKER:
            return f"a broker has no {stream.kind!r} service"
        identity = conn.remote_identity
        old = self.peers.get(identity)
        if old is not None and old.conn is not conn:
            # The same node again (a new network, a restart): the new session wins.
            old.conn.close("replaced by a newer session")
        if old is not None and old.conn is conn:
            return "one broker channel per session"
        peername = conn.peername or ("?", 0)
        host = str(peername[0])
        observed = f"[{host}]:{peername[1]}" if ":" in host else f"{host}:{peername[1]}"
        peer = Peer(identity, conn, stream, observed)
        self.peers[identity] = peer
        self._spawn(self._serve(peer))
        self._spawn(self._writer(peer))
        return None

    def _on_closed(self, conn: Connection) -> None:
        self._pending.discard(conn)
        try:
            identity = conn.remote_identity
        except SidedoorError:
            return
        peer = self.peers.get(identity)
        if peer is not None and peer.conn is conn:
            del self.peers[identity]
            self.state.unregister(identity)
            with contextlib.suppress(asyncio.QueueFull):
                peer.queue.put_nowait(wire.Pong(-1))  # wakes the writer to end

    def _push(self, identity: bytes, message: wire.FromBroker) -> bool:
        peer = self.peers.get(identity)
        if peer is None:
            return False
        try:
            peer.queue.put_nowait(message)
        except asyncio.QueueFull:
            peer.conn.close("too far behind")
            return False
        return True

    async def _writer(self, peer: Peer) -> None:
        with contextlib.suppress(SidedoorError):
            while peer.conn.is_open:
                message = await peer.queue.get()
                if isinstance(message, wire.Pong) and message.rid == -1:
                    return
                await peer.stream.write_message(wire.encode(message))

    async def _serve(self, peer: Peer) -> None:
        loop = asyncio.get_running_loop()
        try:
            with contextlib.suppress(SidedoorError):
                peer.rtt = await peer.conn.ping(5.0)
            while True:
                data = await peer.stream.read_message(wire.MAX_MESSAGE, timeout=3600.0)
                if data is None:
                    return
                now = loop.time()
                if not self.state.allow_request(peer.identity, now):
                    raise MessageError("too many requests")
                message = wire.decode_to_broker(data)
                await self._handle(peer, message, now)
        except (SidedoorError, TimeoutError) as exc:
            log.info("broker session with %s ended: %s",
                     PublicIdentity(peer.identity).short, exc)
        finally:
            peer.conn.close("broker channel ended")

    async def _handle(self, peer: Peer, message: wire.ToBroker, now: float) -> None:
        state, me = self.state, peer.identity
        assert self.mailbox is not None
        match message:
            case wire.Register():
                reply = state.register(me, message, peer.observed, now)
                await asyncio.to_thread(self.mailbox.set_allowed, me, list(message.allow))
                waiting = await asyncio.to_thread(self.mailbox.count, me)
                self._push(me, wire.Registered(reply.rid, reply.observed, reply.ttl, waiting))
                if not peer.registered:
                    peer.registered = True
                    await self._send_mail(peer)
            case wire.Lookup():
                self._push(me, state.lookup(me, message, now))
            case wire.RelayRequest():
                for target, out in state.relay(me, message, now):
                    if not self._push(target, out) and target != me:
                        self._push(me, wire.Refused(message.rid, "the peer went offline"))
            case wire.PunchRequest():
                target_peer = self.peers.get(message.target)
                rtts = {me: peer.rtt}
                if target_peer is not None:
                    rtts[message.target] = target_peer.rtt
                for target, out in state.punch(me, message, rtts, now):
                    self._push(target, out)
            case wire.Deposit():
                try:
                    mail_id = await asyncio.to_thread(
                        self.mailbox.deposit, me, message.recipient, message.envelope,
                        time.time())
                except BrokerError as exc:
                    self._push(me, wire.Refused(message.rid, str(exc)))
                    return
                self.metrics.deposits += 1
                self._push(me, wire.Deposited(message.rid, mail_id))
                recipient = self.peers.get(message.recipient)
                if recipient is not None and recipient.registered:
                    await self._send_mail(recipient)
            case wire.MailAck():
                acked = [i for i in message.ids if i in peer.mail_unacked]
                peer.mail_unacked.difference_update(acked)
                deleted = await asyncio.to_thread(self.mailbox.ack, me, acked)
                self.metrics.deliveries += deleted
                await self._send_mail(peer)
            case wire.ClaimNameplate():
                self._push(me, state.claim(me, message, now))
            case wire.ReleaseNameplate():
                state.release(me, message.nameplate)
            case wire.UseNameplate():
                self._push(me, state.use_nameplate(me, message, now))
            case wire.Ping():
                self._push(me, wire.Pong(message.rid))

    async def _send_mail(self, peer: Peer) -> None:
        """Keep up to MAIL_IN_FLIGHT unacknowledged envelopes on their way to ``peer``."""
        assert self.mailbox is not None
        room = MAIL_IN_FLIGHT - len(peer.mail_unacked)
        if room <= 0:
            return
        items = await asyncio.to_thread(self.mailbox.pending, peer.identity,
                                        peer.mail_sent_upto, room)
        for mail_id, envelope in items:
            peer.mail_unacked.add(mail_id)
            peer.mail_sent_upto = max(peer.mail_sent_upto, mail_id)
            self._push(peer.identity, wire.MailItem(mail_id, envelope))

    # ------------------------------------------------------------------ relays
    def _relay_arrived(self, transport: asyncio.Transport, token: bytes, rest: bytes) -> None:
        pending = self.state.take_relay_half(token, asyncio.get_running_loop().time())
        if pending is None:
            self.metrics.refused += 1
            transport.abort()
            return
        half = _RelayHalf(self, transport, token, pending)
        self._halves.add(half)
        transport.set_protocol(half)
        transport.set_write_buffer_limits(high=RELAY_HIGH_WATER)
        other = self._parked.pop(token, None)
        if other is None:
            self._parked[token] = half
            if rest:
                half.data_received(rest)
            return
        self.metrics.relays_started += 1
        self.metrics.relays_active += 1
        if self.splice:
            self._join_in_kernel(other, half, rest)
            return
        half.partner, other.partner = other, half
        if other.buffered:
            data, other.buffered = bytes(other.buffered), bytearray()
            self.metrics.relay_bytes += len(data)
            if self.tap is not None:
                self.tap(data)
            transport.write(data)
            other.transport.resume_reading()
        if rest:
            half.data_received(rest)

    def _join_in_kernel(self, first: _RelayHalf, second: _RelayHalf, rest: bytes) -> None:
        self._halves.discard(first)
        self._halves.discard(second)
        waiting, first.buffered = bytes(first.buffered), bytearray()

        def counted(count: int) -> None:
            self.metrics.relay_bytes += count

        detached: list[socket.socket] = []
        try:
            detached.append(first.detach())
            detached.append(second.detach())
            relay = SplicedRelay(asyncio.get_running_loop(), detached[0], detached[1],
                                 waiting, rest, on_bytes=counted,
                                 on_end=self._spliced_relay_ended)
        except OSError as exc:
            # Out of descriptors, most likely: this relay fails, the broker goes on.
            log.warning("could not join a relay: %s", exc)
            for sock in detached:
                sock.close()
            for half in (first, second):
                half.abort()
            self.metrics.relays_active -= 1
            self.state.relay_ended()
            return
        self._spliced.add(relay)
        counted(len(waiting) + len(rest))
        relay.start()

    def _spliced_relay_ended(self, relay: SplicedRelay) -> None:
        if relay in self._spliced:
            self._spliced.discard(relay)
            self.metrics.relays_active -= 1
            self.state.relay_ended()

    def _relay_half_lost(self, half: _RelayHalf) -> None:
        if half not in self._halves:
            return
        self._halves.discard(half)
        if self._parked.get(half.token) is half:
            del self._parked[half.token]
        if half.partner is not None and half.partner in self._halves:
            self.metrics.relays_active -= 1
            self.state.relay_ended()

    # ------------------------------------------------------------------ upkeep
    async def _upkeep_loop(self) -> None:
        while True:
            await asyncio.sleep(min(UPKEEP_INTERVAL, self.relay_wait / 3))
            loop_now = asyncio.get_running_loop().time()
            self.state.expire(loop_now)
            now = time.monotonic()
            for half in list(self._halves):
                idle = now - half.last_active
                partner_idle = (now - half.partner.last_active) if half.partner else idle
                if half.partner is None and idle > self.relay_wait:
                    half.abort()  # half-open: its partner never came
                elif min(idle, partner_idle) > self.relay_idle:
                    half.abort()
            for relay in list(self._spliced):
                if now - relay.last_active > self.relay_idle:
                    relay.abort()
            if self.mailbox is not None:
                with contextlib.suppress(SidedoorError):
                    await asyncio.to_thread(self.mailbox.expire, time.time())

    # ------------------------------------------------------------------ health
    def health(self) -> dict[str, Any]:
        count, size = self.mailbox.stats() if self.mailbox is not None else (0, 0)
        return {
            "broker": self.url(), "sessions": len(self.peers),
            "registrations": len(self.state.registrations),
            "relays_active": self.metrics.relays_active,
            "relays_started": self.metrics.relays_started,
            "relay_bytes": self.metrics.relay_bytes,
            "mailbox_envelopes": count, "mailbox_bytes": size,
            "deposits": self.metrics.deposits, "deliveries": self.metrics.deliveries,
            "refused_connections": self.metrics.refused,
            "open_invites": len(self.state.nameplates),
        }

    async def _start_health(self, host: str, port: int) -> None:
        async def handle(_: web.Request) -> web.Response:
            return web.json_response(await asyncio.to_thread(self.health))

        app = web.Application()
        app.router.add_get("/health", handle)
        self._health = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._health.setup()
        site = web.TCPSite(self._health, host, port)
        await site.start()
        server = site._server
        assert server is not None
        self.health_port = int(getattr(server, "sockets", [])[0].getsockname()[1])
