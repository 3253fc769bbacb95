"""The node: builds and wires identity, storage, the listener, sessions and the event bus.

``async with Node(home) as node: await node.wait_stopped()`` runs one node.
One node per home: the home's lock file is held for the node's lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ifaddr

from sidedoor.cards import make_card
from sidedoor.errors import (
    ConnectError,
    ContactError,
    DiscoveryError,
    HandshakeFailed,
    NodeAlreadyRunning,
    NotAllowed,
    PeerTimeout,
    SidedoorError,
)
from sidedoor.home import LOCK_FILE, ensure_home
from sidedoor.identity import (
    Identity,
    PublicIdentity,
    load_or_create_identity,
    verify_noise_proof,
)
from sidedoor.names import clean_name
from sidedoor.net.broker_client import BrokerLink
from sidedoor.net.connection import ChannelStream, Connection, dial, local_keys, new_session
from sidedoor.net.mdns import Discovery, DiscoveryEvent, PeerJoined, PeerLeft, PeerUpdated
from sidedoor.net.race import Attempt, race
from sidedoor.proto.broker import BrokerAddress
from sidedoor.proto.messages import CloseCode
from sidedoor.proto.noise import Pattern
from sidedoor.proto.session import LocalKeys, Role, SessionConfig
from sidedoor.services.card_updates import CardUpdates
from sidedoor.services.chat import Chat
from sidedoor.services.contacts import ContactBook, Standing
from sidedoor.services.introductions import Introductions
from sidedoor.services.invites import Invites
from sidedoor.services.keep_in_touch import KeepInTouch
from sidedoor.services.mail import Mail
from sidedoor.services.presence import Presence
from sidedoor.services.transfers import Transfers
from sidedoor.storage.db import Database

log = logging.getLogger(__name__)

DEFAULT_NAME = "sidedoor user"
EVENT_QUEUE_LIMIT = 1000
MAX_STRANGER_SESSIONS = 32
ADDRESS_CACHE_SECONDS = 30.0
MAX_STRANGERS_PER_HOST = 4
MAX_STRANGER_CHANNELS = 4
STRANGER_WINDOW = 64 << 10
STRANGER_LIFETIME = 60.0
MAX_PENDING = 256  # connections still in their handshake (each holds a few KiB)
MAX_PENDING_PER_HOST = 32

# Serves one channel a peer opened: (who opened it, the stream).
StreamHandler = Callable[[PublicIdentity, ChannelStream], Awaitable[None]]
# Told of every new session with a contact (services flush outboxes, resume transfers).
SessionListener = Callable[["PeerSession"], None]
# Happy eyeballs: the next candidate path starts this long after the previous one.
RACE_STAGGER = 0.25
# A relayed session being replaced is closed when idle, or after this long anyway.
UPGRADE_DRAIN_SECONDS = 3600
# A relayed session with no channel open this long is closed: a broker has few relay
# slots for everyone, and presence does not need one (services.keep_in_touch).
RELAYED_IDLE_CLOSE = 600.0


def _check_port_free(host: str, port: int) -> None:
    """Raise OSError(EADDRINUSE) if something listens on ``port``.

    The node listens with SO_REUSEPORT (its outgoing dials share the port, see
    `net.sockets`), which would also let a second node of the same user listen on the
    same port and split the connections with the first: this probe, without
    SO_REUSEPORT, fails where a listener already is.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def classify_path(host: str) -> str:
    """How a direct address is reached, in the words `status` and `ping` use."""
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return "direct"
    if ip.is_loopback or ip.is_private or ip.is_link_local:
        return "lan"
    return "direct"


class EventBus:
    """Fan-out of node events to subscribers (the control API's event streams).

    A subscriber that falls more than `EVENT_QUEUE_LIMIT` events behind is dropped
    rather than let memory grow; its stream ends and the client reconnects.
    """

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[dict[str, Any] | None]] = set()

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(EVENT_QUEUE_LIMIT)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._queues.discard(queue)

    def emit(self, kind: str, **data: Any) -> None:
        event = {"type": kind, "time": time.time(), **data}
        for queue in list(self._queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._queues.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)

    def close(self) -> None:
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self._queues.clear()


@dataclass
class PeerSession:
    """A live session, as `status` shows it."""

    connection: Connection
    remote: PublicIdentity
    direction: str  # "in" or "out"
    path: str
    remote_addr: str
    contact: bool = False
    since: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        return {
            "address": self.remote.address,
            "fingerprint": self.remote.fingerprint(),
            "direction": self.direction,
            "path": self.path,
            "remote_addr": self.remote_addr,
            "since": self.since,
            "pattern": self.connection.session.pattern.value,
            "contact": self.contact,
        }


@dataclass(frozen=True)
class PingResult:
    address: str
    addr: str
    path: str
    pattern: str
    handshake_ms: float
    rtts_ms: list[float]
    contact: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address, "addr": self.addr, "path": self.path,
            "pattern": self.pattern, "handshake_ms": self.handshake_ms,
            "rtts_ms": self.rtts_ms, "contact": self.contact, "reachable": True,
        }


class Node:
    def __init__(
        self,
        home: Path,
        *,
        host: str = "0.0.0.0",
        port: int | None = None,
        session_config: SessionConfig | None = None,
        remember_port: bool = True,
        discovery: bool = False,
        keep_in_touch: bool = True,
    ) -> None:
        self.home = ensure_home(home)
        self.host = host
        self._requested_port = port
        self._remember_port = remember_port
        self.session_config = session_config or SessionConfig()
        self.identity: Identity | None = None
        self.db: Database | None = None
        self.events = EventBus()
        self.started_at = 0.0
        self.sessions: dict[Connection, PeerSession] = {}
        self._lock_fd: int | None = None
        self._server: asyncio.Server | None = None
        self._stopped = asyncio.Event()
        self._pending: set[Connection] = set()
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._addresses: tuple[float, list[str]] | None = None
        self._local_keys: LocalKeys | None = None
        self.contacts: ContactBook | None = None
        self.name = DEFAULT_NAME
        self._standing: dict[bytes, Standing] = {}
        self._handlers: dict[str, tuple[StreamHandler, bool]] = {}
        self._session_listeners: list[SessionListener] = []
        self.introductions = Introductions(self)
        self.introductions.register()
        self.invites = Invites(self)
        self.invites.register()
        self.mail = Mail(self)
        self.transfers = Transfers(self)
        self.transfers.register()
        CardUpdates(self).register()
        self.brokers: dict[str, BrokerLink] = {}
        self.upgrade_interval = 10.0  # first retry of a relayed session's upgrade
        self.relayed_idle_close = RELAYED_IDLE_CLOSE
        self._relayed_jobs: set[asyncio.Task[None]] = set()  # upgrades, idle closes
        self._punches: dict[tuple[str, int], tuple[PublicIdentity, bool]] = {}
        self.chat = Chat(self)
        self.chat.register()
        self.presence = Presence(self)
        self.presence.register()
        self.keep_in_touch = KeepInTouch(self)
        self.keep_in_touch.register()
        self.want_keep_in_touch = keep_in_touch
        self.want_discovery = discovery
        self.discovery: Discovery | None = None
        self._advertised: dict[str, str] = {}

    # ----------------------------------------------------------- lifecycle
    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        self._take_lock()
        try:
            # Files and SQL stay off the event loop, start-up included.
            identity, created = await asyncio.to_thread(load_or_create_identity, self.home)
            self.identity = identity
            db = self.db = await asyncio.to_thread(Database, self.home)
            book = self.contacts = ContactBook(db)
            saved_name: str | None = await db.run(db.get_setting, "name")
            self.name = saved_name or DEFAULT_NAME
            self._standing = {
                c.identity: ("blocked" if c.blocked else "contact")
                for c in await db.run(book.all)
            }
            if created:
                log.info("created identity %s", identity.address)
            port = self._requested_port
            if port is None:
                saved = await db.run(db.get_setting, "port")
                port = int(saved) if saved else 0
            self._server = await self._listen(port)
            if self._remember_port:
                await db.run(db.set_setting, "port", str(self.port))
            await self._start_discovery()
            for url in await db.run(db.brokers):
                self._link(BrokerAddress.parse(url))
            await self.chat.start()
            await self.presence.start()
            await self.transfers.start()
            self.started_at = time.time()
            if self.want_keep_in_touch:
                self.keep_in_touch.start()
            log.info("node %s listening on %s:%d", identity.address, self.host, self.port)
        except BaseException:
            await self.aclose()
            raise

    async def _listen(self, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        try:
            if port:
                _check_port_free(self.host, port)
            return await loop.create_server(self._accept, self.host, port, reuse_address=True,
                                            reuse_port=True)
        except OSError as exc:
            if port and self._requested_port is None:
                # The remembered port is taken (another program got it): pick a new one.
                log.warning("port %d is taken (%s); choosing another", port, exc.strerror)
                return await loop.create_server(self._accept, self.host, 0, reuse_address=True,
                                                reuse_port=True)
            raise SidedoorError(f"cannot listen on {self.host}:{port}: {exc.strerror}") from exc

    async def _start_discovery(self) -> None:
        assert self.db is not None and self.identity is not None
        if not self.want_discovery:
            return
        if await self.db.run(self.db.get_setting, "discovery") == "off":
            log.info("LAN discovery is off (setting)")
            return
        if ipaddress.ip_address(self.host if self.host else "0.0.0.0").is_loopback:
            log.info("LAN discovery is off: the node listens on loopback only")
            return
        discovery = Discovery(self.identity.address, self.name, self.port,
                              on_change=self._on_nearby)
        try:
            await discovery.start()
        except DiscoveryError as exc:
            # The node is still useful without it: links and addresses work.
            log.warning("LAN discovery is off: %s", exc)
            await discovery.aclose()
            return
        self.discovery = discovery

    def _on_nearby(self, event: DiscoveryEvent) -> None:
        kind = {PeerJoined: "nearby.joined", PeerUpdated: "nearby.updated",
                PeerLeft: "nearby.left"}[type(event)]
        self.events.emit(kind, address=event.peer.address, name=event.peer.name)

    async def advertise(self, extra: dict[str, str]) -> None:
        """Extra TXT entries for LAN discovery (open invites, ...)."""
        self._advertised = dict(extra)
        if self.discovery is not None:
            await self.discovery.update_properties(self._advertised)

    def nearby(self) -> list[dict[str, Any]]:
        """Nodes seen on the LAN, numbered for `sidedoor add N`, with whether they are contacts."""
        if self.discovery is None:
            return []
        peers = sorted(self.discovery.nearby.values(), key=lambda p: (p.name.lower(), p.address))
        found = []
        for number, peer in enumerate(peers, 1):
            public = PublicIdentity.from_address(peer.address)
            found.append({
                "number": number, "address": peer.address, "name": peer.name,
                "fingerprint": public.fingerprint(), "hosts": peer.hosts, "port": peer.port,
                "standing": self.standing(public.key),
                "addrs": [f"[{h}]:{peer.port}" if ":" in h else f"{h}:{peer.port}"
                          for h in peer.hosts],
            })
        return found

    def _take_lock(self) -> None:
        path = self.home / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise NodeAlreadyRunning(
                f"a node is already running for {self.home} (pid {pid or '?'}); "
                f"stop it with `sidedoor --home {self.home} down`"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a background job; keep a reference, log its failure."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background job failed", exc_info=task.exception())

    def stop(self) -> None:
        """Ask the node to stop (safe from a signal handler or the control API)."""
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopped.set()
        await self.keep_in_touch.aclose()
        await self.transfers.aclose()
        if self._server is not None:
            self._server.close()
        if self.discovery is not None:
            with contextlib.suppress(Exception):
                await self.discovery.aclose()
        for task in list(self._relayed_jobs):
            task.cancel()
        for link in list(self.brokers.values()):
            await link.aclose()
        await self.mail.aclose()
        for conn in [*self.sessions, *self._pending]:
            conn.close("the node is shutting down", CloseCode.SHUTTING_DOWN)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        for task in list(self._tasks):
            task.cancel()
        self.events.close()
        if self.db is not None:
            await asyncio.to_thread(self.db.close)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------- facts
    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def public(self) -> PublicIdentity:
        assert self.identity is not None
        return self.identity.public

    @property
    def display_name(self) -> str:
        return self.name

    async def set_name(self, name: str) -> str:
        name = clean_name(name)
        if not name:
            raise SidedoorError("a name is 1 to 64 printable characters")
        assert self.db is not None
        await self.db.run(self.db.set_setting, "name", name)
        self.name = name
        self.events.emit("identity.changed", name=name)
        return name

    def listen_addresses(self) -> list[str]:
        """Where peers can reach this node: LAN addresses first, loopback last.

        Cached for a while: interfaces change rarely, and cards are made often.
        """
        now = time.monotonic()
        if self._addresses is not None and now - self._addresses[0] < ADDRESS_CACHE_SECONDS:
            return list(self._addresses[1])
        if self.host not in ("0.0.0.0", "::", ""):
            found = [f"{self.host}:{self.port}"]
        else:
            lan: list[str] = []
            loopback: list[str] = []
            for adapter in ifaddr.get_adapters():
                for ip in adapter.ips:
                    if not ip.is_IPv4 or not isinstance(ip.ip, str):
                        continue
                    parsed = ipaddress.ip_address(ip.ip)
                    if parsed.is_link_local:
                        continue
                    (loopback if parsed.is_loopback else lan).append(f"{ip.ip}:{self.port}")
            found = lan + loopback or [f"127.0.0.1:{self.port}"]
        self._addresses = (now, found)
        return list(found)

    def status(self) -> dict[str, Any]:
        assert self.identity is not None
        return {
            "running": True,
            "pid": os.getpid(),
            "home": str(self.home),
            "address": self.identity.address,
            "name": self.display_name,
            "fingerprint": self.public.fingerprint(),
            "port": self.port,
            "listening": self.listen_addresses(),
            "started_at": self.started_at,
            "uptime": time.time() - self.started_at,
            "sessions": [s.describe() for s in self.sessions.values()],
            "discovery": self.discovery is not None,
            "brokers": [link.describe() for link in self.brokers.values()],
        }

    # ------------------------------------------------------------ brokers
    def _link(self, address: BrokerAddress) -> BrokerLink:
        link = BrokerLink(self, address, on_mail=lambda item: self.mail.on_mail(link, item))
        self.brokers[str(address)] = link
        link.start()
        return link

    async def add_broker(self, url: str) -> BrokerLink:
        """Use the broker at ``url`` from now on (and after restarts)."""
        assert self.db is not None
        address = BrokerAddress.parse(url)
        if address.identity == self.public:
            raise SidedoorError("that is this node's own key, not a broker's")
        existing = self.brokers.get(str(address))
        if existing is not None:
            return existing
        await self.db.run(self.db.add_broker, str(address), time.time())
        return self._link(address)

    async def remove_broker(self, url: str) -> None:
        assert self.db is not None
        address = BrokerAddress.parse(url)
        link = self.brokers.pop(str(address), None)
        if link is None:
            raise SidedoorError(f"not a broker this node uses: {address.hostport}")
        await self.db.run(self.db.remove_broker, str(address))
        await link.aclose()

    # ---------------------------------------------------------- sessions
    def _keys(self) -> LocalKeys:
        # Signed once: every handshake presents the same proof.
        if self._local_keys is None:
            assert self.identity is not None
            self._local_keys = local_keys(self.identity)
        return self._local_keys

    def _accept(self) -> Connection:
        session = new_session(Role.RESPONDER, self._keys(), verify_noise_proof,
                              config=self.session_config)
        conn = Connection(session, on_made=self._admit, on_handshake=self._on_handshake,
                          on_channel=self._on_channel, on_closed=self._on_closed)
        self._pending.add(conn)
        conn.handshake.add_done_callback(lambda fut: self._on_handshake_failed(conn, fut))
        return conn

    def _on_handshake_failed(self, conn: Connection, fut: asyncio.Future[Any]) -> None:
        self._pending.discard(conn)
        if fut.cancelled() or fut.exception() is not None:
            log.info("refused an incoming connection from %s: %s", conn.peername,
                     fut.exception() if not fut.cancelled() else "cancelled")

    def _on_handshake(self, conn: Connection) -> None:
        """Called the moment a handshake completes, before any channel can be opened."""
        self._pending.discard(conn)
        remote = PublicIdentity(conn.remote_identity)
        direction = "out" if conn.session.role is Role.INITIATOR else "in"
        peer = conn.peername or ("?", 0)
        addr = f"{peer[0]}:{peer[1]}"
        standing = self.standing(remote.key)
        if standing == "blocked":
            log.info("refused %s from %s: blocked", remote.address, addr)
            conn.close("not allowed", CloseCode.NOT_ALLOWED)
            return
        if standing == "stranger":
            strangers = [s for s in self.sessions.values() if not s.contact]
            same_host = sum(1 for s in strangers if s.remote_addr.rpartition(":")[0] == peer[0])
            if len(strangers) >= MAX_STRANGER_SESSIONS or same_host >= MAX_STRANGERS_PER_HOST:
                log.info("refused %s from %s: too many sessions with strangers",
                         remote.address, addr)
                conn.close("busy: try again in a minute", CloseCode.BUSY)
                return
            # Introductions are short: a stranger's session does not linger.
            asyncio.get_running_loop().call_later(
                STRANGER_LIFETIME, self._end_stranger_session, conn)
        info = PeerSession(conn, remote, direction, conn.via or classify_path(str(peer[0])),
                           addr, contact=standing == "contact")
        self.sessions[conn] = info
        assert self.db is not None and conn.session.remote_static is not None
        if direction == "out" or info.contact:
            # Remembered for the faster IK handshake next time; not for every stranger
            # who knocks, or the table would grow without bound.
            dial_addr = addr if direction == "out" else None
            self._spawn(self.db.run(self.db.remember_peer, remote.key,
                                    conn.session.remote_static, dial_addr, time.time()))
        if info.contact:
            assert self.contacts is not None
            self._spawn(self.db.run(self.contacts.touch, remote.key, time.time()))
        log.info("session %s with %s (%s, %s, %s)", direction, remote.address, standing,
                 info.path, addr)
        self.events.emit("session.opened", **info.describe())
        if info.path == "relayed":
            jobs = [self._close_when_idle(conn)]
            if info.contact and self.public.key < remote.key:
                # One side drives the upgrade (the smaller key), so the two do not race.
                jobs.append(self._upgrade(conn, remote))
            for job in jobs:
                task = asyncio.ensure_future(job)
                self._relayed_jobs.add(task)
                task.add_done_callback(self._relayed_jobs.discard)
        if info.contact:
            for listener in self._session_listeners:
                try:
                    listener(info)
                except Exception:
                    log.exception("session listener failed")

    def _end_stranger_session(self, conn: Connection) -> None:
        info = self.sessions.get(conn)
        if info is not None and self.standing(info.remote.key) == "stranger":
            conn.close("introductions take a minute at most", CloseCode.BUSY)

    def expect_punch(self, where: tuple[str, int], remote: PublicIdentity,
                     initiator: bool) -> None:
        """A punch to ``where`` is under way: a connection from there is that peer."""
        self._punches[where] = (remote, initiator)

    def forget_punch(self, where: tuple[str, int]) -> None:
        self._punches.pop(where, None)

    def _admit(self, conn: Connection) -> bool:
        """Before any byte is read: cap the connections still in their handshake."""
        peer = (str(conn.peername[0]), int(conn.peername[1])) if conn.peername else None
        punch = self._punches.get(peer) if peer is not None else None
        if punch is not None:
            remote, initiator = punch
            conn.via = "punched"
            if initiator:
                # The peer's dial reached our listener: we still speak first, as agreed.
                conn.session = new_session(
                    Role.INITIATOR, self._keys(), verify_noise_proof,
                    expected_remote=remote.key, config=self.session_config)
        host = conn.peername[0] if conn.peername else "?"
        same_host = sum(1 for c in self._pending if c.peername and c.peername[0] == host)
        if len(self._pending) > MAX_PENDING or same_host > MAX_PENDING_PER_HOST:
            log.debug("dropped a connection from %s: too many handshakes in progress", host)
            return False
        return True

    def _on_closed(self, conn: Connection) -> None:
        self._pending.discard(conn)
        info = self.sessions.pop(conn, None)
        if info is not None:
            reason = conn.session.close_reason or "closed"
            ended = conn.closed.result() if conn.closed.done() else None
            if (info.contact and info.path == "relayed" and ended is not None
                    and ended.code == CloseCode.IDLE and ended.error is None):
                # Closed by either end only to free the relay: the contact was at the
                # broker a moment ago, so it stays online there rather than flicker
                # offline until the next lookup.
                self.presence.at_broker(info.remote.key, True, announce=False)
            log.info("session with %s closed: %s", info.remote.address, reason)
            self.events.emit("session.closed", address=info.remote.address, reason=reason)

    # ------------------------------------------------------------ channels
    def add_channel_handler(self, kind: str, handler: StreamHandler, *,
                            strangers: bool = False) -> None:
        """Serve channels of ``kind``; ``strangers`` lets non-contacts open them too."""
        self._handlers[kind] = (handler, strangers)

    def add_session_listener(self, listener: SessionListener) -> None:
        """Call ``listener`` whenever a session with a contact opens (either direction)."""
        self._session_listeners.append(listener)

    def _on_channel(self, conn: Connection, stream: ChannelStream) -> str | None:
        entry = self._handlers.get(stream.kind)
        if entry is None:
            return f"no service for channel kind {stream.kind!r}"
        handler, strangers_ok = entry
        info = self.sessions.get(conn)
        if info is None:
            return "the session is closing"
        if self.standing(info.remote.key) != "contact":
            if not strangers_ok:
                return "not allowed: you are not a contact of this node"
            if conn.session.open_channels > MAX_STRANGER_CHANNELS:
                return "busy: too many requests at once"
            # A stranger's introduction is a few KiB: it may not park more than this.
            stream.receive_window = STRANGER_WINDOW
        self._spawn(self._serve_channel(handler, info.remote, stream))
        return None

    async def _serve_channel(self, handler: StreamHandler, remote: PublicIdentity,
                             stream: ChannelStream) -> None:
        conn = stream.connection
        try:
            await handler(remote, stream)
        except (SidedoorError, TimeoutError) as exc:
            log.info("%s channel from %s failed: %s", stream.kind, remote.address, exc)
            stream.reset(str(exc)[:200] or "failed")
        except Exception:
            log.exception("%s channel from %s failed", stream.kind, remote.address)
            stream.reset("internal error")
        finally:
            # Done with it: whatever the peer still sends on it is not wanted.
            stream.reset("done")
            if (self.standing(remote.key) == "stranger" and conn.is_open
                    and conn.session.open_channels == 0):
                conn.close("introduction done")

    # ------------------------------------------------------------ contacts
    def standing(self, identity: bytes) -> Standing:
        return self._standing.get(identity, "stranger")

    def set_standing(self, identity: bytes, standing: Standing) -> None:
        """Record a change made in the contact book; live sessions follow it."""
        if standing == "stranger":
            self._standing.pop(identity, None)
        else:
            self._standing[identity] = standing
        for link in self.brokers.values():
            link.refresh()  # who may reach us through it changed
        for conn, info in list(self.sessions.items()):
            if info.remote.key == identity:
                info.contact = standing == "contact"
                if (standing == "contact" and self.db is not None
                        and conn.session.remote_static is not None):
                    # A stranger's static key was not kept; a new contact's is (mail is
                    # sealed to it, and the next dial can use IK).
                    self._spawn(self.db.run(self.db.remember_peer, identity,
                                            conn.session.remote_static, None, time.time()))
                if standing == "blocked":
                    conn.close("not allowed", CloseCode.NOT_ALLOWED)

    def my_card(self) -> bytes:
        assert self.identity is not None
        return make_card(self.identity, self.display_name, self.listen_addresses(),
                         list(self.brokers), int(time.time()))

    def contact_keys(self) -> list[bytes]:
        return [key for key, standing in self._standing.items() if standing == "contact"]

    def session_with(self, identity: bytes) -> Connection | None:
        """The open session with ``identity``; a direct one rather than a relayed one."""
        found: Connection | None = None
        for conn, info in self.sessions.items():
            if info.remote.key == identity and conn.is_open:
                if info.path != "relayed":
                    return conn
                found = found or conn
        return found

    async def wait_for_session(self, identity: bytes, timeout: float,
                               direct: bool = False) -> Connection:
        """The first session with ``identity`` to open (polled: this is for rare paths)."""
        async with asyncio.timeout(timeout):
            while True:
                conn = self.session_with(identity)
                if conn is not None and not (direct and conn.via == "relayed"):
                    return conn
                await asyncio.sleep(0.05)

    async def _upgrade(self, conn: Connection, remote: PublicIdentity) -> None:
        """Keep trying to replace a relayed session with a punched (direct) one.

        The relayed session is closed once a direct one is open and nothing is left
        running on the relayed one, so a transfer in progress is not cut.
        """
        delay = self.upgrade_interval
        while conn.is_open and not self._closed:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 300.0)
            direct = self.session_with(remote.key)
            if direct is None or direct is conn:
                for link in list(self.brokers.values()):
                    if not link.is_registered:
                        continue
                    try:
                        direct = await link.punch(remote, timeout=10.0)
                        break
                    except (SidedoorError, OSError) as exc:
                        log.debug("upgrade to %s via %s failed: %s", remote.short,
                                  link.address.hostport, exc)
            if direct is not None and direct is not conn and direct.is_open:
                log.info("session with %s upgraded from relayed to %s", remote.short,
                         self.sessions[direct].path if direct in self.sessions else "direct")
                for _ in range(UPGRADE_DRAIN_SECONDS):
                    if not (conn.is_open and conn.session.open_channels):
                        break
                    await asyncio.sleep(1.0)
                conn.close("upgraded to a direct path")
                return

    async def _close_when_idle(self, conn: Connection) -> None:
        """Close a relayed session once no channel has been open for `relayed_idle_close` s."""
        step = max(self.relayed_idle_close / 10, 0.05)
        idle_since: float | None = None
        opened = -1
        loop = asyncio.get_running_loop()
        while conn.is_open and not self._closed:
            await asyncio.sleep(step)
            if conn.session.open_channels or conn.session.channels_opened != opened:
                opened = conn.session.channels_opened
                idle_since = None
            elif idle_since is None:
                idle_since = loop.time()
            elif loop.time() - idle_since >= self.relayed_idle_close:
                conn.close("idle: the relay is freed until there is something to send",
                           CloseCode.IDLE)
                return

    async def connect_any(self, remote: PublicIdentity, addrs: list[str],
                          timeout: float = 10.0) -> Connection:
        """A session with ``remote``: the live one, else the first of ``addrs`` that answers."""
        live = self.session_with(remote.key)
        if live is not None:
            return live
        errors: list[str] = []
        for addr in dict.fromkeys(addrs):
            try:
                host, _, port = addr.rpartition(":")
                return await self.connect(remote, host.strip("[]"), int(port), timeout=timeout)
            except (SidedoorError, ValueError) as exc:
                errors.append(f"{addr}: {exc}")
        if not errors:
            raise ConnectError(f"no known address for {remote.short}…; is it online nearby?")
        raise ConnectError(f"cannot reach {remote.short}…: " + "; ".join(errors))

    async def known_addrs(self, identity: bytes) -> list[str]:
        """Where ``identity`` may be listening, best first: seen on the LAN, its card, last dial."""
        assert self.db is not None and self.contacts is not None
        addrs: list[str] = []
        address = PublicIdentity(identity).address
        for peer in self.nearby():
            if peer["address"] == address:
                addrs.extend(peer["addrs"])
        contact = await self.db.run(self.contacts.get, identity)
        if contact is not None:
            addrs.extend(contact.card.addrs)
        last = await self.db.run(self.db.peer_last_addr, identity)
        if last:
            addrs.append(last)
        return list(dict.fromkeys(addrs))

    async def reach(self, identity: bytes, timeout: float = 10.0,
                    addrs: list[str] | None = None, relay: bool = True) -> Connection:
        """A session with ``identity``: the live one, or the first path that authenticates.

        ``addrs`` adds addresses to try (from a link, a card); strangers are reached
        the same way, for an introduction. ``relay=False`` leaves the brokers' relays
        out (a session for presence alone is not worth a relay slot).

        Candidates are raced (happy eyeballs): the addresses known directly (LAN, its
        card, the last dial), then, through each broker, the addresses it reports, a
        punched hole, and last the relay, which starts later so that a direct path
        wins when there is one.
        """
        live = self.session_with(identity)
        if live is not None:
            return live
        remote = PublicIdentity(identity)
        addrs = list(dict.fromkeys([*(addrs or []), *await self.known_addrs(identity)]))
        attempts = [Attempt(addr, i * RACE_STAGGER, self._dial_text(remote, addr, timeout))
                    for i, addr in enumerate(addrs)]
        for link in self.brokers.values():
            if link.is_registered:
                attempts.append(Attempt(f"via {link.address.host}", 0.05 if addrs else 0.0,
                                        functools.partial(link.reach, remote, set(addrs),
                                                          timeout, relay)))
        if not attempts:
            raise ConnectError(f"no known way to reach {remote.short}…: it was never seen "
                               "on this network and no broker is connected")
        return await race(attempts, timeout, f"{remote.short}…")

    def _dial_text(self, remote: PublicIdentity, addr: str, timeout: float
                   ) -> Callable[[], Awaitable[Connection]]:
        async def run() -> Connection:
            host, _, port = addr.rpartition(":")
            try:
                port_number = int(port)
            except ValueError:
                raise ConnectError("not a host:port") from None
            return await self.connect(remote, host.strip("[]"), port_number, timeout=timeout)
        return run

    async def _race(self, remote: PublicIdentity, addrs: list[str],
                    timeout: float) -> Connection:
        attempts = [Attempt(addr, i * RACE_STAGGER, self._dial_text(remote, addr, timeout))
                    for i, addr in enumerate(addrs)]
        return await race(attempts, timeout, f"{remote.short}…")

    async def connect_over(self, sock: socket.socket, remote: PublicIdentity, via: str,
                           timeout: float = 10.0) -> Connection:
        """Authenticate ``remote`` on an already connected socket (relay, punched hole)."""
        assert self.db is not None
        try:
            static = await self.db.run(self.db.peer_static, remote.key)
        except BaseException:
            sock.close()  # cancelled (another path won the race): nothing else owns it
            raise
        session = new_session(
            Role.INITIATOR, self._keys(), verify_noise_proof,
            pattern=Pattern.IK if static is not None else Pattern.XX,
            expected_remote=remote.key, remote_static=static, config=self.session_config)
        conn = await dial(remote.short, 0, session, timeout=timeout, sock=sock, via=via,
                          on_handshake=self._on_handshake, on_channel=self._on_channel,
                          on_closed=self._on_closed)
        if conn.session.pattern is Pattern.XX and conn.is_open:
            with contextlib.suppress(SidedoorError):
                await conn.ping(timeout)
        if not conn.is_open:
            raise NotAllowed(f"the node refused the connection "
                             f"({conn.session.close_reason or 'closed'})")
        return conn

    async def accept_over(self, sock: socket.socket, via: str,
                          timeout: float = 10.0) -> Connection:
        """Answer a handshake on an already connected socket, as if it had dialled us."""
        loop = asyncio.get_running_loop()
        conn = self._accept()
        conn.via = via
        try:
            await loop.create_connection(lambda: conn, sock=sock)
        except BaseException:
            sock.close()
            self._pending.discard(conn)
            raise
        try:
            async with asyncio.timeout(timeout):
                await conn.handshake
        except TimeoutError:
            conn.close("handshake timeout")
            raise PeerTimeout(f"no handshake on the {via} path within {timeout:g} s") from None
        except BaseException:
            conn.close("handshake failed")
            raise
        return conn

    async def connect(self, remote: PublicIdentity, host: str, port: int,
                      timeout: float = 10.0) -> Connection:
        """Dial ``host:port`` and prove it is ``remote``. Uses IK when the key is known."""
        assert self.db is not None
        if self.standing(remote.key) == "blocked":
            raise ContactError("you blocked this contact; unblock it first")
        known_static = await self.db.run(self.db.peer_static, remote.key)
        patterns: list[tuple[Pattern, bytes | None]] = [(Pattern.XX, None)]
        if known_static is not None:
            patterns.insert(0, (Pattern.IK, known_static))
        last_error: Exception | None = None
        for pattern, static in patterns:
            session = new_session(
                Role.INITIATOR, self._keys(), verify_noise_proof, pattern=pattern,
                expected_remote=remote.key, remote_static=static, config=self.session_config,
            )
            try:
                conn = await dial(host, port, session, timeout=timeout,
                                  on_handshake=self._on_handshake, on_channel=self._on_channel,
                                  on_closed=self._on_closed)
            except HandshakeFailed as exc:
                # An IK dial fails if the peer's static key changed: retry with XX.
                last_error = exc
                continue
            if pattern is Pattern.XX and conn.is_open:
                # XX ends with our message: the peer decides on us (blocked, busy) after
                # we think the handshake is done. One round trip brings its verdict.
                with contextlib.suppress(SidedoorError):
                    await conn.ping(timeout)
            if not conn.is_open:
                reason = conn.session.close_reason or "closed"
                raise NotAllowed(f"the node refused the connection ({reason}); "
                                 "it may have blocked you")
            return conn
        assert last_error is not None
        raise last_error

    async def ping_reach(self, identity: bytes, count: int = 1,
                         timeout: float = 10.0) -> PingResult:
        """Ping a contact by whatever path `reach` finds (or the session already open)."""
        remote = PublicIdentity(identity)
        if remote == self.public:
            raise ConnectError("that is this node's own address")
        loop = asyncio.get_running_loop()
        live = self.session_with(identity) is not None
        start = loop.time()
        conn = await self.reach(identity, timeout=timeout)
        handshake_ms = 0.0 if live else (loop.time() - start) * 1000
        info = self.sessions.get(conn)
        rtts = [await conn.ping(timeout) * 1000 for _ in range(max(1, count))]
        return PingResult(
            address=remote.address, addr=info.remote_addr if info else "?",
            path=info.path if info else "?", pattern=conn.session.pattern.value,
            handshake_ms=handshake_ms, rtts_ms=rtts,
            contact=self.standing(identity) == "contact")

    async def ping(self, address: str, host: str, port: int, count: int = 1,
                   timeout: float = 10.0) -> PingResult:
        remote = PublicIdentity.from_address(address)
        if remote == self.public:
            raise ConnectError("that is this node's own address")
        loop = asyncio.get_running_loop()
        start = loop.time()
        conn = await self.connect(remote, host, port, timeout=timeout)
        handshake_ms = (loop.time() - start) * 1000
        try:
            rtts = [await conn.ping(timeout) * 1000 for _ in range(max(1, count))]
        finally:
            await conn.aclose("ping done")
        return PingResult(
            address=remote.address, addr=f"{host}:{port}", path=classify_path(host),
            pattern=conn.session.pattern.value, handshake_ms=handshake_ms, rtts_ms=rtts,
            contact=self.standing(remote.key) == "contact",
        )
