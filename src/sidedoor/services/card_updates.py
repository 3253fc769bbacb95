"""Contacts tell each other their current card whenever a session opens.

A card carries the addresses a node listens on and the brokers it uses; both
change (a laptop moves, its owner adds a broker). Each side sends its card on a
``card-update`` channel as a session with a contact opens; the other keeps it if
it is signed by that contact and newer than the one it has.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sidedoor.cards import MAX_CARD_BYTES
from sidedoor.errors import SidedoorError
from sidedoor.identity import PublicIdentity
from sidedoor.net.connection import ChannelStream

if TYPE_CHECKING:
    from sidedoor.node import Node, PeerSession

log = logging.getLogger(__name__)

KIND_CARD = "card-update"


class CardUpdates:
    def __init__(self, node: Node) -> None:
        self.node = node

    def register(self) -> None:
        self.node.add_channel_handler(KIND_CARD, self._on_card)
        self.node.add_session_listener(self._on_session)

    def _on_session(self, info: PeerSession) -> None:
        self.node._spawn(self._send(info))

    async def _send(self, info: PeerSession) -> None:
        try:
            stream = await info.connection.open_channel(KIND_CARD, self.node.my_card())
            stream.end()
        except SidedoorError as exc:
            log.debug("could not send our card to %s: %s", info.remote.short, exc)

    async def _on_card(self, remote: PublicIdentity, stream: ChannelStream) -> None:
        node = self.node
        assert node.db is not None and node.contacts is not None
        if len(stream.meta) > MAX_CARD_BYTES:
            return
        if await node.db.run(node.contacts.refresh_card, remote.key, bytes(stream.meta)):
            log.info("%s sent a newer contact card", remote.short)
