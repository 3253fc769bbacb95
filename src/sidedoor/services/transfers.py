"""File transfers between contacts: offer, accept, pull, verify, resume.

The sender offers a manifest (`proto.transfer`); the receiver's user accepts it (or
the sender is on the receiver's auto-accept list), and the receiver pulls the chunks
it is missing with a window of requests in flight (`proto.transfer_receiver`),
verifies each one, writes it into a hidden partial file in the destination
(`services.file_writer`), and records it. Everything either side needs to go on
after a restart is in the database, so a transfer resumes from what is verified as
soon as both nodes are reachable again: at start-up, when a session with the peer
opens (`Node.add_session_listener`), and on a backoff timer in between.

The asyncio code here is glue: protocol decisions are the receiver machine's, disk
work runs on one worker thread per transfer, SQL on the database thread.

Events (``node.events``): ``transfer.offered`` (a new transfer, either direction),
``transfer.updated`` (its status changed), ``transfer.progress`` (at most
`PROGRESS_INTERVAL` apart per transfer), ``transfer.done``, ``transfer.failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import platformdirs

from sidedoor.errors import (
    BadChunk,
    ConnectError,
    ContactError,
    DiskFull,
    MessageError,
    PeerTimeout,
    ProtocolError,
    SidedoorError,
    TransferError,
)
from sidedoor.identity import PublicIdentity
from sidedoor.names import clean_name
from sidedoor.net.connection import ChannelClosedError, ChannelStream
from sidedoor.proto import transfer as wire
from sidedoor.proto.framing import encode_message
from sidedoor.proto.transfer_receiver import Receiver
from sidedoor.services.file_hashing import Offered, build_manifest
from sidedoor.services.file_reader import FilesRun, SourceFiles
from sidedoor.services.file_writer import FileDamaged, IncomingFiles
from sidedoor.services.transfer_store import FINISHED, TransferRecord, TransferStore

if TYPE_CHECKING:
    from sidedoor.node import Node, PeerSession

log = logging.getLogger(__name__)
T = TypeVar("T")

PIECE = 1 << 20  # disk reads and writes, and hand-offs to the worker thread, are this big
SEND_BATCH = 64  # most requests read in one trip to the worker thread
READ_AHEAD = 8  # batches read ahead of the network: a busy machine wakes threads late
SMALL_PIECE = 64 << 10  # smaller pieces are joined with their neighbours into one write
SMALL_BATCH = 64  # whole small files handed to the receiver's worker thread at once
PROGRESS_INTERVAL = 0.25
FLUSH_INTERVAL = 0.25
REACH_TIMEOUT = 10.0
RETRY_MAX = 30.0
MAX_QUEUED_REQUESTS = 4096
IDLE_PULL_TIMEOUT = 3600.0  # a receiver may wait this long between requests (a paused UI)
FREE_SPACE_MARGIN = 16 << 20
# What one contact may leave waiting for an answer here: a peer that floods offers is
# told no before its manifests fill the database.
MAX_WAITING_OFFERS = 64
# Manifests (and source paths) of this many transfers are kept decoded in memory.
BULK_CACHE = 4
MAX_WAITING_OFFER_BYTES = 256 << 20
SETTING_DOWNLOADS = "downloads"
SETTING_AUTO_ACCEPT = "auto-accept"
SETTING_FSYNC = "fsync"  # "on": each received file is on disk before it gets its name
SETTING_DIRECT_WRITES = "direct-writes"  # "off": large files too through the page cache


def default_downloads() -> Path:
    return Path(platformdirs.user_downloads_dir()) / "sidedoor"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} EB"


class RateMeter:
    """Bytes per second over the last few seconds."""

    def __init__(self, span: float = 3.0) -> None:
        self.span = span
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, total: int) -> None:
        self._samples.append((now, total))
        while len(self._samples) > 2 and self._samples[0][0] < now - self.span:
            self._samples.popleft()

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        if time.monotonic() - t1 > self.span:
            return 0.0
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


@dataclass
class Live:
    """What the node is doing with a transfer right now (not stored)."""

    activity: str = ""
    done_bytes: int | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None
    meter: RateMeter = field(default_factory=RateMeter)
    last_event: float = 0.0


class _Progress:
    """The receiver's verified chunks, finished files and counters, saved in batches."""

    def __init__(self, bytes_received: int) -> None:
        self.chunks: list[tuple[int, int]] = []
        self.files: list[tuple[int, str]] = []
        self.bytes_received = bytes_received
        self.last_flush = time.monotonic()


class Transfers:
    # Seconds a sender may stay silent in the middle of the data before it is given up
    # on (tests lower it).
    stall_timeout = 30.0

    def __init__(self, node: Node) -> None:
        self.node = node
        self._store: TransferStore | None = None
        self._workers: dict[bytes, asyncio.Task[None]] = {}
        self._notices: dict[bytes, asyncio.Task[None]] = {}
        self._serving: dict[bytes, ChannelStream] = {}
        self._live: dict[bytes, Live] = {}
        self._tops: dict[bytes, list[str]] = {}
        self._peer_up: dict[bytes, asyncio.Event] = {}
        # The decoded manifest and the source paths of recent transfers: each step of a
        # transfer (offer, accept, pull, serve) would otherwise read megabytes back from
        # the database and decode them again.
        self._bulk: dict[bytes, tuple[wire.Manifest, list[str] | None]] = {}
        self._closing = False

    def register(self) -> None:
        self.node.add_channel_handler(wire.KIND_OFFER, self._on_offer)
        self.node.add_channel_handler(wire.KIND_PULL, self._on_pull)
        self.node.add_channel_handler(wire.KIND_NOTICE, self._on_notice)
        self.node.add_session_listener(self._on_session)

    @property
    def store(self) -> TransferStore:
        assert self._store is not None, "the node has not started"
        return self._store

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        assert self.node.db is not None
        return await self.node.db.run(fn, *args)

    def _keep_bulk(self, record: TransferRecord) -> None:
        self._bulk.pop(record.id, None)
        self._bulk[record.id] = (record.manifest(), record.sources)
        while len(self._bulk) > BULK_CACHE:
            del self._bulk[next(iter(self._bulk))]

    async def _load(self, tid: bytes) -> TransferRecord | None:
        """A transfer with its manifest and sources, from memory when they are there."""
        bulk = self._bulk.get(tid)
        record = await self._db(self.store.get, tid, bulk is not None)
        if record is not None and bulk is not None:
            record.decoded, record.sources = bulk
        return record

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Pick up where the last run stopped: deliver, resume, tell."""
        assert self.node.db is not None
        self._store = TransferStore(self.node.db)
        for record in await self._db(self.store.all):
            self._resume(record)

    def _resume(self, record: TransferRecord) -> None:
        if record.notice:
            self._spawn_notice(record.id)
        if record.direction == "out" and record.status in ("queued", "offered", "sending"):
            # A re-offer is idempotent: it delivers a queued offer, learns the answer given
            # while we were away, and opens the session that lets the receiver resume.
            self._spawn_worker(record.id, self._deliver_offer(record.id))
        elif record.direction == "in" and record.status == "receiving":
            self._spawn_worker(record.id, self._receive(record.id))

    async def aclose(self) -> None:
        self._closing = True
        tasks = [*self._workers.values(), *self._notices.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    def _spawn_worker(self, tid: bytes, coro: Coroutine[Any, Any, None]) -> None:
        old = self._workers.get(tid)
        if old is not None and not old.done():
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._workers[tid] = task
        task.add_done_callback(functools.partial(self._worker_done, tid))

    def _worker_done(self, tid: bytes, task: asyncio.Task[None]) -> None:
        if self._workers.get(tid) is task:
            del self._workers[tid]
        if not task.cancelled() and task.exception() is not None:
            log.error("transfer %s: worker failed", tid.hex()[:8], exc_info=task.exception())

    def _spawn_notice(self, tid: bytes) -> None:
        old = self._notices.get(tid)
        if old is not None and not old.done():
            return
        task = asyncio.get_running_loop().create_task(self._deliver_notice(tid))
        self._notices[tid] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._notices.get(tid) is t:
                del self._notices[tid]
            if not t.cancelled() and t.exception() is not None:
                log.error("transfer %s: notice failed", tid.hex()[:8], exc_info=t.exception())

        task.add_done_callback(done)

    async def _stop_worker(self, tid: bytes) -> None:
        task = self._workers.get(tid)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    # ----------------------------------------------------- waiting for peers
    def _on_session(self, session: PeerSession) -> None:
        event = self._peer_up.pop(session.remote.key, None)
        if event is not None:
            event.set()

    async def _wait_for_peer(self, peer: bytes, attempt: int) -> None:
        """Until a session with ``peer`` opens, or a backoff delay passes."""
        event = self._peer_up.setdefault(peer, asyncio.Event())
        delay = min(RETRY_MAX, 0.5 * 2 ** min(attempt, 8))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), delay)

    def _peer_name(self, peer: bytes) -> str:
        return PublicIdentity(peer).short + "…"

    async def _contact_name(self, peer: bytes) -> str:
        assert self.node.contacts is not None
        contact = await self._db(self.node.contacts.get, peer)
        return contact.petname if contact is not None else self._peer_name(peer)

    # ----------------------------------------------------------- describing
    def live(self, tid: bytes) -> Live:
        live = self._live.get(tid)
        if live is None:
            live = self._live[tid] = Live()
        return live

    def describe(self, record: TransferRecord, names: dict[bytes, str] | None = None,
                 manifest: wire.Manifest | None = None) -> dict[str, Any]:
        live = self._live.get(record.id, Live())
        sent = live.bytes_sent if live.bytes_sent is not None else record.bytes_sent
        received = (live.bytes_received if live.bytes_received is not None
                    else record.bytes_received)
        if record.status == "done":
            done = record.total_bytes
        elif live.done_bytes is not None:
            done = live.done_bytes
        elif record.direction == "out":
            done = min(record.bytes_sent, record.total_bytes)
        else:
            done = record.verified_bytes
        running = record.status in ("sending", "receiving") and live.activity == "transferring"
        speed = live.meter.rate() if running else 0.0
        left = max(0, record.total_bytes - done)
        tops = self._tops.get(record.id)
        if tops is None:
            # Decoding a manifest of many files takes milliseconds: once per transfer.
            manifest = manifest or record.manifest()
            tops = list(dict.fromkeys(f.path.split("/")[0] for f in manifest.files))
            tops += [d.path for d in manifest.dirs if "/" not in d.path and d.path not in tops]
            self._tops[record.id] = tops = tops[:20]
        return {
            "id": record.hex,
            "short": record.hex[:8],
            "direction": record.direction,
            "peer": PublicIdentity(record.peer).address,
            "peer_name": (names or {}).get(record.peer, self._peer_name(record.peer)),
            "status": record.status,
            "activity": live.activity if record.active else "",
            "note": record.note,
            "names": tops,
            "files": record.file_count,
            "total_bytes": record.total_bytes,
            "done_bytes": done,
            "bytes_sent": sent,
            "bytes_received": received,
            "speed": speed,
            "eta": (left / speed) if speed > 0 else None,
            "dest": record.dest,
            "roots": record.roots,
            "error": record.error,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
        }

    async def all(self) -> list[dict[str, Any]]:
        assert self.node.contacts is not None
        records = await self._db(self.store.all)
        names = {c.identity: c.petname for c in await self._db(self.node.contacts.all)}
        return [self.describe(r, names) for r in records]

    async def get(self, query: str, light: bool = False) -> TransferRecord:
        """A transfer by its id or the start of it (as `transfers` shows it); ``light``:
        without its manifest and sources (`TransferStore.get`)."""
        query = query.strip().lower()
        if len(query) < 4 or any(c not in "0123456789abcdef" for c in query):
            raise TransferError(f"{query!r} is not a transfer id (see `sidedoor transfers`)")
        if len(query) == 2 * wire.TRANSFER_ID_LEN:
            found = await self._db(self.store.get, bytes.fromhex(query), light)
            if found is not None:
                return found
        matches = [tid for tid in await self._db(self.store.ids) if tid.hex().startswith(query)]
        if not matches:
            raise TransferError(f"no transfer {query}; `sidedoor transfers` lists them")
        if len(matches) > 1:
            raise TransferError(f"{query} matches several transfers; give more of the id")
        record = await self._db(self.store.get, matches[0], light)
        assert record is not None
        return record

    async def describe_one(self, query: str) -> dict[str, Any]:
        # Polled while a transfer runs: the manifest is read only until its names are known.
        record = await self.get(query, light=True)
        if record.id not in self._tops:
            record = await self.get(record.hex)
        return self.describe(record, {record.peer: await self._contact_name(record.peer)})

    async def _set_status(self, record: TransferRecord, status: str, **fields: Any) -> None:
        await self._db(functools.partial(self.store.update, record.id, status=status, **fields))
        record.status = status
        for name, value in fields.items():
            setattr(record, name, value)
        if status in FINISHED:
            self._bulk.pop(record.id, None)
        info = {"id": record.hex, "direction": record.direction, "status": status,
                "peer": PublicIdentity(record.peer).address}
        if status == "done":
            self.node.events.emit("transfer.done", **info)
        elif status == "failed":
            self.node.events.emit("transfer.failed", error=record.error, **info)
        else:
            self.node.events.emit("transfer.updated", error=record.error, **info)

    def _progress(self, record: TransferRecord, done: int, force: bool = False) -> None:
        live = self.live(record.id)
        now = time.monotonic()
        live.done_bytes = done
        live.meter.add(now, done)
        if force or now - live.last_event >= PROGRESS_INTERVAL:
            live.last_event = now
            self.node.events.emit(
                "transfer.progress", id=record.hex, direction=record.direction,
                done_bytes=done, total_bytes=record.total_bytes, speed=live.meter.rate())

    # -------------------------------------------------------------- sending
    async def send(self, paths: list[str], to: str, note: str = "") -> dict[str, Any]:
        """Offer ``paths`` to the contact ``to``; delivered now, or queued until it is online."""
        node = self.node
        assert node.contacts is not None
        if not paths:
            raise TransferError("name at least one file or folder to send")
        contact = await self._db(node.contacts.resolve, to)
        if contact.blocked:
            raise ContactError(f"{contact.petname} is blocked; unblock them first")
        offered: Offered = await asyncio.to_thread(
            build_manifest, [Path(p) for p in paths], node.db)
        manifest = offered.manifest
        if not manifest.files and not manifest.dirs:
            raise TransferError("nothing to send")
        now = time.time()
        record = TransferRecord(
            id=os.urandom(wire.TRANSFER_ID_LEN), direction="out", peer=contact.identity,
            status="queued", note=clean_name(note, wire.MAX_NOTE_LEN),
            manifest_bytes=wire.encode(manifest), total_bytes=manifest.total_size,
            file_count=len(manifest.files), sources=offered.sources, dest=None, roots={},
            bytes_sent=0, bytes_received=0, verified_bytes=0, error="", notice="",
            created_at=now, updated_at=now, decoded=manifest)
        if len(record.manifest_bytes) > wire.MAX_OFFER_BYTES - 4096:
            raise TransferError("too many files in one offer; send the folders separately")
        await self._db(self.store.add, record)
        self._keep_bulk(record)
        self.live(record.id).activity = "connecting"
        info = self.describe(record, {contact.identity: contact.petname}, manifest)
        info["skipped"] = offered.skipped
        node.events.emit("transfer.offered", **{k: info[k] for k in (
            "id", "direction", "peer", "peer_name", "names", "files", "total_bytes", "note")})
        self._spawn_worker(record.id, self._deliver_offer(record.id))
        return info

    async def _deliver_offer(self, tid: bytes) -> None:
        attempt = 0
        while not self._closing:
            record = await self._load(tid)
            if record is None or record.status not in ("queued", "offered", "sending"):
                return
            live = self.live(tid)
            try:
                conn = await self.node.reach(record.peer, timeout=REACH_TIMEOUT)
                stream = await conn.open_channel(wire.KIND_OFFER)
                offer = wire.Offer(tid, record.note, record.manifest())
                await stream.write_message(wire.encode(offer))
                raw = await stream.read_message(wire.MAX_CONTROL_MESSAGE, timeout=30)
                if raw is None:
                    raise ChannelClosedError("the receiver closed the offer without an answer")
                reply = wire.decode(wire.OfferReply, raw)
            except (ConnectError, ChannelClosedError, ProtocolError, TimeoutError) as exc:
                name = await self._contact_name(record.peer)
                live.activity = f"waiting for {name} to be online"
                log.info("transfer %s: offer not delivered (%s)", tid.hex()[:8], exc)
                await self._wait_for_peer(record.peer, attempt)
                attempt += 1
                continue
            record = await self._db(self.store.get, tid, True)
            if record is None:
                return
            reason = clean_name(reply.reason, wire.MAX_REASON_LEN)
            if reply.status == "declined" and record.status in ("queued", "offered"):
                await self._set_status(record, "declined", error=reason)
            elif reply.status == "waiting" and record.status == "queued":
                live.activity = "waiting for acceptance"
                await self._set_status(record, "offered")
            elif reply.status == "accepted" and record.status in ("queued", "offered"):
                live.activity = "accepted; waiting for the receiver to ask for data"
                await self._set_status(record, "sending")
            elif reply.status == "waiting":
                live.activity = "waiting for acceptance"
            return

    async def _on_pull(self, remote: PublicIdentity, stream: ChannelStream) -> None:
        meta = wire.decode(wire.PullMeta, stream.meta)
        record = await self._load(meta.transfer_id)
        if record is None or record.direction != "out" or record.peer != remote.key:
            await self._refuse_pull(stream, "no such transfer")
            return
        if record.status not in ("queued", "offered", "sending"):
            # (queued: an auto-accepting receiver pulls before its answer reaches us.)
            await self._refuse_pull(stream, f"the transfer is {record.status}")
            return
        tid = record.id
        old = self._serving.get(tid)
        if old is not None:
            old.reset("a newer request for the same transfer")
        self._serving[tid] = stream
        if record.status != "sending":
            await self._set_status(record, "sending")
        live = self.live(tid)
        live.activity = "transferring"
        executor = ThreadPoolExecutor(1, thread_name_prefix="sidedoor-send")
        assert record.sources is not None
        self._keep_bulk(record)
        source = SourceFiles(record.manifest(), record.sources)
        try:
            await self._serve(record, stream, source, executor, live)
        except TransferError as exc:
            # Our side cannot go on (a file changed or vanished): say why, and stop.
            with contextlib.suppress(SidedoorError):
                await stream.write_message(wire.encode(wire.Cancel(str(exc)[:200])))
                stream.end()
            await self._set_status(record, "failed", error=str(exc))
        except ProtocolError as exc:
            # The receiver broke the rules (asked for what the offer does not have).
            await self._set_status(record, "failed",
                                   error=f"the receiver misbehaved and was cut off: {exc}")
            raise
        finally:
            if self._serving.get(tid) is stream:
                del self._serving[tid]
            if live.activity == "transferring":
                live.activity = "waiting for the receiver"
            executor.submit(source.close)
            executor.shutdown(wait=False)
            sent = live.bytes_sent if live.bytes_sent is not None else record.bytes_sent
            await self._db(functools.partial(self.store.update, tid, bytes_sent=sent))

    @staticmethod
    async def _refuse_pull(stream: ChannelStream, reason: str) -> None:
        await stream.write_message(wire.encode(wire.Cancel(reason)))
        stream.end()

    async def _serve(self, record: TransferRecord, stream: ChannelStream, source: SourceFiles,
                     executor: ThreadPoolExecutor, live: Live) -> None:
        """Answer chunk requests until the receiver ends the channel."""
        manifest = source.manifest
        loop = asyncio.get_running_loop()
        requests: asyncio.Queue[wire.ChunkRequest | FilesRun | None] = asyncio.Queue()
        # (file, chunk, offset in chunk, length, chunk size) pieces, and runs of files.
        Item = tuple[int, int, int, int, int] | FilesRun
        Batch = tuple[list[Item], asyncio.Future[list[bytes | bytearray]]]
        batches: asyncio.Queue[Batch | None] = asyncio.Queue(READ_AHEAD)
        if live.bytes_sent is None:
            live.bytes_sent = record.bytes_sent
        last_save = time.monotonic()

        async def read_requests() -> None:
            reader = wire.PullReader(with_data=False)
            while True:
                try:
                    async with asyncio.timeout(IDLE_PULL_TIMEOUT):
                        data = await stream.read()
                except TimeoutError:
                    raise PeerTimeout("the receiver asked for nothing for "
                                      f"{IDLE_PULL_TIMEOUT:g} s") from None
                if not data:
                    if reader.mid_message:
                        raise ChannelClosedError("the receiver stopped in the middle of a "
                                                 "request")
                    requests.put_nowait(None)
                    return
                # One read carries many requests: they are judged and queued together.
                for message in reader.feed(data):
                    if isinstance(message, wire.ChunkRequest | wire.FilesRequest):
                        if isinstance(message, wire.ChunkRequest):
                            wire.check_request(manifest, message)
                            request: wire.ChunkRequest | FilesRun = message
                        else:
                            request = FilesRun(message.first, message.count,
                                               wire.check_files_request(manifest, message))
                        if requests.qsize() >= MAX_QUEUED_REQUESTS:
                            raise MessageError("the receiver asked for too many chunks at "
                                               "once")
                        requests.put_nowait(request)
                    elif isinstance(message, wire.Cancel):
                        requests.put_nowait(None)
                        return
                    else:
                        raise MessageError("the receiver sent file data on a pull channel")

        async def read_disk() -> None:
            # Pieces and runs of files, a batch at a time, read ahead of the writer so that
            # the disk and the network overlap.
            pending: deque[Item] = deque()
            while True:
                if not pending:
                    request = await requests.get()
                    if request is None:
                        await batches.put(None)
                        return
                    self._split(manifest, request, pending)
                while requests.qsize() and len(pending) < SEND_BATCH:
                    request = requests.get_nowait()
                    if request is None:
                        requests.put_nowait(None)  # seen again once pending is sent
                        break
                    self._split(manifest, request, pending)
                batch: list[Item] = []
                size = 0
                while pending and len(batch) < SEND_BATCH and (size < PIECE or not batch):
                    item = pending.popleft()
                    batch.append(item)
                    size += item.length if isinstance(item, FilesRun) else item[3]
                fut = loop.run_in_executor(executor, source.read_mixed, [
                    item if isinstance(item, FilesRun) else item[:4] for item in batch])
                await batches.put((batch, fut))

        async def write_out() -> None:
            nonlocal last_save
            while True:
                item = await batches.get()
                if item is None:
                    return
                batch, fut = item
                datas = await fut
                out: list[bytes | bytearray] = []
                for piece, data in zip(batch, datas, strict=True):
                    if isinstance(piece, FilesRun):
                        out.append(encode_message(wire.encode(
                            wire.FilesHeader(piece.first, piece.number, piece.length))))
                        length = piece.length
                    else:
                        file, chunk, offset, length, chunk_len = piece
                        if offset == 0:
                            out.append(encode_message(wire.encode(
                                wire.ChunkHeader(file, chunk, chunk_len))))
                    if length >= SMALL_PIECE:
                        await stream.write(b"".join(out))
                        await stream.write(data)  # large: no copy into a joined buffer
                        out = []
                    else:
                        out.append(data)
                    assert live.bytes_sent is not None
                    live.bytes_sent += length
                if out:
                    await stream.write(b"".join(out))
                now = time.monotonic()
                assert live.bytes_sent is not None
                self._progress(record, min(live.bytes_sent, record.total_bytes))
                if now - last_save > 1.0:
                    last_save = now
                    await self._db(functools.partial(
                        self.store.update, record.id, bytes_sent=live.bytes_sent))

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(read_requests())
                group.create_task(read_disk())
                group.create_task(write_out())
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None

    @staticmethod
    def _split(manifest: wire.Manifest, request: wire.ChunkRequest | FilesRun,
               into: deque[tuple[int, int, int, int, int] | FilesRun]) -> None:
        if isinstance(request, FilesRun):
            into.append(request)  # at most 1 MiB: read and sent whole
            return
        _, length = wire.chunk_span(manifest.files[request.file].size, request.chunk)
        for offset in range(0, length, PIECE):
            into.append((request.file, request.chunk, offset, min(PIECE, length - offset),
                         length))

    # ------------------------------------------------------------ receiving
    async def _on_offer(self, remote: PublicIdentity, stream: ChannelStream) -> None:
        raw = await stream.read_message(wire.MAX_OFFER_BYTES, timeout=60)
        if raw is None:
            return
        offer = wire.decode(wire.Offer, raw)
        if len(offer.transfer_id) != wire.TRANSFER_ID_LEN:
            raise MessageError("a transfer id of the wrong length")
        known = await self._db(self.store.get, offer.transfer_id, True)
        if known is not None:
            if known.peer != remote.key or known.direction != "in":
                await self._reply(stream, "declined", "that transfer id is taken")
            elif known.status == "offered":
                await self._reply(stream, "waiting")
            elif known.status in ("receiving", "done"):
                await self._reply(stream, "accepted")
            else:
                await self._reply(stream, "declined", known.error or known.status)
            return
        count, size = await self._db(self.store.waiting_from, remote.key)
        if count >= MAX_WAITING_OFFERS or size + len(raw) > MAX_WAITING_OFFER_BYTES:
            log.info("refused an offer from %s: %d offers already wait", remote.address, count)
            await self._reply(stream, "declined",
                              f"{count} of your offers are still waiting to be accepted; "
                              "send more once they are answered")
            return
        try:
            wire.check_manifest(offer.manifest)
        except ProtocolError as exc:
            log.info("refused an offer from %s: %s", remote.address, exc)
            await self._reply(stream, "declined", f"the offer is not acceptable: {exc}")
            return
        manifest = offer.manifest
        now = time.time()
        record = TransferRecord(
            id=offer.transfer_id, direction="in", peer=remote.key, status="offered",
            note=clean_name(offer.note, wire.MAX_NOTE_LEN), manifest_bytes=raw,
            total_bytes=manifest.total_size, file_count=len(manifest.files), sources=None,
            dest=None, roots={}, bytes_sent=0, bytes_received=0, verified_bytes=0, error="",
            notice="", created_at=now, updated_at=now, decoded=manifest)
        record.manifest_bytes = wire.encode(manifest)
        await self._db(self.store.add, record)
        self._keep_bulk(record)
        name = await self._contact_name(remote.key)
        info = self.describe(record, {remote.key: name}, manifest)
        self.node.events.emit("transfer.offered", **{k: info[k] for k in (
            "id", "direction", "peer", "peer_name", "names", "files", "total_bytes", "note")})
        if await self._auto_accepts(remote.key):
            try:
                await self.accept(record.hex)
            except SidedoorError as exc:
                log.info("transfer %s not accepted automatically: %s", record.hex[:8], exc)
                await self._db(functools.partial(self.store.update, record.id, error=str(exc)))
                await self._reply(stream, "waiting")
                return
            await self._reply(stream, "accepted")
            return
        self.live(record.id).activity = "waiting for you to accept"
        await self._reply(stream, "waiting")

    @staticmethod
    async def _reply(stream: ChannelStream, status: str, reason: str = "") -> None:
        await stream.write_message(wire.encode(wire.OfferReply(status, reason[:200])))
        stream.end()

    async def _auto_accepts(self, peer: bytes) -> bool:
        assert self.node.db is not None
        setting = await self._db(self.node.db.get_setting, SETTING_AUTO_ACCEPT, "")
        return PublicIdentity(peer).address in (setting or "").split(",")

    async def downloads(self) -> Path:
        assert self.node.db is not None
        setting = await self._db(self.node.db.get_setting, SETTING_DOWNLOADS)
        return Path(setting) if setting else default_downloads()

    async def accept(self, query: str, dest: str | None = None) -> dict[str, Any]:
        """Accept an offer into ``dest`` (default: the downloads folder) and start pulling."""
        record = await self.get(query, light=True)
        if record.direction != "in":
            raise TransferError("that transfer is one you are sending")
        if record.status != "offered":
            raise TransferError(f"that transfer is {record.status}, not waiting for you")
        folder = Path(dest) if dest else await self.downloads()
        folder = await asyncio.to_thread(self._prepare_destination, folder, record.total_bytes)
        self.live(record.id).activity = "connecting"
        await self._set_status(record, "receiving", dest=str(folder), error="")
        self._spawn_worker(record.id, self._receive(record.id))
        return await self.describe_one(record.hex)

    @staticmethod
    def _prepare_destination(folder: Path, needed: int) -> Path:
        folder = folder.expanduser().absolute()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(folder).free
        except OSError as exc:
            raise TransferError(f"cannot use {folder} for the files: {exc.strerror}") from exc
        if not folder.is_dir():
            raise TransferError(f"{folder} is not a folder")
        if needed + FREE_SPACE_MARGIN > free:
            raise DiskFull(f"not enough room in {folder}: the files need "
                           f"{human_bytes(needed)}, {human_bytes(free)} is free; free some "
                           "space or accept into another folder (--to DIR)")
        return folder

    async def decline(self, query: str) -> dict[str, Any]:
        record = await self.get(query)
        if record.direction != "in" or record.status != "offered":
            raise TransferError(f"only an offer waiting for you can be declined "
                                f"(this one is {record.status})")
        await self._set_status(record, "declined", notice="declined")
        self._spawn_notice(record.id)
        return await self.describe_one(record.hex)

    async def cancel(self, query: str) -> dict[str, Any]:
        record = await self.get(query)
        if record.status in FINISHED:
            raise TransferError(f"that transfer is already {record.status}")
        await self._stop_worker(record.id)
        serving = self._serving.pop(record.id, None)
        if serving is not None:
            serving.reset("cancelled")
        if record.direction == "in" and record.dest:
            await self._discard(record)
        told = "" if record.status == "queued" else "cancelled"
        await self._set_status(record, "cancelled", notice=told, error="cancelled by you")
        if told:
            self._spawn_notice(record.id)
        return await self.describe_one(record.hex)

    async def retry(self, query: str) -> dict[str, Any]:
        """Start a failed or cancelled transfer again (an outgoing one is offered anew)."""
        record = await self.get(query)
        if record.status not in ("failed", "cancelled", "declined"):
            raise TransferError(f"that transfer is {record.status}; only a failed, cancelled "
                                "or declined one can be retried")
        if record.direction == "out":
            # The files may have changed: a new offer with a new manifest.
            tops = self._top_sources(record)
            if not tops:
                raise TransferError("nothing to send again")
            return await self.send(tops, PublicIdentity(record.peer).address, record.note)
        if record.status == "declined":
            raise TransferError("you declined it; ask the sender to send it again")
        folder = Path(record.dest) if record.dest else await self.downloads()
        await asyncio.to_thread(self._prepare_destination, folder,
                                record.total_bytes - record.verified_bytes)
        await self._set_status(record, "receiving", error="", notice="")
        self._spawn_worker(record.id, self._receive(record.id))
        return await self.describe_one(record.hex)

    @staticmethod
    def _top_sources(record: TransferRecord) -> list[str]:
        """The paths the user named, recovered from the files' local paths."""
        assert record.sources is not None
        tops: dict[str, str] = {}
        for entry, source in zip(record.manifest().files, record.sources, strict=True):
            parts = entry.path.split("/")
            local = Path(source)
            for _ in parts[1:]:
                local = local.parent
            tops.setdefault(parts[0], str(local))
        return list(tops.values())

    async def _discard(self, record: TransferRecord) -> None:
        """Remove the partial files of an incoming transfer that will not complete."""
        assert record.dest is not None
        dest = record.dest

        def discard() -> None:
            try:
                files = IncomingFiles(Path(dest), record.id, record.manifest(), record.roots)
            except TransferError:
                return
            try:
                files.discard()
            finally:
                files.close()

        await asyncio.to_thread(discard)
        await self._db(self.store.forget_chunks, record.id)

    async def _receive(self, tid: bytes) -> None:
        """Pull an accepted transfer until every file is in place (the receiver's worker)."""
        record = await self._load(tid)
        if record is None or record.status != "receiving" or record.dest is None:
            return
        manifest = record.manifest()
        self._keep_bulk(record)
        live = self.live(tid)
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(1, thread_name_prefix="sidedoor-receive")

        def on_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
            return loop.run_in_executor(executor, functools.partial(fn, *args))

        progress = _Progress(record.bytes_received)
        writer: IncomingFiles | None = None
        try:
            assert self.node.db is not None
            durable = await self._db(self.node.db.get_setting, SETTING_FSYNC, "off") == "on"
            direct = await self._db(self.node.db.get_setting, SETTING_DIRECT_WRITES,
                                    "on") != "off"
            writer = await on_thread(IncomingFiles, Path(record.dest), tid, manifest,
                                     record.roots, durable, direct)
            roots = await on_thread(writer.claim_roots)
            if roots != record.roots:
                await self._db(functools.partial(self.store.update, tid, roots=roots))
                record.roots = roots
            await on_thread(writer.make_dirs)
            verified = await self._db(self.store.verified_chunks, tid)
            finished = await self._db(self.store.finished_files, tid)
            for f in finished:
                verified.update((f, c) for c in range(manifest.files[f].chunks))
            found, placed = await on_thread(self._recover, writer, manifest, verified,
                                            finished)
            verified |= found
            for f, path in placed.items():
                verified.update((f, c) for c in range(manifest.files[f].chunks))
                progress.files.append((f, path))
                finished[f] = path
            machine = Receiver(manifest, verified, small_runs=manifest.batches)
            unfinished = [f for f in machine.complete_files() if f not in finished]
            for f in unfinished:
                progress.files.append((f, await on_thread(writer.finish, f)))
            self._progress(record, machine.verified_bytes, force=True)
            attempt = 0
            while not machine.complete:
                try:
                    conn = await self.node.reach(record.peer, timeout=REACH_TIMEOUT)
                    stream = await conn.open_channel(
                        wire.KIND_PULL, wire.encode(wire.PullMeta(tid)))
                except (ConnectError, ChannelClosedError, ProtocolError) as exc:
                    live.activity = (f"waiting for {await self._contact_name(record.peer)} "
                                     "to be online")
                    log.info("transfer %s: sender not reachable (%s)", tid.hex()[:8], exc)
                    await self._wait_for_peer(record.peer, attempt)
                    attempt += 1
                    continue
                live.activity = "transferring"
                try:
                    await self._pull(record, stream, machine, writer, on_thread, progress)
                except (ChannelClosedError, ConnectError, PeerTimeout, TimeoutError) as exc:
                    stream.reset("giving up on this channel")
                    machine.on_disconnect()
                    await on_thread(writer.abort_chunks)
                    live.activity = "the sender went away; waiting to resume"
                    log.info("transfer %s: interrupted (%s)", tid.hex()[:8], exc)
                    await self._save(record, progress, machine)
                    await self._wait_for_peer(record.peer, attempt)
                    attempt += 1
                    continue
                except BaseException:
                    stream.reset("stopped")
                    raise
                stream.end()
            await on_thread(writer.finish_dirs)
            await self._save(record, progress, machine)
            live.activity = ""
            await self._set_status(record, "done", notice="done", verified_bytes=manifest
                                   .total_size)
            self._spawn_notice(tid)
        except (ProtocolError, TransferError) as exc:
            if isinstance(exc, BadChunk | MessageError):
                message = f"the sender sent bad data and was cut off: {exc}"
            else:
                message = str(exc)
            log.info("transfer %s failed: %s", tid.hex()[:8], message)
            if writer is not None:
                await on_thread(writer.discard)
            await self._db(self.store.forget_chunks, tid)
            live.activity = ""
            await self._set_status(record, "failed", error=message, notice="cancelled")
            self._spawn_notice(tid)
        finally:
            if writer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(on_thread(writer.close))
            executor.shutdown(wait=False)
            if record.status == "receiving":
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._save(record, progress, None))

    @staticmethod
    def _recover(writer: IncomingFiles, manifest: wire.Manifest,
                 verified: set[tuple[int, int]], finished: dict[int, str]
                 ) -> tuple[set[tuple[int, int]], dict[int, str]]:
        """What a restart finds on disk beyond the records: chunks in partial files that
        hash right, and whole files already renamed into place."""
        found: set[tuple[int, int]] = set()
        placed: dict[int, str] = {}
        partial, named = writer.leftovers(
            [f for f in range(len(manifest.files)) if f not in finished])
        for f in sorted(partial | named):
            entry = manifest.files[f]
            missing = [c for c in range(entry.chunks) if (f, c) not in verified]
            if len(missing) == entry.chunks and f in named and f not in partial:
                path = writer.placed(f)
                if path is not None:
                    placed[f] = path
                    continue
            if missing and f in partial:
                found.update((f, c) for c in writer.recover(f, missing))
        return found, placed

    async def _save(self, record: TransferRecord, progress: _Progress,
                    machine: Receiver | None) -> None:
        counters: dict[str, int] = {"bytes_received": progress.bytes_received}
        if machine is not None:
            counters["verified_bytes"] = machine.verified_bytes
            record.verified_bytes = machine.verified_bytes
        chunks, files = progress.chunks, progress.files
        progress.chunks, progress.files = [], []
        progress.last_flush = time.monotonic()
        await self._db(self.store.save_progress, record.id, chunks, files, counters)

    async def _pull(self, record: TransferRecord, stream: ChannelStream, machine: Receiver,
                    writer: IncomingFiles,
                    on_thread: Callable[..., asyncio.Future[Any]],
                    progress: _Progress) -> None:
        """One pull channel: request, read, hand to the writer, judge, until complete."""
        live = self.live(record.id)
        live.bytes_received = progress.bytes_received
        manifest = machine.manifest
        events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        stall = self.stall_timeout
        finishing = 0

        async def send_requests() -> None:
            wanted = machine.requests()
            if wanted:
                await stream.write(b"".join(encode_message(wire.encode(r)) for r in wanted))

        loop = asyncio.get_running_loop()
        last_data = loop.time()
        mid_chunk = False

        small: list[tuple[int, int, list[memoryview], bytes]] = []
        flush_due = False

        def flush_small() -> None:
            # Whole small files go to the worker thread together: one trip for many.
            nonlocal small, flush_due
            flush_due = False
            if small:
                items, small = small, []
                events.put_nowait(("files", items, on_thread(writer.write_files, items)))

        async def read_chunks() -> None:
            nonlocal last_data, mid_chunk
            reader = wire.PullReader(with_data=True)
            # The chunk being received: its header, size, bytes so far, where the
            # pieces not yet handed to the writer start, and those pieces.
            header: wire.ChunkHeader | None = None
            size = got = offset = pending = 0
            pieces: list[memoryview] = []
            # Or the run of whole files being received: its header and the files' sizes.
            run: wire.FilesHeader | None = None
            sizes: list[int] = []
            try:
                while True:
                    data = await stream.read()
                    if not data:
                        if reader.mid_message:
                            raise ChannelClosedError("the sender stopped in the middle of a "
                                                     "chunk")
                        raise ChannelClosedError("the sender ended the transfer channel")
                    last_data = loop.time()
                    # One read may hold many small files' headers and bytes.
                    for item in reader.feed(data):
                        if not isinstance(item, memoryview):
                            if isinstance(item, wire.Cancel):
                                reason = clean_name(item.reason, wire.MAX_REASON_LEN)
                                raise TransferError(
                                    f"the sender stopped the transfer: {reason}")
                            if isinstance(item, wire.FilesHeader):
                                sizes = machine.on_files_header(item)
                                run, header = item, None
                                size = item.size
                                got = 0
                                pieces = []
                                continue
                            if not isinstance(item, wire.ChunkHeader):
                                raise MessageError("the sender sent a chunk request")
                            size = machine.on_header(item)
                            header, run = item, None
                            got = offset = pending = 0
                            pieces = []
                            continue
                        if run is not None:
                            # A run (at most 1 MiB) goes to the writer whole, in one trip.
                            pieces.append(item)
                            got += len(item)
                            progress.bytes_received += len(item)
                            if got == size:
                                flush_small()
                                # Hashed here, not on the writer's thread: creating the
                                # files keeps that one busy, this one has room.
                                data = (pieces[0] if len(pieces) == 1
                                        else memoryview(b"".join(pieces)))
                                digests = wire.hash_files(data, sizes)
                                events.put_nowait(("run", run.first, on_thread(
                                    writer.write_run, run.first, sizes, data, digests)))
                                pieces = []
                            continue
                        assert header is not None  # the reader gives bytes after a header
                        pieces.append(item)
                        got += len(item)
                        pending += len(item)
                        progress.bytes_received += len(item)
                        if pending >= PIECE or got == size:
                            hand_over(header, pieces, offset, got == size)
                            offset += pending
                            pending = 0
                            pieces = []
                    mid_chunk = reader.mid_message
            except Exception as exc:
                events.put_nowait(("error", exc))

        def hand_over(message: wire.ChunkHeader, pieces: list[memoryview], offset: int,
                      last: bool) -> None:
            """Pieces of a chunk to the writer's thread, small whole files in batches."""
            nonlocal flush_due
            if last and machine.chunks_left(message.file) == 1:
                # Its file's last chunk: write, verify and rename in one trip.
                expected = manifest.files[message.file].hash_of(message.chunk)
                if offset == 0:
                    small.append((message.file, message.chunk, pieces, expected))
                    if len(small) >= SMALL_BATCH:
                        flush_small()
                    elif not flush_due:
                        # Runs when this reader next waits for data.
                        flush_due = True
                        loop.call_soon(flush_small)
                else:
                    flush_small()
                    fut = on_thread(writer.write_last, message.file, message.chunk, offset,
                                    pieces, expected)
                    events.put_nowait(("file", message.file, message.chunk, fut, expected))
            else:
                flush_small()
                fut = on_thread(writer.write_piece, message.file, message.chunk, offset,
                                pieces, last)
                events.put_nowait(("piece", message.file, message.chunk, fut, last))

        async def watchdog() -> None:
            # One timer for the whole channel, not one per read: a sender owing us data
            # (requests open, or a chunk begun) that sends nothing for `stall` is given up.
            while True:
                await asyncio.sleep(stall / 4)
                owed = mid_chunk or machine.awaiting_headers
                if owed and loop.time() - last_data > stall:
                    events.put_nowait(("error", PeerTimeout(
                        f"the sender sent nothing for {stall:g} s")))
                    return

        async def settle(file: int, chunk: int, expected: bytes,
                         result: tuple[bytes, str | None] | FileDamaged) -> None:
            """The outcome of a file's last chunk, written and finished in one trip."""
            if isinstance(result, FileDamaged):
                machine.on_digest(file, chunk, expected)
                log.warning("transfer %s: %s", record.hex[:8], result)
                machine.reopen_file(file)
                progress.chunks = [c for c in progress.chunks if c[0] != file]
                await self._db(self.store.forget_chunks, record.id, file)
                return
            digest, path = result
            machine.on_digest(file, chunk, digest)  # raises if it is wrong
            assert path is not None
            # A finished file's row stands for all its chunks (no row per chunk: one
            # insert per small file, not two).
            progress.files.append((file, path))

        def finished(file: int, fut: asyncio.Future[str]) -> None:
            events.put_nowait(("finished", file, fut))

        await send_requests()
        reader = loop.create_task(read_chunks())
        guard = loop.create_task(watchdog())
        try:
            while not machine.complete or finishing:
                item = await events.get()
                match item:
                    case ("error", exc):
                        raise exc
                    case ("piece", file, chunk, fut, last):
                        digest, landing = await fut
                        if not last:
                            continue
                        if landing is not None:
                            # Received once on the disk; the writer's thread goes on
                            # with the next chunks meanwhile.
                            await asyncio.wrap_future(landing)
                        if machine.on_digest(file, chunk, digest):
                            finishing += 1
                            done = on_thread(writer.finish, file)
                            done.add_done_callback(functools.partial(finished, file))
                        progress.chunks.append((file, chunk))
                    case ("file", file, chunk, fut, expected):
                        try:
                            await settle(file, chunk, expected, await fut)
                        except FileDamaged as exc:
                            await settle(file, chunk, expected, exc)
                    case ("files", items, fut):
                        for (file, chunk, _, expected), result in zip(
                                items, await fut, strict=True):
                            await settle(file, chunk, expected, result)
                    case ("run", first, fut):
                        for file, (digest, path) in enumerate(await fut, first):
                            machine.on_digest(file, 0, digest)  # raises if it is wrong
                            assert path is not None
                            progress.files.append((file, path))
                    case ("finished", file, fut):
                        finishing -= 1
                        try:
                            progress.files.append((file, fut.result()))
                        except FileDamaged as exc:
                            log.warning("transfer %s: %s", record.hex[:8], exc)
                            machine.reopen_file(file)
                            progress.chunks = [c for c in progress.chunks if c[0] != file]
                            await self._db(self.store.forget_chunks, record.id, file)
                if events.empty():
                    # Only when nothing else is ready: one write carries many requests.
                    await send_requests()
                live.bytes_received = progress.bytes_received
                self._progress(record, machine.verified_bytes)
                if time.monotonic() - progress.last_flush > FLUSH_INTERVAL:
                    await self._save(record, progress, machine)
        finally:
            guard.cancel()
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            with contextlib.suppress(BaseException):
                await guard
            # Writes already handed to the worker finish before anything else runs on it.
            while not events.empty():
                left = events.get_nowait()
                if left[0] == "piece":
                    with contextlib.suppress(BaseException):
                        await left[3]
                elif left[0] == "run":
                    # Files renamed into place are recorded, or a resume would fetch
                    # them again under a new name.
                    with contextlib.suppress(BaseException):
                        for file, (_, path) in enumerate(await left[2], left[1]):
                            if path is not None:
                                progress.files.append((file, path))
                elif left[0] in ("file", "files"):
                    # Files renamed into place are recorded, or a resume would fetch
                    # them again under a new name.
                    items = ([(left[1], left[2], None, left[4])] if left[0] == "file"
                             else left[1])
                    with contextlib.suppress(BaseException):
                        results = await (left[3] if left[0] == "file" else left[2])
                        for (file, _, _, _), result in zip(
                                items, results if left[0] == "files" else [results],
                                strict=True):
                            if isinstance(result, tuple) and result[1] is not None:
                                progress.files.append((file, result[1]))
                elif left[0] == "finished":
                    with contextlib.suppress(BaseException):
                        progress.files.append((left[1], left[2].result()))
        self._progress(record, machine.verified_bytes, force=True)

    # -------------------------------------------------------------- notices
    async def _deliver_notice(self, tid: bytes) -> None:
        attempt = 0
        while not self._closing:
            record = await self._db(self.store.get, tid)
            if record is None or not record.notice:
                return
            try:
                conn = await self.node.reach(record.peer, timeout=REACH_TIMEOUT)
                meta = wire.encode(wire.Notice(tid, record.notice, record.error[:200]))
                stream = await conn.open_channel(wire.KIND_NOTICE, meta)
                await stream.read_all(wire.MAX_CONTROL_MESSAGE, timeout=30)
            except (ConnectError, ChannelClosedError, ProtocolError) as exc:
                log.info("transfer %s: notice not delivered (%s)", tid.hex()[:8], exc)
                await self._wait_for_peer(record.peer, attempt)
                attempt += 1
                continue
            await self._db(functools.partial(self.store.update, tid, notice=""))
            return

    async def _on_notice(self, remote: PublicIdentity, stream: ChannelStream) -> None:
        notice = wire.decode(wire.Notice, stream.meta)
        record = await self._db(self.store.get, notice.transfer_id)
        reason = clean_name(notice.reason, wire.MAX_REASON_LEN)
        if record is not None and record.peer == remote.key and record.status not in FINISHED:
            match (record.direction, notice.what):
                case ("out", "declined"):
                    await self._set_status(record, "declined", error=reason or "declined")
                case ("out", "done"):
                    live = self.live(record.id)
                    live.activity = ""
                    self._progress(record, record.total_bytes, force=True)
                    await self._set_status(record, "done", verified_bytes=record.total_bytes)
                case (_, "cancelled"):
                    await self._stop_worker(record.id)
                    serving = self._serving.pop(record.id, None)
                    if serving is not None:
                        serving.reset("cancelled")
                    if record.direction == "in" and record.dest:
                        await self._discard(record)
                    self.live(record.id).activity = ""
                    why = f"the other side cancelled: {reason}" if reason else \
                        "the other side cancelled"
                    await self._set_status(record, "cancelled", error=why)
                case _:
                    log.info("ignored a %r notice for a %s transfer", notice.what,
                             record.direction)
        stream.end()
