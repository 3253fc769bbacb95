"""Files in the conversation: sending files also writes a chat message that refers to them.

Files and chat are one thread. `post_files` offers the files (one transfer per
recipient: the contact, or every member of a room who is our contact) and then writes
a message into the conversation whose attachments are the transfer ids, so the
recipient's history shows the offer where it happened and a script or the web UI can
match the message with ``GET /v1/transfers/{id}``. The message text names the files,
so every view (terminal, web, search) shows it without knowing about attachments.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sidedoor.errors import SidedoorError, TransferError
from sidedoor.identity import PublicIdentity
from sidedoor.proto import chat as chat_wire
from sidedoor.services.transfers import human_bytes

if TYPE_CHECKING:
    from sidedoor.node import Node

log = logging.getLogger(__name__)

# Words, not an emoji: not every terminal or browser here has a font for one.
OFFER_PREFIX = "Sent files:"


def offer_text(names: list[str], files: int, total_bytes: int, note: str) -> str:
    """What the conversation shows for an offer: the names, the size, the sender's note."""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    count = f"{files} file{'s' if files != 1 else ''}"
    text = f"{OFFER_PREFIX} {shown} ({count}, {human_bytes(total_bytes)})"
    if note:
        text += f"\n{note}"
    # A note is short (the transfer keeps 200 characters of it), but names can be long.
    limit = chat_wire.MAX_TEXT_BYTES // 4
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def post_files(node: Node, paths: list[str], to: str, note: str = "") -> dict[str, Any]:
    """Offer ``paths`` to a contact or a room (``to``) and say so in that conversation.

    Returns the first transfer's description (what ``POST /v1/transfers`` always
    returned) with ``transfers`` (all of them), ``skipped_members`` (room members who
    are not our contacts, so cannot be sent files directly) and ``message`` (the chat
    message, or None if it could not be written: the files go anyway).
    """
    assert node.db is not None and node.contacts is not None
    conversation, kind = await node.db.run(node.chat.store.resolve, node.contacts, to)
    skipped_members: list[str] = []
    if kind == "direct":
        recipients = [conversation]
    else:
        room = node.chat.rooms.get(conversation)
        if room is None or room.status != "active":
            raise TransferError("you are not a member of that room")
        members = sorted(m for m in room.state.members if m != node.public.key)
        recipients = [m for m in members if node.standing(m) == "contact"]
        skipped_members = [PublicIdentity(m).address for m in members
                           if node.standing(m) != "contact"]
        if not recipients:
            raise TransferError("nobody in that room is your contact yet, so there is "
                                "nobody to send the files to")
    sent: list[dict[str, Any]] = []
    for peer in recipients:
        sent.append(await node.transfers.send(paths, PublicIdentity(peer).address, note))
    first = sent[0]
    text = offer_text(list(first["names"]), int(first["files"]), int(first["total_bytes"]),
                      note)
    refs = tuple(bytes.fromhex(t["id"]) for t in sent[: chat_wire.MAX_ATTACHMENTS])
    message: dict[str, Any] | None = None
    try:
        stored = await node.chat.send(conversation, text, attachments=refs)
        message = node.chat.describe(stored)
    except SidedoorError as exc:
        # The offer matters more than the note about it: the transfers stand.
        log.warning("files offered, but the chat message about them failed: %s", exc)
    return {**first, "transfers": sent, "skipped_members": skipped_members,
            "message": message, "conversation_kind": kind}
