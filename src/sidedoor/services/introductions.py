"""Introductions: contact requests, their acceptance, and links.

The only things a stranger can do with a node. A request is one small signed
card and a message; it waits for the user (`sidedoor requests`), unless it
carries a one-time token from a link the user made, or both sides asked each
other. Requests are rate-limited per source address and per identity.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sidedoor.cards import ContactCard, card_from_text, card_to_text, open_card
from sidedoor.errors import ContactError, InvalidCard, NotAllowed
from sidedoor.identity import PublicIdentity
from sidedoor.names import clean_name
from sidedoor.net.connection import ChannelStream
from sidedoor.proto import introductions as wire
from sidedoor.rate_limit import RateLimiter
from sidedoor.services.contacts import Contact, ContactBook

if TYPE_CHECKING:
    from sidedoor.node import Node

log = logging.getLogger(__name__)

LINK_SCHEME = "sidedoor"
LINK_TTL = 7 * 24 * 3600.0
REQUESTS_PER_WINDOW = 5
RATE_WINDOW = 60.0
REPLY_TIMEOUT = 10.0


@dataclass(frozen=True)
class Link:
    card: ContactCard
    card_bytes: bytes
    token: bytes


def make_link(card_bytes: bytes, token: bytes) -> str:
    query = urllib.parse.urlencode({"t": card_to_text(token)}) if token else ""
    return f"{LINK_SCHEME}://add/{card_to_text(card_bytes)}" + (f"?{query}" if query else "")


def parse_link(text: str) -> Link:
    """Read a ``sidedoor://add/...`` link; the card's signature is checked."""
    parsed = urllib.parse.urlsplit(text.strip())
    if parsed.scheme != LINK_SCHEME or parsed.netloc != "add":
        raise ContactError("that is not a sidedoor link (they start with sidedoor://add/)")
    try:
        card_bytes = card_from_text(parsed.path.lstrip("/"))
        card = open_card(card_bytes)
    except InvalidCard as exc:
        raise ContactError(f"this link is damaged or forged: {exc}") from exc
    token_text = urllib.parse.parse_qs(parsed.query).get("t", [""])[0]
    try:
        token = card_from_text(token_text) if token_text else b""
    except InvalidCard as exc:
        raise ContactError("this link's token is damaged") from exc
    if len(token) not in (0, 16):
        raise ContactError("this link's token is damaged")
    return Link(card, card_bytes, token)


class Introductions:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.limiter = RateLimiter(REQUESTS_PER_WINDOW, RATE_WINDOW)

    def register(self) -> None:
        self.node.add_channel_handler(wire.KIND_REQUEST, self._on_request, strangers=True)
        self.node.add_channel_handler(wire.KIND_ACCEPT, self._on_accept, strangers=True)

    @property
    def book(self) -> ContactBook:
        assert self.node.contacts is not None
        return self.node.contacts

    async def add_contact(self, card_bytes: bytes, source: str, *, verified: bool = False
                           ) -> Contact:
        node = self.node
        assert node.db is not None
        contact: Contact = await node.db.run(
            lambda: self.book.add(card_bytes, source=source, now=time.time(), verified=verified))
        await node.db.run(self.book.delete_requests_of, contact.identity)
        node.set_standing(contact.identity, "blocked" if contact.blocked else "contact")
        node.events.emit("contact.added", address=contact.public.address, name=contact.petname,
                         source=source)
        return contact

    # ----------------------------------------------------------- incoming
    async def _on_request(self, remote: PublicIdentity, stream: ChannelStream) -> None:
        node = self.node
        assert node.db is not None
        now = time.time()
        source_ip = str(stream.connection.peername[0]) if stream.connection.peername else "?"
        if not (self.limiter.allow("ip:" + source_ip, now)
                and self.limiter.allow("id:" + remote.address, now)):
            await self._reply(stream, wire.Reply("refused", reason="too many requests; wait"))
            log.info("contact request from %s (%s) rate-limited", remote.address, source_ip)
            return
        meta = wire.decode(wire.RequestMeta, stream.meta)
        card = open_card(meta.card)
        if card.identity != remote.key:
            raise NotAllowed("the card in the request belongs to someone else")
        message = clean_name(meta.message, wire.MAX_MESSAGE_LEN)
        standing = node.standing(remote.key)
        if standing == "contact":
            await node.db.run(lambda: self.book.add(meta.card, source="request", now=now))
            await self._reply(stream, wire.Reply("accepted", node.my_card()))
            return
        token_ok = False
        if meta.token:
            token_ok = await node.db.run(self.book.use_token, meta.token, now)
        if token_ok:
            await self.add_contact(meta.card, "link")
            await self._reply(stream, wire.Reply("accepted", node.my_card()))
            return
        if await node.db.run(self.book.outgoing_request, remote.key) is not None:
            # We asked them too: that is consent on both sides.
            await self.add_contact(meta.card, "request")
            await self._reply(stream, wire.Reply("accepted", node.my_card()))
            return
        via = "link" if meta.token else "nearby"
        request_id = await node.db.run(lambda: self.book.add_request(
            meta.card, direction="in", message=message, via=via, now=now))
        node.events.emit("request.received", id=request_id, address=remote.address,
                         name=card.name, message=message)
        await self._reply(stream, wire.Reply("queued", node.my_card()))

    async def _on_accept(self, remote: PublicIdentity, stream: ChannelStream) -> None:
        node = self.node
        assert node.db is not None
        meta = wire.decode(wire.AcceptMeta, stream.meta)
        card = open_card(meta.card)
        if card.identity != remote.key:
            raise NotAllowed("the card in the acceptance belongs to someone else")
        asked = await node.db.run(self.book.outgoing_request, remote.key)
        if asked is None and node.standing(remote.key) != "contact":
            await self._reply(stream, wire.Reply("refused", reason="we did not ask you"))
            return
        await self.add_contact(meta.card, "request")
        await self._reply(stream, wire.Reply("accepted", node.my_card()))

    @staticmethod
    async def _reply(stream: ChannelStream, reply: wire.Reply) -> None:
        await stream.write(wire.encode(reply))
        stream.end()

    # ----------------------------------------------------------- outgoing
    async def send_request(self, target: PublicIdentity, addrs: list[str], *, message: str = "",
                           token: bytes = b"", via: str = "nearby") -> tuple[str, str]:
        """Ask ``target`` to become a contact. Returns (status, their name)."""
        node = self.node
        assert node.db is not None
        if target == node.public:
            raise ContactError("that is you")
        if node.standing(target.key) == "contact":
            raise ContactError("you are already contacts")
        conn = await node.reach(target.key, addrs=addrs)
        meta = wire.encode(wire.RequestMeta(node.my_card(), message[: wire.MAX_MESSAGE_LEN],
                                            token))
        stream = await conn.open_channel(wire.KIND_REQUEST, meta)
        reply = wire.decode(wire.Reply, await stream.read_all(wire.MAX_REPLY_LEN, REPLY_TIMEOUT))
        name = ""
        if reply.card:
            card = open_card(reply.card)
            if card.identity != target.key:
                raise NotAllowed("the reply came with someone else's card")
            name = card.name
        if reply.status == "accepted" and reply.card:
            await self.add_contact(reply.card, via)
        elif reply.status == "queued" and reply.card:
            await node.db.run(lambda: self.book.add_request(
                reply.card, direction="out", message=message, via=via, now=time.time()))
        elif reply.status == "refused":
            raise NotAllowed(f"they refused the request: {reply.reason or 'no reason given'}")
        else:
            raise NotAllowed(f"an answer this version does not understand: {reply.status!r}")
        if node.standing(target.key) != "contact":
            conn.close("request delivered")  # no business with a stranger beyond this
        return reply.status, name

    async def accept(self, request_id: int) -> tuple[Contact, bool]:
        """Accept an incoming request; tell the requester if it can be reached now.

        Returns the new contact and whether the requester was told. If not, the
        requester becomes our contact anyway, and learns it the next time it asks.
        """
        node = self.node
        assert node.db is not None
        request = await node.db.run(self.book.request, request_id)
        if request is None or request.direction != "in":
            raise ContactError(f"no waiting request #{request_id}; `sidedoor requests` lists them")
        contact = await self.add_contact(request.card_bytes, "request")
        told = False
        try:
            conn = await node.reach(contact.identity, timeout=5, addrs=[*request.card.addrs])
            stream = await conn.open_channel(
                wire.KIND_ACCEPT, wire.encode(wire.AcceptMeta(node.my_card())))
            data = await stream.read_all(wire.MAX_REPLY_LEN, REPLY_TIMEOUT)
            reply = wire.decode(wire.Reply, data)
            told = reply.status == "accepted"
        except Exception as exc:
            log.info("could not tell %s that we accepted: %s", contact.public.address, exc)
        return contact, told

    async def decline(self, request_id: int, *, block: bool = False) -> None:
        """Drop a request; with ``block``, also refuse its sender from now on."""
        node = self.node
        assert node.db is not None
        request = await node.db.run(self.book.request, request_id)
        if request is None:
            raise ContactError(f"no request #{request_id}; `sidedoor requests` lists them")
        if block:
            contact = await node.db.run(lambda: self.book.add(
                request.card_bytes, source="blocked request", now=time.time()))
            await node.db.run(self.book.set_flag, contact.identity, "blocked", True)
            node.set_standing(contact.identity, "blocked")
        await node.db.run(self.book.delete_request, request_id)

    async def create_link(self, one_time: bool = True) -> str:
        node = self.node
        assert node.db is not None
        token = os.urandom(16) if one_time else b""
        if token:
            await node.db.run(self.book.add_token, token, time.time(), LINK_TTL)
        return make_link(node.my_card(), token)

    async def join_link(self, text: str) -> tuple[str, str]:
        link = parse_link(text)
        return await self.send_request(link.card.public, list(link.card.addrs),
                                       token=link.token, via="link")
