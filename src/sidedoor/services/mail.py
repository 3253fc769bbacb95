"""Store-and-forward mail between contacts, through their brokers' mailboxes.

Services (chat, receipts, file offers) hand this module a ``kind`` and an opaque
payload for a contact who may be offline. ``send`` seals it (`proto.envelope`:
encrypted to the recipient's static key, signed inside by us) and deposits it at a
broker the recipient uses; the recipient's node gets it when it registers there,
opens it, hands the payload to the handler registered for ``kind``, and acknowledges
it only when the handler returned without error, so nothing is lost if the node
stops in between. The broker sees sizes and timing only. Handlers must therefore be
idempotent: an envelope may come twice if the node stopped before its acknowledgement.

Mail from anyone who is not a contact is opened, dropped and acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from sidedoor.errors import BrokerError, ProtocolError, SidedoorError
from sidedoor.identity import PublicIdentity
from sidedoor.proto import broker as wire
from sidedoor.proto.envelope import open_envelope, seal

if TYPE_CHECKING:
    from sidedoor.net.broker_client import BrokerLink
    from sidedoor.node import Node

log = logging.getLogger(__name__)

# (sender, payload) -> None; raise to leave the envelope in the mailbox for later.
MailHandler = Callable[[PublicIdentity, bytes], Awaitable[None]]
MAX_MAIL_PAYLOAD = 256 << 10


class Mail:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._handlers: dict[str, MailHandler] = {}
        self._inbox: asyncio.Queue[tuple[BrokerLink, wire.MailItem]] | None = None
        self._worker: asyncio.Task[None] | None = None

    def add_handler(self, kind: str, handler: MailHandler) -> None:
        """Hand payloads of ``kind`` from the mailbox to ``handler``."""
        self._handlers[kind] = handler

    async def send(self, recipient: bytes, kind: str, payload: bytes) -> bool:
        """Deposit ``payload`` for ``recipient``; True once a broker holds it durably.

        False when it cannot be deposited now (no broker in common, none connected,
        or we never had a session with the recipient and so lack its static key);
        the caller keeps it for direct delivery.
        """
        if len(payload) > MAX_MAIL_PAYLOAD:
            raise ValueError(f"mail payloads are at most {MAX_MAIL_PAYLOAD} bytes")
        node = self.node
        assert node.db is not None and node.contacts is not None and node.identity
        static = await node.db.run(node.db.peer_static, recipient)
        contact = await node.db.run(node.contacts.get, recipient)
        if static is None or contact is None:
            return False
        theirs = set(contact.card.brokers)
        links = [link for link in node.brokers.values() if link.is_registered]
        # Their brokers first; a broker of ours will do if their card names none
        # (colleagues of one office share one).
        links.sort(key=lambda link: link.url not in theirs)
        if theirs:
            links = [link for link in links if link.url in theirs] or links
        envelope = await asyncio.to_thread(seal, node.identity, recipient, static, kind, payload)
        for link in links:
            try:
                await link.request(lambda rid: wire.Deposit(rid, recipient, envelope))
            except BrokerError as exc:
                log.info("deposit at %s failed: %s", link.address.hostport, exc)
                continue
            return True
        return False

    # ------------------------------------------------------------- receiving
    def on_mail(self, link: BrokerLink, item: wire.MailItem) -> None:
        """Called by a broker link for each envelope it pushes (in order)."""
        if self._inbox is None:
            self._inbox = asyncio.Queue()
            self._worker = asyncio.ensure_future(self._work())
        self._inbox.put_nowait((link, item))

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def _work(self) -> None:
        assert self._inbox is not None
        while True:
            link, item = await self._inbox.get()
            try:
                if await self._open(item):
                    await link.send(wire.MailAck([item.mail_id]))
            except SidedoorError as exc:
                log.info("mail %d could not be acknowledged: %s", item.mail_id, exc)

    async def _open(self, item: wire.MailItem) -> bool:
        """True when the envelope is dealt with (delivered, or dropped for good)."""
        node = self.node
        assert node.identity is not None
        try:
            opened = await asyncio.to_thread(open_envelope, node.identity, item.envelope)
        except ProtocolError as exc:
            log.info("dropped a mailbox envelope: %s", exc)
            return True
        if node.standing(opened.sender.key) != "contact":
            log.info("dropped mail from %s: not a contact", opened.sender.short)
            return True
        try:
            await self.deliver(opened.sender, opened.kind, opened.payload)
        except Exception:
            log.exception("the %s service failed on mail from %s; it stays in the mailbox",
                          opened.kind, opened.sender.short)
            return False
        return True

    async def deliver(self, sender: PublicIdentity, kind: str, payload: bytes) -> None:
        """Hand an opened envelope to its service."""
        handler = self._handlers.get(kind)
        if handler is None:
            log.info("mail of unknown kind %r from %s dropped", kind, sender.address)
            return
        await handler(sender, payload)
