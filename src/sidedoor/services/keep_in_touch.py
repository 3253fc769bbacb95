"""Keeping in touch: a session with every contact who is online, without anyone writing.

Presence comes from sessions (`services.presence`), so a contact is only seen online
once a session with them is open. Without this, two colleagues who both start their
PCs in the morning would each see the other offline until one of them wrote.

So a node reaches each of its contacts: shortly after it starts, whenever a broker
registers it (the broker can now find contacts behind NAT), when a contact shows up
on the LAN, and again, with growing pauses, for contacts who could not be reached.
The contact who comes online is the one who does the work: its node reaches everyone
at start, so the others see it online at once and need not poll often. A session
stays open (keepalives) until one side goes away, so this costs one handshake per
contact per start, not traffic while idle.

Relays are left out: a broker has a few hundred relay slots for everyone it serves,
and a session kept open for presence alone would hold one for hours. A contact whom
only the relay could reach is asked after at the broker instead (a lookup: is it
registered?), which is enough to show it online, and tried again every
`REGISTERED_RECHECK` seconds; writing to it opens the relayed session then. Such
a contact coming online tries to punch through to us, which the broker announces
(``broker.punch``): that alone shows it online here, with no attempt of our own
(which would make it try again, and so on).

`ReachPlan` decides who is due when, from the times it is given (no clock, no I/O);
`KeepInTouch` is the asyncio loop around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sidedoor.errors import InvalidAddress, SidedoorError
from sidedoor.identity import PublicIdentity

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from sidedoor.node import Node, PeerSession

log = logging.getLogger(__name__)

FIRST_PASS = 0.5  # s after start: the listener is up, brokers are connecting
RETRY_FIRST = 60.0  # s before a contact who could not be reached is tried again
RETRY_MAX = 1800.0  # the pause doubles up to this
AFTER_SESSION_LOST = 5.0  # s: a dropped session may be a network blip, not a departure
SETTLED = 60.0  # s a session must have lived for its loss to reset the pause
MIN_INTERVAL = 10.0  # s between two attempts at one contact, whatever wakes us
BROKER_SPREAD = 10.0  # s over which a broker registration spreads the attempts
REACH_TIMEOUT = 10.0
AT_ONCE = 4  # reaches in flight; a broker serves many nodes
REGISTERED_RECHECK = 120.0  # s between lookups of a contact seen only at a broker
# The events that can change the plan; only these wake the watcher (not every chat message).
_PEER_EVENTS = frozenset({"nearby.joined", "nearby.updated", "session.closed", "broker.punch"})
WATCHED_EVENTS = _PEER_EVENTS | {"broker.registered", "contact.added", "contact.changed"}


@dataclass
class _Due:
    at: float
    lookup_only: bool = False  # a contact seen at a broker: ask it, do not dial


class ReachPlan:
    """When to try reaching each contact who has no session, and how.

    A contact is due at once when first seen; after a failed attempt it waits
    `RETRY_FIRST` s, doubling up to `RETRY_MAX`. A session that lived `SETTLED` s
    resets the pause when it ends (then the contact is tried again shortly); one
    that ended sooner counts as a failure, so a contact who turns us away at once
    (blocked us, removed us) is not dialled in a loop. `soon` makes contacts due now
    (a broker registered us, the contact appeared nearby), spread over ``spread`` s
    and never sooner than `MIN_INTERVAL` after the last attempt. A contact seen only
    at a broker is rechecked with a lookup every `REGISTERED_RECHECK` s.
    """

    def __init__(self, draw: Callable[[], float] = random.random) -> None:
        self._due: dict[bytes, _Due] = {}
        self._pause: dict[bytes, float] = {}
        self._last_try: dict[bytes, float] = {}
        self._connected_at: dict[bytes, float] = {}
        self._trying: set[bytes] = set()
        self._draw = draw

    def due(self, offline: Iterable[bytes], now: float) -> list[bytes]:
        """Contacts among ``offline`` (no session) to try now; they count as being tried."""
        ready = []
        for peer in offline:
            if peer in self._trying:
                continue
            entry = self._due.setdefault(peer, _Due(now))
            if entry.at <= now:
                ready.append(peer)
                self._trying.add(peer)
                self._last_try[peer] = now
        return ready

    def lookup_only(self, peer: bytes) -> bool:
        entry = self._due.get(peer)
        return entry is not None and entry.lookup_only

    def next_at(self) -> float | None:
        """The earliest time a contact not being tried is due, if any."""
        times = [d.at for p, d in self._due.items() if p not in self._trying]
        return min(times, default=None)

    def trying(self, peer: bytes) -> bool:
        return peer in self._trying

    def failed(self, peer: bytes, now: float) -> None:
        self._trying.discard(peer)
        pause = self._pause.get(peer, RETRY_FIRST)
        self._due[peer] = _Due(now + pause)
        self._pause[peer] = min(pause * 2, RETRY_MAX)

    def registered(self, peer: bytes, now: float) -> None:
        """``peer`` is registered at a broker but has no session: ask again later."""
        self._trying.discard(peer)
        self._due[peer] = _Due(now + REGISTERED_RECHECK, lookup_only=True)

    def connected(self, peer: bytes, now: float) -> None:
        self._trying.discard(peer)
        self._due.pop(peer, None)
        self._connected_at.setdefault(peer, now)

    def lost(self, peer: bytes, now: float) -> None:
        """The last session with ``peer`` ended."""
        since = self._connected_at.pop(peer, None)
        if peer in self._trying:
            return
        if since is not None and now - since >= SETTLED:
            self._pause.pop(peer, None)
            self._due[peer] = _Due(now + AFTER_SESSION_LOST)
        else:
            self.failed(peer, now)

    def soon(self, now: float, peers: Iterable[bytes] | None = None,
             spread: float = 0.0) -> None:
        """Make ``peers`` (default: every contact known here) due now, or within ``spread`` s."""
        for peer in (list(self._due) if peers is None else peers):
            at = max(now + spread * self._draw(),
                     self._last_try.get(peer, -MIN_INTERVAL) + MIN_INTERVAL)
            entry = self._due.get(peer)
            if entry is None or entry.lookup_only or at < entry.at:
                self._due[peer] = _Due(min(at, entry.at) if entry else at)

    def forget(self, keep: set[bytes]) -> None:
        """Drop plans for peers no longer contacts."""
        for table in (self._due, self._pause, self._last_try, self._connected_at):
            for peer in [p for p in table if p not in keep]:
                del table[peer]


class KeepInTouch:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.plan = ReachPlan()
        self._task: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(AT_ONCE)
        self._events: asyncio.Queue[dict[str, Any] | None] | None = None

    def register(self) -> None:
        self.node.add_session_listener(self._on_session)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        tasks = [t for t in [self._task, *self._attempts] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None

    def _on_session(self, info: PeerSession) -> None:
        self.plan.connected(info.remote.key, asyncio.get_running_loop().time())

    def _contacts_offline(self) -> list[bytes]:
        contacts = self.node.contact_keys()
        self.plan.forget(set(contacts))
        return [c for c in contacts if self.node.session_with(c) is None]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # Spread so two nodes started together do not both dial at the same instant.
        await asyncio.sleep(FIRST_PASS * (1 + random.random()))
        self._events = self.node.events.subscribe(WATCHED_EVENTS)
        watcher = loop.create_task(self._watch())
        try:
            while True:
                now = loop.time()
                self.node.presence.expire_broker_marks()
                for peer in self.plan.due(self._contacts_offline(), now):
                    task = loop.create_task(self._attempt(peer))
                    self._attempts.add(task)
                    task.add_done_callback(self._attempts.discard)
                # Broker marks age by themselves: look at them at least this often.
                wake_at = min(self.plan.next_at() or math.inf, now + REGISTERED_RECHECK)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(wake_at):
                        await self._wake.wait()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if self._events is not None:
                self.node.events.unsubscribe(self._events)
                self._events = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._events is not None:
            event = await self._events.get()
            if event is None:
                # Dropped for falling behind (or the node is closing): catch up.
                self._events = self.node.events.subscribe(WATCHED_EVENTS)
                self.plan.soon(loop.time(), spread=BROKER_SPREAD)
                self._wake.set()
            elif self._on_event(event, loop.time()):
                self._wake.set()

    def _on_event(self, event: dict[str, Any], now: float) -> bool:
        """Update the plan from a node event; True if it may have changed."""
        kind = event["type"]
        if kind == "broker.registered":
            # Every node of a broker that restarts registers again at once: spread out.
            self.plan.soon(now, spread=BROKER_SPREAD)
            return True
        if kind in ("contact.added", "contact.changed"):
            return True
        if kind not in _PEER_EVENTS:
            return False
        try:
            peer = PublicIdentity.from_address(str(event.get("address", ""))).key
        except InvalidAddress:
            return False
        if self.node.standing(peer) != "contact":
            return False
        if kind == "session.closed":
            if self.node.session_with(peer) is None:
                self.plan.lost(peer, now)
        elif kind == "broker.punch":
            if self.node.session_with(peer) is None and not self.plan.trying(peer):
                self.node.presence.at_broker(peer, True)
                self.plan.registered(peer, now)
        else:
            self.plan.soon(now, [peer])
        return True

    async def _attempt(self, peer: bytes) -> None:
        loop = asyncio.get_running_loop()
        short = PublicIdentity(peer).short
        try:
            if not self.plan.lookup_only(peer):
                try:
                    async with self._slots:
                        if self.node.session_with(peer) is None:
                            await self.node.reach(peer, timeout=REACH_TIMEOUT, relay=False)
                    self.plan.connected(peer, loop.time())
                    return
                except (SidedoorError, OSError) as exc:
                    log.debug("%s has no direct path now: %s", short, exc)
            registered = await self._registered_at_a_broker(peer)
            if registered:
                self.node.presence.at_broker(peer, True)
                self.plan.registered(peer, loop.time())
            else:
                if registered is not None:  # unknown: what a broker said earlier stands
                    self.node.presence.at_broker(peer, False)
                self.plan.failed(peer, loop.time())
        except Exception:
            log.warning("reaching %s failed unexpectedly", short, exc_info=True)
        finally:
            if self.plan.trying(peer):  # whatever happened, the contact is not stuck
                self.plan.failed(peer, loop.time())
            self._wake.set()

    async def _registered_at_a_broker(self, peer: bytes) -> bool | None:
        """True if a broker has ``peer``; False if one said no; None if none answered."""
        remote = PublicIdentity(peer)
        answer: bool | None = None
        for link in list(self.node.brokers.values()):
            if link.is_registered:
                said = await link.has_registered(remote)
                if said:
                    return True
                if said is not None:
                    answer = False
        return answer
