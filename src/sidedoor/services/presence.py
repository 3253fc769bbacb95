"""Presence: whether each contact is online, away or offline, and who is typing.

Online and offline come from sessions (a contact is online while a session with it
is open) and from brokers: a contact reachable only through a broker's relay has no
session kept open for presence (`services.keep_in_touch`), and is online while a
broker says it is registered. Away is what the contact says: each node tells its contacts its status
(``available`` or ``away``) when a session opens and whenever it changes. Typing
signals go only to contacts with a live session: someone offline does not need to
know, and nothing is ever stored. Non-contacts get neither (channels of this kind
from strangers are refused by the node).

Events: ``presence.away`` {address, away, since} when a contact's status changes,
``chat.typing`` {conversation, address, name} when a contact types in a
conversation (the direct one: conversation is their key, hex; or a room id, hex).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from sidedoor.errors import MessageError, SidedoorError
from sidedoor.identity import PublicIdentity
from sidedoor.net.connection import ChannelStream, Connection
from sidedoor.proto import presence as wire

if TYPE_CHECKING:
    from sidedoor.node import Node, PeerSession

log = logging.getLogger(__name__)

SETTING_AWAY = "away-since"  # ms since the epoch; empty when available
# A broker's "registered" counts this long: keep_in_touch asks again well before.
AT_BROKER_FRESH = 300.0


class Presence:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.away_since: int | None = None
        self.statuses: dict[bytes, wire.Status] = {}
        self._limiter = wire.TypingLimiter()
        self._typing_sent: dict[bytes, float] = {}
        self._at_broker: dict[bytes, float] = {}  # monotonic time a broker said "registered"

    def register(self) -> None:
        self.node.add_channel_handler(wire.KIND, self._on_signal)
        self.node.add_session_listener(self._on_session)

    async def start(self) -> None:
        assert self.node.db is not None
        since = await self.node.db.run(self.node.db.get_setting, SETTING_AWAY, "")
        self.away_since = int(since) if since and since.isdigit() else None

    # ------------------------------------------------------------------ ours
    def my_status(self) -> wire.Status:
        if self.away_since is not None:
            return wire.Status("away", self.away_since)
        return wire.Status("available", int(self.node.started_at * 1000))

    async def set_away(self, away: bool) -> dict[str, Any]:
        """Say to every contact online that we are away (or back); kept across restarts."""
        assert self.node.db is not None
        if away != (self.away_since is not None):
            self.away_since = int(time.time() * 1000) if away else None
            await self.node.db.run(self.node.db.set_setting, SETTING_AWAY,
                                   str(self.away_since or ""))
            signal = wire.encode(self.my_status())
            for conn in self._contact_connections():
                self.node._spawn(self._send(conn, signal))
        return self.describe_me()

    def describe_me(self) -> dict[str, Any]:
        status = self.my_status()
        return {"state": status.state, "since": status.since / 1000}

    async def typing(self, conversation: bytes) -> int:
        """Tell the people in ``conversation`` who are online that we are typing there.

        Throttled here to one signal per conversation every `wire.TYPING_EVERY` s, so
        a UI may call it on every key press. Returns how many were told.
        """
        now = time.monotonic()
        last = self._typing_sent.get(conversation)
        if last is not None and now - last < wire.TYPING_EVERY:
            return 0
        if len(conversation) == wire.ROOM_ID_LEN:
            room = self.node.chat.rooms.get(conversation)
            if room is None or room.status != "active":
                return 0
            peers = [m for m in room.state.members if m != self.node.public.key]
            signal = wire.encode(wire.Typing(conversation))
        else:
            peers = [conversation]
            signal = wire.encode(wire.Typing())
        told = 0
        for peer in peers:
            if self.node.standing(peer) != "contact":
                continue
            conn = self.node.session_with(peer)
            if conn is not None:
                self.node._spawn(self._send(conn, signal))
                told += 1
        if told:
            self._typing_sent[conversation] = now  # nobody told: the next key press may
        return told

    # ---------------------------------------------------------------- theirs
    def at_broker(self, peer: bytes, registered: bool, *, announce: bool = True) -> None:
        """What a broker said about ``peer`` (see `services.keep_in_touch`).

        ``announce=False`` when the caller tells of the change itself (a session that
        just ended says whether the contact is still online)."""
        before = peer in self._at_broker
        if registered:
            self._at_broker[peer] = time.monotonic()
        else:
            self._at_broker.pop(peer, None)
        if registered and self.node.session_with(peer) is None:
            self.node.chat.reachable_through_broker(peer)
        if announce and before != registered and self.node.session_with(peer) is None:
            self.node.events.emit("presence.changed", address=PublicIdentity(peer).address,
                                  online=registered, last_seen=time.time(), via="broker")

    def expire_broker_marks(self) -> None:
        """Forget what brokers said long ago (no broker could be asked since): offline."""
        now = time.monotonic()
        for peer in [p for p, seen in self._at_broker.items() if now - seen >= AT_BROKER_FRESH]:
            self.at_broker(peer, False)

    def seen_at_broker(self, peer: bytes) -> bool:
        seen = self._at_broker.get(peer)
        return seen is not None and time.monotonic() - seen < AT_BROKER_FRESH

    def state_of(self, peer: bytes) -> str:
        """``online``, ``away`` or ``offline``, as a person would say it."""
        if self.node.session_with(peer) is None:
            return "online" if self.seen_at_broker(peer) else "offline"
        status = self.statuses.get(peer)
        return "away" if status is not None and status.state == "away" else "online"

    def is_away(self, peer: bytes) -> bool:
        status = self.statuses.get(peer)
        return status is not None and status.state == "away"

    # ------------------------------------------------------------- plumbing
    def _contact_connections(self) -> list[Connection]:
        seen: set[bytes] = set()
        conns = []
        for conn, info in list(self.node.sessions.items()):
            if info.contact and info.remote.key not in seen and conn.is_open:
                seen.add(info.remote.key)
                conns.append(conn)
        return conns

    def _on_session(self, info: PeerSession) -> None:
        self.node._spawn(self._send(info.connection, wire.encode(self.my_status())))

    async def _send(self, conn: Connection, signal: bytes) -> None:
        try:
            stream = await conn.open_channel(wire.KIND, signal)
            stream.end()
        except SidedoorError as exc:
            log.debug("presence signal not sent: %s", exc)

    async def _on_signal(self, remote: PublicIdentity, stream: ChannelStream) -> None:
        try:
            signal = wire.decode(stream.meta)
        except MessageError as exc:
            log.info("%s sent a bad presence signal: %s", remote.short, exc)
            stream.reset("bad presence signal")
            return
        match signal:
            case wire.Status():
                before = self.statuses.get(remote.key)
                self.statuses[remote.key] = signal
                if before is None or before.state != signal.state:
                    self.node.events.emit("presence.away", address=remote.address,
                                          away=signal.state == "away",
                                          since=signal.since / 1000)
            case wire.Typing(conversation=conversation):
                if not self._limiter.allow(remote.key, time.monotonic()):
                    return
                if conversation:
                    room = self.node.chat.rooms.get(conversation)
                    if (room is None or room.status != "active"
                            or remote.key not in room.state.members):
                        return  # not a room we share: nothing to show
                else:
                    conversation = remote.key
                assert self.node.contacts is not None and self.node.db is not None
                contact = await self.node.db.run(self.node.contacts.get, remote.key)
                self.node.events.emit("chat.typing", conversation=conversation.hex(),
                                      address=remote.address,
                                      name=contact.petname if contact else remote.short)
