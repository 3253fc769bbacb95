"""Invite codes between two nodes: make one, advertise it, and run the PAKE when a colleague joins.

The inviting node keeps its open invites in memory (they last 10 minutes). When it
is registered at a broker, the broker allocates the nameplate (the meeting point,
so a code works across networks); it also advertises its nameplates on the LAN (TXT
``inv=7,12``). The joining node asks its brokers who holds the nameplate (a broker
answers once per nameplate), else looks for it among the nodes nearby, reaches that
node as a stranger (directly, punched or relayed) and opens an ``invite`` channel;
both run `proto.invite.InviteMachine` bound to that session's handshake hash. A
nameplate is retired the moment a joiner starts on it, so whoever tries a code gets
one guess.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from sidedoor.cards import open_card
from sidedoor.errors import BrokerError, ContactError, InviteFailed, MessageError, NotAllowed
from sidedoor.identity import PublicIdentity
from sidedoor.invite_codes import InviteCode, make_code, parse_code
from sidedoor.net.connection import ChannelStream
from sidedoor.proto.broker import Claimed, ClaimNameplate, NameplateOwner, UseNameplate
from sidedoor.proto.invite import InviteMachine, InviteRole
from sidedoor.services.contacts import Contact

if TYPE_CHECKING:
    from sidedoor.net.broker_client import BrokerLink
    from sidedoor.net.mdns import NearbyPeer
    from sidedoor.node import Node

log = logging.getLogger(__name__)

KIND_INVITE = "invite"
INVITE_TTL = 600.0
MAX_OPEN_INVITES = 20
MAX_INVITE_MESSAGE = 8192
STEP_TIMEOUT = 30.0
FIND_TIMEOUT = 15.0
INVITE_PROPERTY = "inv"


@dataclass
class PendingInvite:
    code: InviteCode
    expires_at: float
    broker: str = ""  # the broker holding the nameplate, if any


def nameplates_of(peer: NearbyPeer) -> set[int]:
    text = peer.properties.get(INVITE_PROPERTY, "")
    return {int(part) for part in text.split(",") if part.isdigit() and len(part) <= 3}


class Invites:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.pending: dict[int, PendingInvite] = {}

    def register(self) -> None:
        self.node.add_channel_handler(KIND_INVITE, self._on_invite, strangers=True)

    def _expire(self, now: float) -> None:
        for nameplate in [n for n, inv in self.pending.items() if inv.expires_at <= now]:
            del self.pending[nameplate]

    async def _advertise(self) -> None:
        value = ",".join(str(n) for n in sorted(self.pending))
        await self.node.advertise({INVITE_PROPERTY: value} if value else {})

    def _links(self) -> list[BrokerLink]:
        return [link for link in self.node.brokers.values() if link.is_registered]

    async def create(self) -> PendingInvite:
        links = self._links()
        if self.node.discovery is None and not links:
            raise ContactError(
                "invite codes need a broker (`sidedoor broker-add`) or colleagues on the same "
                "network with discovery on; use `sidedoor invite --link` instead"
            )
        now = time.time()
        self._expire(now)
        if len(self.pending) >= MAX_OPEN_INVITES:
            raise ContactError("too many open invites; wait for some to be used or expire")
        code = make_code(os.urandom(4))
        if links:
            # The broker's number is unique among everyone who uses that broker.
            claimed = await links[0].request(lambda rid: ClaimNameplate(rid))
            assert isinstance(claimed, Claimed)
            code = InviteCode(claimed.nameplate, code.words)
        else:
            # A number nobody nearby is advertising: a joiner must find exactly one inviter.
            assert self.node.discovery is not None
            taken = set(self.pending) | {
                n for peer in self.node.discovery.nearby.values() for n in nameplates_of(peer)
            }
            for _ in range(1000):
                if code.nameplate not in taken:
                    break
                code = make_code(os.urandom(4))
        invite = PendingInvite(code, now + INVITE_TTL, links[0].address.hostport if links else "")
        self.pending[code.nameplate] = invite
        await self._advertise()
        self.node.events.emit("invite.created", nameplate=code.nameplate,
                              expires_at=invite.expires_at)
        return invite

    async def _on_invite(self, remote: PublicIdentity, stream: ChannelStream) -> None:
        try:
            nameplate = msgspec.msgpack.decode(stream.meta, type=int)
        except msgspec.MsgspecError as exc:
            raise MessageError(f"malformed invite request: {exc}") from exc
        self._expire(time.time())
        invite = self.pending.pop(nameplate, None)
        if invite is None:
            stream.reset("no such invite: it expired or was already used")
            return
        await self._advertise()  # one guess: the nameplate is gone whatever happens next
        try:
            machine = self._machine(InviteRole.INVITER, invite.code, remote, stream)
            contact = await self._run(machine, remote, stream)
        except BaseException as exc:
            # Whatever went wrong, the code is spent: the inviter must hear of it.
            self.node.events.emit("invite.failed", nameplate=nameplate,
                                  reason=str(exc) or type(exc).__name__)
            raise
        self.node.events.emit("invite.accepted", nameplate=nameplate,
                              address=contact.public.address, name=contact.petname)

    def _machine(self, role: InviteRole, code: InviteCode, remote: PublicIdentity,
                 stream: ChannelStream) -> InviteMachine:
        binding = stream.connection.session.handshake_hash
        assert binding is not None
        return InviteMachine(
            role, code, own_identity=self.node.public.key, peer_identity=remote.key,
            session_binding=binding, own_card=self.node.my_card(), random=os.urandom(64),
        )

    async def _run(self, machine: InviteMachine, remote: PublicIdentity,
                   stream: ChannelStream) -> Contact:
        await stream.write_message(machine.start())
        while not machine.done:
            message = await stream.read_message(MAX_INVITE_MESSAGE, STEP_TIMEOUT)
            if message is None:
                raise InviteFailed(
                    "your colleague's node hung up during the invite: the code may have been "
                    "wrong; make a new code and try again"
                )
            reply = machine.receive(message)
            if reply is not None:
                await stream.write_message(reply)
        stream.end()
        card_bytes = machine.peer_card
        assert card_bytes is not None
        if open_card(card_bytes).identity != remote.key:
            raise NotAllowed("the card exchanged in the invite is not the peer's")
        # The code was read out between the two people: that is as good as comparing words.
        return await self.node.introductions.add_contact(card_bytes, "invite", verified=True)

    async def join(self, text: str, find_timeout: float = FIND_TIMEOUT) -> Contact:
        code = parse_code(text)
        for link in self._links():
            try:
                owner = await link.request(lambda rid: UseNameplate(rid, code.nameplate))
            except BrokerError:
                continue  # not this broker's number (or a LAN code): try the next way
            assert isinstance(owner, NameplateOwner)
            return await self.join_at(code, PublicIdentity(owner.owner), [])
        if self.node.discovery is None:
            raise ContactError(
                f"no broker of yours has an open invite number {code.nameplate}, and LAN "
                "discovery is off: check the code, or ask for a link (`sidedoor invite --link`)")
        peer = await self._find(code.nameplate, find_timeout)
        addrs = [f"[{h}]:{peer.port}" if ":" in h else f"{h}:{peer.port}" for h in peer.hosts]
        return await self.join_at(code, PublicIdentity.from_address(peer.address), addrs)

    async def join_at(self, code: InviteCode, remote: PublicIdentity, addrs: list[str]
                      ) -> Contact:
        """Use ``code`` with the node ``remote`` at ``addrs`` (found on the LAN, or by a broker)."""
        if remote == self.node.public:
            raise ContactError("that is your own invite; give the code to a colleague")
        conn = await self.node.reach(remote.key, addrs=addrs)
        stream = await conn.open_channel(KIND_INVITE, msgspec.msgpack.encode(code.nameplate))
        return await self._run(self._machine(InviteRole.JOINER, code, remote, stream), remote,
                               stream)

    async def _find(self, nameplate: int, timeout: float) -> NearbyPeer:
        discovery = self.node.discovery
        if discovery is None:
            raise ContactError(
                "invite codes work between colleagues on the same network, and discovery is "
                "off on this node; ask for a link instead (`sidedoor invite --link`)"
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [p for p in discovery.nearby.values() if nameplate in nameplates_of(p)]
            if len(found) == 1:
                return found[0]
            if found:
                names = ", ".join(sorted(p.name or p.address[:10] for p in found))
                raise ContactError(
                    f"several colleagues nearby have an invite number {nameplate} open "
                    f"({names}); ask yours for a new code"
                )
            await asyncio.sleep(0.2)
        raise ContactError(
            f"no colleague nearby has an open invite number {nameplate}: check the code, and "
            "that you are on the same network (invites last 10 minutes)"
        )
