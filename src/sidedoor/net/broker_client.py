"""A node's link to one broker: a Noise session kept open, a registration kept fresh,
and the paths the broker offers (lookup, punched hole, relay) and the mail it holds.

The session leaves from the node's listening port (see `net.sockets`), so the
address the broker observes is the NAT's mapping of that port: the one contacts
dial when the broker tells both sides to punch.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sidedoor.errors import BrokerError, BrokerRefused, ConnectError, SidedoorError
from sidedoor.identity import PublicIdentity, verify_noise_proof
from sidedoor.net.connection import ChannelStream, Connection, dial, new_session
from sidedoor.net.race import Attempt, race
from sidedoor.net.sockets import connect_from, connect_preferring
from sidedoor.proto import broker as wire
from sidedoor.proto.session import Role

if TYPE_CHECKING:
    from sidedoor.node import Node

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0
BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
RELAY_AFTER = 3.0  # the relay starts this late so a punched or direct path can win
PUNCH_BUDGET = 4.0
PUNCH_RETRY = 0.2


class BrokerLink:
    def __init__(self, node: Node, address: wire.BrokerAddress,
                 on_mail: Callable[[wire.MailItem], Any] | None = None) -> None:
        self.node = node
        self.address = address
        self.on_mail = on_mail
        self.state = "connecting"
        self.error = ""
        self.observed = ""
        self.mail_waiting = 0
        self.conn: Connection | None = None
        self._stream: ChannelStream | None = None
        self._rids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[wire.FromBroker]] = {}
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refresh = asyncio.Event()
        self.registered = asyncio.Event()

    @property
    def url(self) -> str:
        return str(self.address)

    @property
    def is_registered(self) -> bool:
        return self.registered.is_set() and self.conn is not None and self.conn.is_open

    def nat(self) -> str:
        """What the observed address says about the network between us and the broker."""
        if not self.observed:
            return "unknown"
        host, _, port = self.observed.rpartition(":")
        listening = {a.rpartition(":")[0] for a in self.node.listen_addresses()}
        if host in listening or host.strip("[]") in listening:
            return "none"  # the broker sees our own address: no NAT on the way
        if port == str(self.node.port):
            return "port-preserving"  # hole punching should work
        return "port-changing"  # contacts behind NAT will mostly be relayed

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "host": self.address.hostport, "state": self.state,
                "observed": self.observed, "nat": self.nat(), "error": self.error,
                "mail_waiting": self.mail_waiting}

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.conn is not None:
            await self.conn.aclose("node stopping")

    def refresh(self) -> None:
        """Register again soon: the contact list (who may reach us) changed."""
        self._refresh.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------- the session
    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._session()
                failures = 0
            except (SidedoorError, OSError, TimeoutError) as exc:
                self.error = str(exc)
                log.info("broker %s: %s", self.address.hostport, exc)
            finally:
                self.registered.clear()
                self.state = "offline"
                for fut in self._waiting.values():
                    if not fut.done():
                        fut.set_exception(BrokerError("the broker connection was lost"))
                self._waiting.clear()
            await asyncio.sleep(BACKOFF[min(failures, len(BACKOFF) - 1)])
            failures += 1

    async def _session(self) -> None:
        node, addr = self.node, self.address
        self.state = "connecting"
        sock = await connect_preferring(node.host, node.port, addr.host, addr.port, 10.0)
        session = new_session(Role.INITIATOR, node._keys(), verify_noise_proof,
                              expected_remote=addr.identity.key, config=node.session_config)
        conn = self.conn = await dial(
            addr.host, addr.port, session, sock=sock,
            on_channel=lambda c, s: "a node takes no channels from a broker")
        try:
            self._stream = await conn.open_channel(wire.KIND_BROKER)
            reader = asyncio.ensure_future(self._read(self._stream))
            try:
                while True:
                    await self._register()
                    self._refresh.clear()
                    refreshed = asyncio.ensure_future(self._refresh.wait())
                    try:
                        await asyncio.wait([reader, refreshed],
                                           timeout=wire.REGISTRATION_TTL / 3,
                                           return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        refreshed.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await refreshed
                    if reader.done():
                        reader.result()
                        raise BrokerError("the broker ended the session")
            finally:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
        finally:
            conn.close("broker link ended")

    async def _register(self) -> None:
        node = self.node
        assert node.db is not None and node.contacts is not None
        contacts = await node.db.run(node.contacts.all)
        allow = [c.identity for c in contacts if not c.blocked][:wire.MAX_ALLOW]
        reply = await self.request(lambda rid: wire.Register(
            rid, node.listen_addresses()[:wire.MAX_ADDRS], node.port, allow, True))
        assert isinstance(reply, wire.Registered)
        first = not self.registered.is_set()
        self.observed = reply.observed
        self.mail_waiting = reply.mail_waiting
        self.state = "registered"
        self.error = ""
        self.registered.set()
        if first:
            log.info("registered at broker %s (seen as %s)", self.address.hostport,
                     reply.observed)
            node.events.emit("broker.registered", url=self.url, observed=reply.observed)

    async def _read(self, stream: ChannelStream) -> None:
        while True:
            data = await stream.read_message(wire.MAX_MESSAGE, timeout=3600.0)
            if data is None:
                return
            message = wire.decode_from_broker(data)
            rid = getattr(message, "rid", 0)
            if rid:
                fut = self._waiting.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(message)
                continue
            match message:
                case wire.RelayIncoming():
                    self._spawn(self._answer_relay(message))
                case wire.PunchAt():
                    # Someone online wants a path to us: presence learns from it too.
                    self.node.events.emit("broker.punch", url=self.url,
                                          address=PublicIdentity(message.peer).address)
                    self._spawn(self._punch_back(message))
                case wire.MailItem():
                    if self.on_mail is not None:
                        self.on_mail(message)

    async def request(self, make: Callable[[int], wire.ToBroker],
                      timeout: float = REQUEST_TIMEOUT) -> wire.FromBroker:
        stream = self._stream
        if stream is None or self.conn is None or not self.conn.is_open:
            raise BrokerError(f"not connected to the broker {self.address.hostport}")
        rid = next(self._rids)
        fut: asyncio.Future[wire.FromBroker] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            await stream.write_message(wire.encode(make(rid)))
            async with asyncio.timeout(timeout):
                reply = await fut
        except TimeoutError:
            raise BrokerError(f"the broker {self.address.hostport} did not answer") from None
        finally:
            self._waiting.pop(rid, None)
        if isinstance(reply, wire.Refused):
            raise BrokerRefused(f"the broker says: {reply.reason}")
        return reply

    async def send(self, message: wire.ToBroker) -> None:
        """A message that has no answer (an acknowledgement, a release)."""
        if self._stream is None:
            raise BrokerError("not connected to the broker")
        await self._stream.write_message(wire.encode(message))

    # ------------------------------------------------------------------ paths
    async def has_registered(self, remote: PublicIdentity) -> bool | None:
        """Whether ``remote`` is registered here and lets us find it; None if the broker
        cannot be asked now.

        A node that does not list us (it blocked or removed us) is still "found" when
        it accepts strangers' requests, but with no address: that counts as no.
        """
        try:
            found = await self.request(lambda rid: wire.Lookup(rid, remote.key))
        except BrokerRefused:
            return False
        except (SidedoorError, OSError):
            return None
        return isinstance(found, wire.Found) and bool(found.listen_addrs or found.observed)

    async def reach(self, remote: PublicIdentity, tried: set[str],
                    timeout: float, relay: bool = True) -> Connection:
        """Through this broker: the addresses it knows, a punched hole, then the relay
        (unless ``relay`` is false: a relay is a broker's scarcest resource)."""
        found = await self.request(lambda rid: wire.Lookup(rid, remote.key))
        assert isinstance(found, wire.Found)
        attempts: list[Attempt] = []
        direct = [a for a in dict.fromkeys([*found.listen_addrs, found.observed])
                  if a and a not in tried]
        for i, addr in enumerate(direct):
            attempts.append(Attempt(f"{addr} (from the broker)", i * 0.25,
                                    self.node._dial_text(remote, addr, timeout)))
        if found.observed:
            attempts.append(Attempt("punched", 0.0, lambda: self.punch(remote, timeout)))
        if relay:
            attempts.append(Attempt("relayed", RELAY_AFTER if found.observed else 0.0,
                                    lambda: self.relay(remote, timeout)))
        if not attempts:
            raise ConnectError(f"{remote.short}… is registered at {self.address.hostport}, "
                               "but only through its relay")
        return await race(attempts, timeout, f"{remote.short}… via {self.address.hostport}")

    async def relay(self, remote: PublicIdentity, timeout: float) -> Connection:
        ready = await self.request(lambda rid: wire.RelayRequest(rid, remote.key))
        assert isinstance(ready, wire.RelayReady)
        sock = await self._relay_socket(ready.token, timeout)
        return await self.node.connect_over(sock, remote, "relayed", timeout)

    async def _relay_socket(self, token: bytes, timeout: float) -> socket.socket:
        sock = await connect_from(self.node.host, 0, self.address.host, self.address.port,
                                  timeout)
        try:
            await asyncio.get_running_loop().sock_sendall(sock, wire.RELAY_PREAMBLE + token)
        except OSError as exc:
            sock.close()
            raise ConnectError(f"the relay dropped the connection: {exc}") from exc
        return sock

    async def _answer_relay(self, push: wire.RelayIncoming) -> None:
        try:
            sock = await self._relay_socket(push.token, REQUEST_TIMEOUT)
            await self.node.accept_over(sock, "relayed", REQUEST_TIMEOUT)
        except (SidedoorError, OSError) as exc:
            log.info("a relayed connection from %s failed: %s",
                     PublicIdentity(push.peer).short, exc)

    async def punch(self, remote: PublicIdentity, timeout: float) -> Connection:
        at = await self.request(lambda rid: wire.PunchRequest(rid, remote.key))
        assert isinstance(at, wire.PunchAt)
        return await self._punch(at, min(timeout, PUNCH_BUDGET + at.delay))

    async def _punch_back(self, at: wire.PunchAt) -> None:
        with contextlib.suppress(SidedoorError, OSError):
            await self._punch(at, PUNCH_BUDGET + at.delay)

    async def _punch(self, at: wire.PunchAt, budget: float) -> Connection:
        """TCP simultaneous open from our listening port to the peer's mapped one.

        Both peers run this at once; the one with the smaller key speaks first in the
        Noise handshake, so the two never both wait or both start. Where nothing drops
        unsolicited SYNs (no NAT between the two, or one that lets them in), one dial
        lands on the other's listener instead of crossing: the listener then takes the
        role its node was to play (see `Node.expect_punch`), and whichever session
        opens first is the punched one.
        """
        node = self.node
        remote = PublicIdentity(at.peer)
        initiator = node.public.key < remote.key
        host, _, port = at.addr.rpartition(":")
        where = (host.strip("[]"), int(port))
        node.expect_punch(where, remote, initiator)
        dialled = asyncio.ensure_future(self._punch_dial(at, where, remote, initiator, budget))
        landed = asyncio.ensure_future(
            node.wait_for_session(remote.key, budget + at.delay, direct=True))
        try:
            await asyncio.wait([dialled, landed], timeout=budget + at.delay,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            node.forget_punch(where)
            landed.cancel()
            if not dialled.done():
                dialled.cancel()
        conn = _result(dialled) or _result(landed)
        if conn is None:
            error = dialled.exception() if dialled.done() and not dialled.cancelled() else None
            raise ConnectError(f"punching through to {at.addr} failed: {error or 'timed out'}")
        if conn.remote_identity != remote.key:
            conn.close("not the peer we punched to")
            raise ConnectError("someone else answered the punched hole")
        return conn

    async def _punch_dial(self, at: wire.PunchAt, where: tuple[str, int],
                          remote: PublicIdentity, initiator: bool, budget: float) -> Connection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        await asyncio.sleep(max(0.0, at.delay))
        last: Exception | None = None
        while loop.time() < deadline:
            try:
                sock = await connect_from(self.node.host, self.node.port, where[0], where[1],
                                          max(0.1, deadline - loop.time()))
            except ConnectError as exc:
                last = exc
                await asyncio.sleep(PUNCH_RETRY)
                continue
            remaining = max(1.0, deadline - loop.time())
            if initiator:
                return await self.node.connect_over(sock, remote, "punched", remaining)
            return await self.node.accept_over(sock, "punched", remaining)
        raise ConnectError(str(last or "timed out"))


def _result(task: asyncio.Future[Connection]) -> Connection | None:
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()
    return None
