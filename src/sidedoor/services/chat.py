"""Chat between contacts: direct conversations and rooms, with an outbox, receipts,
presence and history sync. The asyncio layer around `sidedoor.proto.chat`.

How a message travels
    `Chat.send` stores the message and one outbox row per recipient in one
    transaction (writes from many senders are batched), then hands it to the
    recipient's `Courier`. The courier reaches the contact (`node.reach`), writes
    every waiting frame down one ``chat`` channel (a `Link`) without waiting in
    between, and drops each outbox row when the peer's `Ack` says "stored". When the
    contact cannot be reached, the rows stay, and each frame is also given to the
    mail layer (``node.mail.send``): whichever arrives first wins, the receiver
    deduplicates by id. Outboxes are flushed whenever a session with the contact
    opens, and at start-up the node reaches whoever it has something for.

The one way in
    Every frame that arrives, through a channel, a mailbox or a history sync, goes
    through `Chat.receive(sender, frames, via)`. ``sender`` is who authenticated
    it (the session's proven identity, or the signature the mail layer checked);
    a non-contact's frames are dropped there, and a direct message must name that
    sender as its author.

Rooms
    Membership is a signed chain (see `sidedoor.proto.chat`); an admin's change is
    sent to every member of the old and new lists. Room messages go to every
    current member who is our contact; everyone catches up with any member they
    share a session with (`SyncRequest` on every new session, both ways).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sidedoor.errors import ChatError, ChatRefused, MessageError, SidedoorError
from sidedoor.identity import PublicIdentity
from sidedoor.names import clean_name
from sidedoor.net.connection import ChannelStream, Connection
from sidedoor.proto import chat as wire
from sidedoor.proto.chat import (
    Ack,
    Frame,
    Leave,
    Message,
    Receipt,
    Request,
    RoomState,
    RoomUpdate,
    SyncRequest,
    SyncResponse,
)
from sidedoor.proto.framing import encode_message
from sidedoor.services.chat_store import (
    ChatStore,
    OutItem,
    Room,
    Settle,
    Settled,
    StoredMessage,
)

if TYPE_CHECKING:
    from sidedoor.node import Node, PeerSession

log = logging.getLogger(__name__)

Via = Literal["direct", "mail", "sync"]
REACH_TIMEOUT = 5.0
ACK_TIMEOUT = 30.0
SYNC_TIMEOUT = 30.0
BATCH = 1000             # frames written in one go
MAX_IN_FLIGHT = 4        # batches written before the first one's answers are awaited
MAX_COURIER_ROUNDS = 10_000
MAX_SYNC_ROUNDS = 100
RETRY_FIRST = 2.0        # an unreachable peer is tried again after this, doubling...
RETRY_MAX = 300.0        # ...up to this
INDEX_DELAY = 1.0        # new messages join the search index in bulk, this long after
SHORT_WRITE = 64         # writes of up to this many messages may run on the loop (db_short)
SETTLE_DELAY = 0.005     # answers wait this long for a message to share their commit


def now_ms() -> int:
    return int(time.time() * 1000)


@functools.lru_cache(maxsize=4096)
def address_of(key: bytes) -> str:
    """A key's address (cached: every event and listing names people by it)."""
    return PublicIdentity(key).address


class Link:
    """Our ``chat`` channel to one peer: requests go out, answers come back in order.

    The peer answers every request in the order it was sent, so answers are matched
    to a batch of requests by position (and checked by id): one future per batch.
    """

    def __init__(self, chat: Chat, conn: Connection, stream: ChannelStream) -> None:
        self.conn = conn
        self.stream = stream
        # (the refs of a batch, the answers so far, the future of the whole batch)
        self.waiting: deque[tuple[list[bytes], list[Frame], asyncio.Future[list[Frame]]]] = (
            deque())
        self.closed = False
        chat.spawn(self._read())

    async def _read(self) -> None:
        splitter = wire.FrameSplitter(wire.MAX_SYNC_FRAME)
        try:
            while chunk := await self.stream.read():
                for data in splitter.feed(chunk):
                    frame = wire.decode(data)
                    if not isinstance(frame, Ack | SyncResponse):
                        raise MessageError(f"a {type(frame).__name__} where an answer was due")
                    if not self.waiting:
                        raise MessageError("an answer to nothing we asked")
                    refs, answers, fut = self.waiting[0]
                    if frame.id != refs[len(answers)]:
                        raise MessageError("an answer out of order")
                    answers.append(frame)
                    if len(answers) == len(refs):
                        self.waiting.popleft()
                        if not fut.done():
                            fut.set_result(answers)
        except (SidedoorError, TimeoutError) as exc:
            log.info("chat link to %s closed: %s", self.conn.peername, exc)
        finally:
            self.closed = True
            self.stream.reset("done")
            for _, answers, fut in self.waiting:
                if not fut.done():
                    # What was answered counts; the rest is unanswered.
                    fut.set_result(answers)
            self.waiting.clear()

    @property
    def ready(self) -> bool:
        """Open, and a write would not wait (`send_nowait` may be used)."""
        return not self.closed and self.conn.is_open and self.stream.writable

    def send_nowait(self, items: list[tuple[bytes, bytes]]) -> asyncio.Future[list[Frame]]:
        """Write (ref, frame) requests in one go; the future gets their answers, in order
        (fewer than asked if the channel closed first). Does not wait for the channel's
        backlog to drain: `send` does, and so does a caller that checks `ready` first."""
        if self.closed:
            raise ChatError("the chat channel is closed")
        fut: asyncio.Future[list[Frame]] = asyncio.get_running_loop().create_future()
        self.stream.write_nowait(b"".join([encode_message(data) for _, data in items]))
        self.waiting.append(([ref for ref, _ in items], [], fut))
        return fut

    async def send(self, items: list[tuple[bytes, bytes]]) -> asyncio.Future[list[Frame]]:
        """`send_nowait`, then wait while the channel's backlog is over its limit."""
        if self.closed:
            raise ChatError("the chat channel is closed")
        fut = self.send_nowait(items)
        await self.stream.drain()
        return fut


class Courier:
    """Hands one peer what waits for it, in outbox order; mails what cannot go now."""

    def __init__(self, chat: Chat, peer: bytes) -> None:
        self.chat = chat
        self.peer = peer
        self.queue: deque[OutItem] = deque()
        self.refs: set[bytes] = set()
        self.running = False
        self.reload = False
        self.backoff = 0.0
        self._retry: asyncio.TimerHandle | None = None
        # Frames sent before their own transaction ended: ref -> when it is stored.
        self._ready: dict[bytes, asyncio.Future[None]] = {}
        # Set while the courier waits for answers with nothing to send: a push (or a
        # flush) resolves it, so a new message goes at once, not after those answers.
        self._wake: asyncio.Future[None] | None = None
        # Batches written whose answers are awaited: a few at once keep the pipe full.
        self.inflight: set[asyncio.Task[list[OutItem]]] = set()

    def push(self, items: Iterable[OutItem], ready: asyncio.Future[None] | None = None
             ) -> None:
        idle = not self.queue
        for item in items:
            if item.ref not in self.refs:
                self.refs.add(item.ref)
                self.queue.append(item)
                if ready is not None:
                    self._ready[item.ref] = ready
        if idle and self.queue and self._send_now():
            return
        self._start()
        self._poke()

    def _send_now(self) -> bool:
        """Write the queue down the open channel right here, if nothing else must go
        first: a message leaves before its own transaction commits (which `_settle`
        awaits before recording the answer), and without a task switch. True if sent."""
        if self.reload or self.chat.stopping or len(self.inflight) >= MAX_IN_FLIGHT:
            return False
        if self.running and (self._wake is None or self._wake.done()):
            return False  # the courier is busy (reaching, writing, parking): it sends
        link = self.chat._links.get(self.peer)
        if link is None or not link.ready:
            return False
        batch = [self.queue.popleft() for _ in range(min(BATCH, len(self.queue)))]
        try:
            fut = link.send_nowait([(item.ref, item.frame) for item in batch])
        except SidedoorError:
            self.queue.extendleft(reversed(batch))
            return False
        self.inflight.add(asyncio.ensure_future(self._settle(batch, fut)))
        # A courier parked for answers sees this batch when it wakes; if none runs,
        # one starts to await its answers.
        self._start()
        return True

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _stored(self, items: Iterable[OutItem]) -> None:
        """Wait until these frames' rows exist, before recording what became of them."""
        waits = {self._ready.pop(i.ref) for i in items if i.ref in self._ready}
        waits = {w for w in waits if not w.done()}  # the usual case: all stored by now
        if waits:
            # wait, not gather: a cancelled wait must not cancel these futures, which
            # `Chat.send` (an API request) awaits too.
            await asyncio.wait(waits)

    def flush(self) -> None:
        """Send everything in the database's outbox for this peer."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.chat.stopping:
            return
        self.reload = True
        self._start()
        self._poke()

    def _retry_later(self) -> None:
        self.backoff = min(RETRY_MAX, max(RETRY_FIRST, self.backoff * 2))
        if self._retry is None and not self.chat.stopping:
            self._retry = asyncio.get_running_loop().call_later(self.backoff, self.flush)

    def _start(self) -> None:
        if not self.running:
            self.running = True
            self.chat.spawn(self._run())

    async def _run(self) -> None:
        chat = self.chat
        inflight = self.inflight
        again = False
        try:
            for _ in range(MAX_COURIER_ROUNDS):
                # A reload (a session opened) is done before parking: while it is due,
                # new messages cannot be written from `push` (they would overtake it).
                if not self.queue and not self.reload and inflight and await self._answered(
                        inflight, every=True, wake=True):
                    continue
                if not self.queue and self.reload:
                    self.reload = False
                    stored = await chat.db_run(chat.store.outbox, self.peer, BATCH)
                    self.push(stored)
                    self.reload = len(stored) == BATCH
                if chat.stopping:
                    return
                if not self.queue:
                    if inflight:
                        continue  # woken with nothing new: wait for the answers again
                    return
                try:
                    link = await chat.link(self.peer)
                except (SidedoorError, OSError, TimeoutError) as exc:
                    log.info("chat: %s not reachable (%s); kept in the outbox",
                             PublicIdentity(self.peer).short, exc)
                    await self._answered(inflight, every=True)
                    await self._park([])
                    continue  # anything pushed meanwhile is mailed on the next round
                batch = [self.queue.popleft() for _ in range(min(BATCH, len(self.queue)))]
                try:
                    fut = await link.send([(item.ref, item.frame) for item in batch])
                except (SidedoorError, TimeoutError) as exc:
                    log.info("chat: delivery to %s broke off: %s",
                             PublicIdentity(self.peer).short, exc)
                    await self._answered(inflight, every=True)
                    await self._park(batch)
                    continue
                inflight.add(asyncio.ensure_future(self._settle(batch, fut)))
                if len(inflight) >= MAX_IN_FLIGHT:
                    await self._answered(inflight, every=False)
            else:
                # The bound on rounds ends a long busy stretch: let what is in flight be
                # answered, then carry on in a fresh run.
                await self._answered(inflight, every=True)
                again = True
        except Exception:
            log.exception("chat courier for %s failed", PublicIdentity(self.peer).short)
        finally:
            for task in inflight:
                task.cancel()
            inflight.clear()
            self.running = False
        if again and (self.queue or self.reload) and not chat.stopping:
            self._start()

    async def _answered(self, inflight: set[asyncio.Task[list[OutItem]]], *, every: bool,
                        wake: bool = False) -> bool:
        """Wait for one (or every) batch in flight to be answered and settled (with
        ``wake``: or for something new to send); if some frames went unanswered, wait
        for the rest, mail and park. True if it parked."""
        if not inflight:
            return False
        if wake:
            self._wake = asyncio.get_running_loop().create_future()
            waits: list[asyncio.Future[Any]] = [*inflight, self._wake]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._wake = None
            done = {task for task in inflight if task.done()}
        else:
            done, _ = await asyncio.wait(
                inflight,
                return_when=asyncio.ALL_COMPLETED if every else asyncio.FIRST_COMPLETED)
        inflight.difference_update(done)
        unanswered = [item for task in done for item in task.result()]
        if not unanswered:
            if done:
                self.backoff = 0.0
            return False
        if inflight:
            done, _ = await asyncio.wait(inflight)
            inflight.clear()
            unanswered.extend(item for task in done for item in task.result())
        await self._park(unanswered)
        return True

    async def _park(self, unanswered: list[OutItem]) -> None:
        await self._mail_and_park(unanswered)
        self._retry_later()

    async def _settle(self, batch: list[OutItem], fut: asyncio.Future[list[Frame]]
                      ) -> list[OutItem]:
        """Await a batch's answers and record them; returns what went unanswered."""
        chat = self.chat
        try:
            async with asyncio.timeout(ACK_TIMEOUT):
                answers = await fut
        except TimeoutError:
            log.info("chat: %s did not answer in %g s", PublicIdentity(self.peer).short,
                     ACK_TIMEOUT)
            return batch
        await self._stored(batch)
        stored: list[bytes] = []
        refused: list[tuple[bytes, str]] = []
        unanswered: list[OutItem] = batch[len(answers):]
        for item, answer in zip(batch, answers, strict=False):
            if isinstance(answer, Ack):
                self.refs.discard(item.ref)
                if answer.status == "stored":
                    stored.append(item.ref)
                else:
                    refused.append((item.ref, answer.reason or "refused"))
        try:
            delivered, failed = await chat._batcher.settle((self.peer, stored, refused))
        except SidedoorError as exc:
            log.warning("chat: could not record answers from %s: %s",
                        PublicIdentity(self.peer).short, exc)
            return unanswered
        by = address_of(self.peer)
        if delivered and chat.watched("chat.delivered"):
            for mid, conv in delivered:
                chat.emit("chat.delivered", id=mid.hex(), conversation=conv.hex(), by=by)
        reasons = dict(refused)
        for mid, conv in failed:
            log.info("chat: %s refused message %s: %s", by, mid.hex(), reasons[mid])
            chat.emit("chat.failed", id=mid.hex(), conversation=conv.hex(), by=by,
                      reason=reasons[mid])
        return unanswered

    async def _mail_and_park(self, also: list[OutItem]) -> None:
        """The peer is away: hand the frames to the mail layer; they stay in the outbox
        and go directly when a session with the peer opens."""
        chat = self.chat
        items = [*also, *self.queue]
        await self._stored(items)
        self.queue.clear()
        self.refs.clear()
        self.reload = False
        mailed = []
        for item in items:
            if item.mailed:
                continue
            try:
                if await chat.node.mail.send(self.peer, wire.KIND, item.frame):
                    mailed.append(item.ref)
            except (SidedoorError, ValueError, OSError) as exc:
                log.info("chat: mailing to %s failed: %s", PublicIdentity(self.peer).short, exc)
                break
        if mailed:
            await chat.db_run(chat.store.mark_mailed, self.peer, mailed)


class _Batcher:
    """Writes our outgoing messages, and the peers' answers to earlier ones, in as few
    transactions as it can (group commit).

    A message is written at once (the API call waits for it). Answers wait up to
    `SETTLE_DELAY` for a message to share their commit: in a burst, each message then
    costs one commit instead of two (one for it, one for its answer), and a commit is
    most of a small write's cost. Outside bursts the only difference is that
    "delivered" is recorded (and told) a few milliseconds later.
    """

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.pending: list[tuple[tuple[Message, list[tuple[bytes, bytes]]],
                                 asyncio.Future[None]]] = []
        self.settles: list[tuple[Settle, asyncio.Future[Settled]]] = []
        self.running = False
        self._timer: asyncio.TimerHandle | None = None

    def submit(self, msg: Message, outbox: list[tuple[bytes, bytes]]) -> asyncio.Future[None]:
        """Queue a message for the next transaction; the future says when it is stored.
        Call `start` after handing the frames to the couriers: tasks run in the order
        they are made, so the frames leave before the transaction holds the loop."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(((msg, outbox), fut))
        return fut

    def settle(self, item: Settle) -> asyncio.Future[Settled]:
        """Queue a peer's answers; the future gets what they settled once written."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Settled] = loop.create_future()
        self.settles.append((item, fut))
        if self.chat.stopping:
            self.start()  # no message will follow; the database closes soon
        elif not self.running and self._timer is None:
            self._timer = loop.call_later(SETTLE_DELAY, self.start)
        return fut

    def start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.running and (self.pending or self.settles):
            self.running = True
            self.chat.spawn(self._run())

    async def _run(self) -> None:
        chat = self.chat
        try:
            while self.pending or self.settles:
                batch, self.pending = self.pending, []
                settles, self.settles = self.settles, []
                rows = len(batch) + sum(len(s[1]) + len(s[2]) for s, _ in settles)
                try:
                    settled: list[Settled] = await chat.db_short(
                        rows, chat.store.write, [item for item, _ in batch],
                        [item for item, _ in settles], now_ms())
                    if batch:
                        chat.stored()
                except BaseException as exc:
                    futs: list[asyncio.Future[Any]] = [f for _, f in batch]
                    futs.extend(f for _, f in settles)
                    for fut in futs:
                        if not fut.done():
                            fut.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
                    for (_, sfut), result in zip(settles, settled, strict=True):
                        if not sfut.done():
                            sfut.set_result(result)
        finally:
            self.running = False


@dataclass
class _Clock:
    next_seq: int
    newest_at: int


class Chat:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._store: ChatStore | None = None
        self._couriers: dict[bytes, Courier] = {}
        self._links: dict[bytes, Link] = {}
        self._link_locks: dict[bytes, asyncio.Lock] = {}
        self._clocks: dict[bytes, _Clock] = {}
        # A conversation's clock being read from the database: every sender waiting for
        # it resumes at once (a lock would let them through one loop turn at a time,
        # and the messages of a burst would be stored one transaction each).
        self._clock_loads: dict[bytes, asyncio.Future[_Clock]] = {}
        self.rooms: dict[bytes, Room] = {}
        self._online: dict[bytes, set[Connection]] = {}
        self._batcher = _Batcher(self)
        self._syncing: set[tuple[bytes, bytes]] = set()
        # Active rooms no member has caught us up on since this node started.
        self._behind: set[bytes] = set()
        self._index_timer: asyncio.TimerHandle | None = None
        self._ids: list[bytes] = []

    def register(self) -> None:
        self.node.add_channel_handler(wire.KIND, self._serve)
        self.node.add_session_listener(self._on_session)
        self.node.mail.add_handler(wire.KIND, self._on_mail)

    async def start(self) -> None:
        """Load rooms; flush outboxes; act on sessions that opened before the rooms were loaded."""
        rooms = await self.db_run(self.store.rooms)
        self.rooms = {r.state.room: r for r in rooms}
        self._behind = {rid for rid, r in self.rooms.items() if r.status == "active"}
        # Coming online, the node reaches every contact (`services.keep_in_touch`), and
        # each session that opens flushes outboxes both ways and catches rooms up. Those
        # we owe something get a courier now, which also mails what cannot go and tries
        # again later.
        assert self.node.contacts is not None
        contacts = {c.identity for c in await self.db_run(self.node.contacts.all)
                    if not c.blocked}
        owed = set(await self.db_run(self.store.outbox_peers)) & contacts
        for peer in sorted(owed):
            self.courier(peer).flush()
        for peer in sorted(contacts - owed - {self.me}):
            conn = self.node.session_with(peer)
            if conn is not None:
                self._after_session(peer, conn)

    # ------------------------------------------------------------- plumbing
    @property
    def store(self) -> ChatStore:
        if self._store is None:
            assert self.node.db is not None
            self._store = ChatStore(self.node.db, self.me)
        return self._store

    @property
    def me(self) -> bytes:
        return self.node.public.key

    @property
    def stopping(self) -> bool:
        return self.node._stopped.is_set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.node._spawn(coro)

    async def db_run(self, fn: Any, *args: Any) -> Any:
        assert self.node.db is not None
        return await self.node.db.run(fn, *args)

    async def db_short(self, rows: int, fn: Any, *args: Any) -> Any:
        """A write on the path of every message: for a few rows, `Database.run_short`
        (no hop to the database thread when it is idle: the hop, not the SQL, was most
        of a message's latency); for bulk, the thread."""
        assert self.node.db is not None
        if rows <= SHORT_WRITE:
            return await self.node.db.run_short(fn, *args)
        return await self.node.db.run(fn, *args)

    def stored(self) -> None:
        """Messages were stored: index them for search a moment later, in one go."""
        if self._index_timer is None and not self.stopping:
            self._index_timer = asyncio.get_running_loop().call_later(
                INDEX_DELAY, self._index_now)

    def _index_now(self) -> None:
        self._index_timer = None
        if not self.stopping:
            self.spawn(self.db_run(self.store.index))

    def watched(self, kind: str = "chat.message") -> bool:
        """Someone takes events of ``kind`` (else they are not worth building)."""
        return self.node.events.wants(kind)

    def emit(self, kind: str, **data: Any) -> None:
        self.node.events.emit(kind, **data)

    def courier(self, peer: bytes) -> Courier:
        courier = self._couriers.get(peer)
        if courier is None:
            courier = self._couriers[peer] = Courier(self, peer)
        return courier

    async def link(self, peer: bytes) -> Link:
        """Our open chat channel to ``peer``, opening a session and channel if needed."""
        lock = self._link_locks.setdefault(peer, asyncio.Lock())
        async with lock:
            link = self._links.get(peer)
            if link is not None and not link.closed and link.conn.is_open:
                return link
            if self.stopping:
                raise ChatError("the node is stopping")
            conn = await self.node.reach(peer, REACH_TIMEOUT)
            self._track(peer, conn)
            stream = await conn.open_channel(wire.KIND, b"", timeout=REACH_TIMEOUT)
            link = self._links[peer] = Link(self, conn, stream)
            return link

    # ------------------------------------------------------------- sessions
    def _on_session(self, info: PeerSession) -> None:
        self._after_session(info.remote.key, info.connection)

    def _after_session(self, peer: bytes, conn: Connection) -> None:
        self._track(peer, conn)
        self.courier(peer).flush()
        for room in self.rooms.values():
            if room.status == "active" and peer in room.state.members:
                self._behind.discard(room.state.room)
                self.spawn(self.sync(peer, room.state.room))

    def reachable_through_broker(self, peer: bytes) -> None:
        """``peer`` is online, but only through a broker (`services.keep_in_touch` holds
        no relayed session for presence). A room we share with it that no member has
        caught us up on since we started, because none is reachable directly, catches
        up through the relay now, once; the relayed session closes itself when idle."""
        if self.stopping or self.node.standing(peer) != "contact":
            return
        for rid in sorted(self._behind):
            room = self.rooms.get(rid)
            if room is not None and room.status == "active" and peer in room.state.members:
                self._behind.discard(rid)
                self.spawn(self._catch_up(peer, rid))

    async def _catch_up(self, peer: bytes, room_id: bytes) -> None:
        try:
            await self.sync(peer, room_id)
        except (SidedoorError, TimeoutError) as exc:
            log.info("room %s: no catching up through %s: %s", room_id.hex()[:8],
                     PublicIdentity(peer).short, exc)
            self._behind.add(room_id)  # from another member, or this one later

    def _track(self, peer: bytes, conn: Connection) -> None:
        """Presence: a contact is online while some session with it is open."""
        conns = self._online.setdefault(peer, set())
        if conn not in conns and conn.is_open:
            first = not conns
            conns.add(conn)
            static = conn.session.remote_static
            if static is not None and self.node.db is not None:
                # A session that began before we were contacts (the one that made us
                # contacts) left no key behind; mail to this contact needs it.
                self.spawn(self.db_run(self.node.db.remember_peer, peer, static, None,
                                       time.time()))
            conn.closed.add_done_callback(lambda _: self._session_gone(peer, conn))
            if first:
                self.emit("presence.changed", address=address_of(peer), online=True,
                          last_seen=time.time())

    def _session_gone(self, peer: bytes, conn: Connection) -> None:
        conns = self._online.get(peer)
        if conns is None:
            return
        conns.discard(conn)
        if not conns:
            del self._online[peer]
            if not self.stopping:
                online = self.node.presence.state_of(peer) != "offline"  # at a broker
                self.emit("presence.changed", address=PublicIdentity(peer).address,
                          online=online, last_seen=time.time())

    def is_online(self, peer: bytes) -> bool:
        return self.node.session_with(peer) is not None

    # -------------------------------------------------------------- sending
    def _stamp(self, clock: _Clock) -> tuple[int, int]:
        seq = clock.next_seq
        clock.next_seq += 1
        sent_at = wire.next_sent_at(now_ms(), clock.newest_at)
        clock.newest_at = sent_at
        return seq, sent_at

    async def _load_clock(self, conversation: bytes) -> _Clock:
        loading = self._clock_loads.get(conversation)
        if loading is not None:
            return await asyncio.shield(loading)
        loading = self._clock_loads[conversation] = (
            asyncio.get_running_loop().create_future())
        try:
            seq, newest = await self.db_run(self.store.clock, conversation)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                loading.cancel()
            else:
                loading.set_exception(exc)
                loading.exception()  # retrieved: the waiters, if any, raise it
            raise
        finally:
            del self._clock_loads[conversation]
        clock = self._clocks[conversation] = _Clock(seq, newest)
        loading.set_result(clock)
        return clock

    def _new_id(self, sent_at: int) -> bytes:
        # Random bytes fetched in bulk: one system call per 256 messages, not one each.
        if not self._ids:
            size = wire.ID_RANDOM
            pool = os.urandom(size * 256)
            self._ids = [pool[i : i + size] for i in range(0, len(pool), size)]
        return wire.message_id(sent_at, self._ids.pop())

    def _seen(self, conversation: bytes, order_at: int) -> None:
        clock = self._clocks.get(conversation)
        if clock is not None and order_at > clock.newest_at:
            clock.newest_at = order_at

    async def send(self, conversation: bytes, text: str, *, reply_to: bytes = b"",
                   attachments: tuple[bytes, ...] = ()) -> StoredMessage:
        """Store our message and start its delivery; returns once it is stored here."""
        wire.check_text(text)
        if len(conversation) == wire.KEY_LEN:
            if self.node.standing(conversation) != "contact":
                raise ChatError("you can write only to your contacts")
            recipients = [conversation]
            room_id = None
        else:
            room = self.rooms.get(conversation)
            if room is None or room.status != "active":
                raise ChatError("you are not a member of this room")
            recipients = sorted(m for m in room.state.members
                                if m != self.me and self.node.standing(m) == "contact")
            room_id = conversation
        clock = self._clocks.get(conversation) or await self._load_clock(conversation)
        seq, sent_at = self._stamp(clock)
        msg = Message(self._new_id(sent_at), self.me, conversation, seq, sent_at, text,
                      reply_to, tuple(attachments))
        if room_id is not None:
            assert self.node.identity is not None
            msg = wire.sign_message(self.node.identity, msg)
        wire.check_message(msg)
        data = wire.encode(msg)
        # The frame leaves while the transaction runs (the courier records the answer
        # only once it is stored); we return once it is stored here.
        ready = self._batcher.submit(msg, [(peer, data) for peer in recipients]
                                     if room_id is not None else [(conversation, data)])
        for peer in recipients:
            self.courier(peer).push((OutItem(peer, msg.id, data, room_id, False),), ready)
        self._batcher.start()
        await ready
        stored = StoredMessage(msg.id, conversation, self.me, self.node.display_name, seq,
                               sent_at, sent_at, sent_at, text, reply_to or None,
                               msg.attachments, True, "pending" if recipients else "sent", None,
                               msg.signature or None)
        if self.watched():
            self.emit("chat.message", message=self.describe(stored))
        return stored

    def _queue_frames(self, items: list[tuple[bytes, Request, bytes | None]]) -> None:
        """Receipts, room updates, leaves: into the outbox, then off to the couriers."""
        if not items:
            return
        rows = [(peer, wire.ref(frame), room, wire.encode(frame)) for peer, frame, room in items]
        self.spawn(self._store_and_push(rows))

    async def _store_and_push(self, rows: list[tuple[bytes, bytes, bytes | None, bytes]]
                              ) -> None:
        await self.db_run(self.store.queue, rows, now_ms())
        for peer, ref, room, data in rows:
            self.courier(peer).push([OutItem(peer, ref, data, room, False)])

    async def mark_read(self, conversation: bytes) -> list[bytes]:
        """Mark a conversation read here; tell the senders (read receipts)."""
        by_sender = await self.db_run(self.store.mark_read, conversation)
        frames: list[tuple[bytes, Request, bytes | None]] = []
        room = conversation if len(conversation) == wire.ID_LEN else None
        ids: list[bytes] = []
        for sender, mids in by_sender.items():
            ids.extend(mids)
            if self.node.standing(sender) != "contact":
                continue
            for i in range(0, len(mids), wire.MAX_RECEIPT_IDS):
                frames.append((sender, Receipt(os.urandom(wire.ID_LEN), room or self.me,
                                               "read", tuple(mids[i : i + wire.MAX_RECEIPT_IDS])),
                               room))
        self._queue_frames(frames)
        if ids:
            self.emit("chat.read", conversation=conversation.hex(), ids=[i.hex() for i in ids],
                      by=self.node.public.address)
        return ids

    # ------------------------------------------------------------ receiving
    async def _serve(self, remote: PublicIdentity, stream: ChannelStream) -> None:
        """A peer's chat channel: its requests, answered in order, a batch per read."""
        splitter = wire.FrameSplitter(wire.MAX_FRAME)
        while chunk := await stream.read():
            batch: list[Request] = []
            for data in splitter.feed(chunk):
                frame = wire.decode(data)
                if isinstance(frame, Ack | SyncResponse):
                    raise MessageError(f"a {type(frame).__name__} where a request was due")
                batch.append(frame)
            if batch:
                replies = await self.receive(remote, batch, "direct")
                if self.watched():
                    # One loop turn for the event streams to write first: someone is
                    # looking at them, while the answer only settles the sender's outbox.
                    await asyncio.sleep(0)
                await stream.write(b"".join(encode_message(wire.encode(r)) for r in replies))
        stream.end()

    async def _on_mail(self, sender: PublicIdentity, payload: bytes) -> None:
        """A frame from a broker's mailbox; the mail layer checked who sealed it."""
        try:
            frame = wire.decode(payload)
        except MessageError as exc:
            log.info("chat mail from %s dropped: %s", sender.short, exc)
            return
        if isinstance(frame, Ack | SyncResponse):
            log.info("chat mail from %s dropped: a %s by mail", sender.short,
                     type(frame).__name__)
            return
        await self.receive(sender, [frame], "mail")

    async def receive(self, sender: PublicIdentity, frames: list[Request], via: Via
                      ) -> list[Frame]:
        """Everything that arrives goes through here; one answer per frame, in order.

        ``sender`` is the authenticated identity the frames came from. Frames from a
        non-contact are dropped. Raises `MessageError` for frames that are not requests.
        """
        if self.node.standing(sender.key) != "contact":
            log.info("chat: %d frame(s) from non-contact %s dropped", len(frames), sender.short)
            return [Ack(wire.ref(f), "refused", "you are not a contact of this node")
                    for f in frames]
        now = now_ms()
        replies: list[Frame | None] = [None] * len(frames)
        to_store: list[tuple[int, Message, bytes]] = []
        for i, frame in enumerate(frames):
            match frame:
                case Message():
                    try:
                        conversation = self._check_incoming(sender, frame, via)
                    except ChatRefused as exc:
                        log.info("chat: message %s from %s refused: %s", frame.id.hex(),
                                 sender.short, exc)
                        replies[i] = Ack(frame.id, "refused", str(exc)[: wire.MAX_REASON])
                    else:
                        to_store.append((i, frame, conversation))
                case Receipt():
                    replies[i] = await self._on_receipt(sender, frame, now)
                case RoomUpdate():
                    replies[i] = await self._on_room_update(sender, frame)
                case Leave():
                    replies[i] = await self._on_leave(sender, frame)
                case SyncRequest():
                    replies[i] = await self._answer_sync(sender, frame)
                case _:
                    raise MessageError(f"{type(frame).__name__} is not a request")
        if to_store:
            new: list[StoredMessage] = await self.db_short(
                len(to_store), self.store.store_incoming,
                [(m, conv) for _, m, conv in to_store], now)
            if new:
                self.stored()
            for i, msg, _ in to_store:
                replies[i] = Ack(msg.id, "stored")
            receipts: dict[tuple[bytes, bytes], list[bytes]] = {}
            watched = self.watched()
            for m in new:
                self._seen(m.conversation, m.order_at)
                if watched:
                    self.emit("chat.message", message=self.describe(m))
                if via != "direct" or m.sender != sender.key:
                    # No Ack reaches the author this way: a receipt tells it instead.
                    receipts.setdefault((m.sender, m.conversation), []).append(m.id)
            self._queue_frames([
                (author, Receipt(os.urandom(wire.ID_LEN),
                                 conv if len(conv) == wire.ID_LEN else self.me, "delivered",
                                 tuple(ids[: wire.MAX_RECEIPT_IDS])),
                 conv if len(conv) == wire.ID_LEN else None)
                for (author, conv), ids in receipts.items()
                if self.node.standing(author) == "contact"])
        return [r for r in replies if r is not None]

    def _check_incoming(self, sender: PublicIdentity, msg: Message, via: Via) -> bytes:
        """The conversation ``msg`` belongs to; `ChatRefused` if it must not be taken."""
        wire.check_message(msg)
        if msg.sender == self.me:
            raise ChatRefused("this node wrote that message itself")
        if not msg.is_room:
            if msg.sender != sender.key:
                raise ChatRefused("the message names another sender than the one who sent it")
            if msg.to != self.me:
                raise ChatRefused("this message is addressed to someone else")
            return sender.key
        room = self.rooms.get(msg.to)
        if room is None or room.status != "active":
            raise ChatRefused("this node is not in that room")
        if sender.key not in room.state.members:
            raise ChatRefused("you are not a member of this room")
        if msg.sender not in room.state.members:
            raise ChatRefused("the author is not a member of this room")
        if via != "sync" and msg.sender != sender.key:
            raise ChatRefused("the message names another sender than the one who sent it")
        if not wire.message_signature_ok(msg):
            raise ChatRefused("the message's signature does not verify")
        return msg.to

    async def _on_receipt(self, sender: PublicIdentity, receipt: Receipt, now: int) -> Ack:
        if len(receipt.messages) > wire.MAX_RECEIPT_IDS:
            return Ack(receipt.id, "refused", "too many ids in one receipt")
        changed: list[bytes] = await self.db_short(len(receipt.messages),
                                                   self.store.apply_receipt, sender.key,
                                                   receipt, now)
        if changed:
            kind = "chat.delivered" if receipt.state == "delivered" else "chat.read"
            conversation = (receipt.conversation if len(receipt.conversation) == wire.ID_LEN
                            else sender.key)
            if kind == "chat.delivered":
                for mid in changed:
                    self.emit(kind, id=mid.hex(), conversation=conversation.hex(),
                              by=sender.address)
            else:
                self.emit(kind, ids=[m.hex() for m in changed],
                          conversation=conversation.hex(), by=sender.address)
        return Ack(receipt.id, "stored")

    # ---------------------------------------------------------------- rooms
    def _room_status(self, state: RoomState, before: Room | None) -> str:
        if self.me in state.members:
            return "active"
        return "left" if before is not None and before.status == "left" else "removed"

    async def _save_room(self, state: RoomState, applied: list[RoomUpdate]) -> None:
        before = self.rooms.get(state.room)
        status = self._room_status(state, before)
        await self.db_run(self.store.save_room, state, applied, status, time.time())
        self.rooms[state.room] = Room(state, status)
        self.emit("room.changed", room=self.describe_room(self.rooms[state.room]))

    async def _on_room_update(self, sender: PublicIdentity, update: RoomUpdate) -> Ack:
        room = self.rooms.get(update.room)
        current = room.state if room is not None else None
        have = current.version if current is not None else 0
        ref = wire.ref(update)
        if update.version <= have:
            return Ack(ref, "stored")
        if update.version > have + 1:
            # We missed part of the chain: the one who sent this has it.
            self.spawn(self.sync(sender.key, update.room))
            return Ack(ref, "stored")
        if current is None and self.me not in update.members:
            return Ack(ref, "refused", "this node is not a member of that room")
        try:
            state = wire.apply_update(current, update)
        except ChatRefused as exc:
            log.info("chat: room update from %s ignored: %s", sender.short, exc)
            return Ack(ref, "refused", str(exc)[: wire.MAX_REASON])
        await self._save_room(state, [update])
        if self.rooms[state.room].status == "active" and current is None:
            for peer in state.members - {self.me}:
                if self.node.session_with(peer) is not None:
                    self.spawn(self.sync(peer, state.room))
        return Ack(ref, "stored")

    async def _on_leave(self, sender: PublicIdentity, leave: Leave) -> Ack:
        room = self.rooms.get(leave.room)
        if room is None or self.me not in room.state.admins:
            return Ack(leave.id, "refused", "this node is not an admin of that room")
        if sender.key in room.state.members:
            await self.change_members(leave.room, remove=[sender.key])
        return Ack(leave.id, "stored")

    async def create_room(self, name: str, members: Iterable[bytes]) -> Room:
        name = clean_name(name, wire.MAX_ROOM_NAME)
        if not name:
            raise ChatError(f"a room name is 1 to {wire.MAX_ROOM_NAME} printable characters")
        others = set(members) - {self.me}
        for m in others:
            if self.node.standing(m) != "contact":
                raise ChatError("room members must be your contacts")
        assert self.node.identity is not None
        update = wire.make_update(self.node.identity, os.urandom(wire.ID_LEN), 1, name,
                                  [self.me], others)
        state = wire.apply_update(None, update)
        await self._save_room(state, [update])
        self._queue_frames([(peer, update, None) for peer in sorted(others)])
        return self.rooms[state.room]

    async def change_members(self, room_id: bytes, *, add: Iterable[bytes] = (),
                             remove: Iterable[bytes] = ()) -> Room:
        """A new signed version of the room's membership, sent to old and new members."""
        room = self.rooms.get(room_id)
        if room is None or room.status != "active":
            raise ChatError("you are not a member of this room")
        state = room.state
        if self.me not in state.admins:
            raise ChatError("only the room's admins can add or remove members")
        add_set, remove_set = set(add) - state.members, set(remove) & state.members
        for m in add_set:
            if self.node.standing(m) != "contact":
                raise ChatError("new members must be your contacts")
        members = (state.members | add_set) - remove_set
        admins = set(state.admins - remove_set)
        if not admins and members:
            admins = {min(members)}  # the room keeps an admin
        if not members:
            await self.db_run(self.store.set_room_status, room_id, "left")
            self.rooms[room_id] = Room(state, "left")
            return self.rooms[room_id]
        assert self.node.identity is not None
        update = wire.make_update(self.node.identity, room_id, state.version + 1, state.name,
                                  admins, members)
        new_state = wire.apply_update(state, update)
        await self._save_room(new_state, [update])
        frames: list[tuple[bytes, Request, bytes | None]] = []
        chain: list[RoomUpdate] = []
        if add_set:
            chain = await self.db_run(self.store.room_updates, room_id, 0)
        for peer in sorted((state.members | members) - {self.me}):
            for u in (chain if peer in add_set else [update]):
                frames.append((peer, u, None))
        self._queue_frames(frames)
        return self.rooms[room_id]

    async def leave_room(self, room_id: bytes) -> Room:
        room = self.rooms.get(room_id)
        if room is None or room.status != "active":
            raise ChatError("you are not a member of this room")
        if self.me in room.state.admins:
            return await self.change_members(room_id, remove=[self.me])
        await self.db_run(self.store.set_room_status, room_id, "left")
        self.rooms[room_id] = Room(room.state, "left")
        self._queue_frames([(admin, Leave(os.urandom(wire.ID_LEN), room_id), None)
                            for admin in sorted(room.state.admins)])
        self.emit("room.changed", room=self.describe_room(self.rooms[room_id]))
        return self.rooms[room_id]

    # --------------------------------------------------------- history sync
    async def _answer_sync(self, sender: PublicIdentity, request: SyncRequest) -> SyncResponse:
        room = self.rooms.get(request.room)
        if room is None or len(request.have) > wire.MAX_SYNC_SENDERS:
            return SyncResponse(request.id, (), ())
        updates: list[RoomUpdate] = await self.db_run(self.store.room_updates, request.room,
                                                      max(0, request.version))
        if sender.key not in room.state.members:
            # A former member learns that it was removed, and nothing else.
            was_member = any(sender.key in u.members for u in
                             await self.db_run(self.store.room_updates, request.room, 0))
            return SyncResponse(request.id, tuple(updates) if was_member else (), ())
        messages, more = await self.db_run(self.store.missing, request.room,
                                           dict(request.have), wire.MAX_SYNC_MESSAGES)
        return SyncResponse(request.id, tuple(updates), tuple(messages), more)

    async def sync(self, peer: bytes, room_id: bytes) -> int:
        """Fetch from ``peer`` what we lack of a room; returns how many messages were new."""
        key = (peer, room_id)
        if key in self._syncing:
            return 0
        self._syncing.add(key)
        total = 0
        try:
            for _ in range(MAX_SYNC_ROUNDS):
                room = self.rooms.get(room_id)
                version = room.state.version if room is not None else 0
                have = await self.db_run(self.store.have, room_id)
                request = SyncRequest(os.urandom(wire.ID_LEN), room_id, version, tuple(have))
                link = await self.link(peer)
                fut = await link.send([(request.id, wire.encode(request))])
                async with asyncio.timeout(SYNC_TIMEOUT):
                    answers = await fut
                if not answers or not isinstance(answers[0], SyncResponse):
                    return total
                answer = answers[0]
                if answer.updates:
                    state, applied = wire.apply_chain(room.state if room else None,
                                                      answer.updates)
                    if applied and state is not None and (
                            room is not None or self.me in state.members):
                        await self._save_room(state, applied)
                if not answer.messages:
                    return total
                before = len(answer.messages)
                replies = await self.receive(PublicIdentity(peer), list(answer.messages), "sync")
                stored = sum(1 for r in replies if isinstance(r, Ack) and r.status == "stored")
                total += stored
                if not answer.more or stored == 0 or before == 0:
                    return total
            return total
        except (SidedoorError, TimeoutError, OSError) as exc:
            log.info("chat: history sync of a room with %s failed: %s",
                     PublicIdentity(peer).short, exc)
            return total
        finally:
            self._syncing.discard(key)

    # ---------------------------------------------------------- describing
    def describe(self, m: StoredMessage) -> dict[str, Any]:
        room = self.rooms.get(m.conversation) if m.kind == "room" else None
        return {
            "id": m.id.hex(),
            "conversation": m.conversation.hex(),
            "kind": m.kind,
            "peer": address_of(m.conversation) if m.kind == "direct" else None,
            "room": room.state.name if room is not None else None,
            "sender": address_of(m.sender),
            "sender_name": (self.node.display_name if m.sender == self.me
                            else m.sender_name or PublicIdentity(m.sender).short),
            "mine": m.mine,
            "seq": m.seq,
            "text": m.text,
            "sent_at": m.sent_at,
            "received_at": m.received_at,
            "order_at": m.order_at,
            "state": m.state,
            "error": m.error,
            "reply_to": m.reply_to.hex() if m.reply_to else None,
            "attachments": [a.hex() for a in m.attachments],
        }

    def describe_room(self, room: Room) -> dict[str, Any]:
        s = room.state
        return {
            "id": s.room.hex(), "name": s.name, "version": s.version, "status": room.status,
            "admin": self.me in s.admins,
            "admins": sorted(PublicIdentity(a).address for a in s.admins),
            "members": sorted(PublicIdentity(m).address for m in s.members),
        }
