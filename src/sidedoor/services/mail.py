"""Store-and-forward mail between contacts, through their brokers' mailboxes.

Services (chat, receipts, file offers) hand this module a ``kind`` and an opaque
payload for a contact who may be offline. ``send`` seals it (encrypted to the
recipient's static key, signed inside by us) and deposits it at the recipient's
broker; the recipient's node picks it up when it registers, opens it, hands the
payload to the handler registered for ``kind``, and acknowledges it only when
the handler returned without error, so nothing is lost if the node stops in
between. The broker sees sizes and timing only.

Until a broker is configured, ``send`` returns False and services keep their
own outbox for direct delivery when the contact comes online.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sidedoor.identity import PublicIdentity

log = logging.getLogger(__name__)

# (sender, payload) -> None; raise to leave the envelope in the mailbox for later.
MailHandler = Callable[[PublicIdentity, bytes], Awaitable[None]]
MAX_MAIL_PAYLOAD = 256 << 10


class Mail:
    def __init__(self) -> None:
        self._handlers: dict[str, MailHandler] = {}

    def add_handler(self, kind: str, handler: MailHandler) -> None:
        """Hand payloads of ``kind`` from the mailbox to ``handler``."""
        self._handlers[kind] = handler

    async def send(self, recipient: bytes, kind: str, payload: bytes) -> bool:
        """Deposit ``payload`` for ``recipient``; True once a broker holds it durably."""
        if len(payload) > MAX_MAIL_PAYLOAD:
            raise ValueError(f"mail payloads are at most {MAX_MAIL_PAYLOAD} bytes")
        return False

    async def deliver(self, sender: PublicIdentity, kind: str, payload: bytes) -> None:
        """Hand an opened envelope to its service (called by the broker client)."""
        handler = self._handlers.get(kind)
        if handler is None:
            log.info("mail of unknown kind %r from %s dropped", kind, sender.address)
            return
        await handler(sender, payload)
