"""Control API routes for chat: conversations, messages, search, rooms (presence: presence.py).

A conversation ``{who}`` is a contact (name, address or its start, fingerprint) or a
room (its name, ``#name``, or its id in hex). Messages are JSON objects: ``id``,
``conversation`` (hex), ``kind`` (direct | room), ``peer`` (direct: the contact's
address), ``room`` (its name), ``sender``, ``sender_name``, ``mine``, ``seq``, ``text``,
``sent_at`` / ``received_at`` / ``order_at`` (ms since the epoch), ``state`` (ours:
pending | delivered | read | failed, with ``error``; theirs: unread | read),
``reply_to``, ``attachments`` (hex references to file offers); in rooms, ours also carry
``receipts``: {address: delivered | read}. Lists are oldest first, in display order.

    GET  /v1/chat/conversations                     every conversation: kind, name, unread,
                                                    newest_at, online (direct)
    GET  /v1/chat/conversations/{who}               one conversation, resolved as above
    GET  /v1/chat/conversations/{who}/messages      history: ?since=MS&before=MS&limit=N
                                                    (the newest N, default 200, max 1000)
    POST /v1/chat/conversations/{who}/messages      {text, reply_to?: hex, attachments?: [hex]}
                                                    -> the message, once stored here
    POST /v1/chat/conversations/{who}/read          mark it read (read receipts go out)
                                                    -> {ids}
    GET  /v1/chat/search?q=TEXT&limit=N             full-text search, newest first
    GET  /v1/chat/inbox                             unread counts per conversation
    GET  /v1/chat/rooms                             the rooms this node knows
    POST /v1/chat/rooms                             {name, members: [who]} -> the new room
    POST /v1/chat/rooms/{room}/add|remove           {members: [who]} (admins only)
    POST /v1/chat/rooms/{room}/leave

Events on /v1/events: ``chat.message`` {message}, ``chat.delivered`` {id, conversation,
by}, ``chat.read`` {ids, conversation, by}, ``chat.failed`` {id, conversation, by,
reason}, ``presence.changed`` {address, online, last_seen}, ``room.changed`` {room}.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import msgspec
from aiohttp import web

from sidedoor.errors import ChatError, InvalidAddress
from sidedoor.identity import PublicIdentity, decode_address
from sidedoor.node import Node
from sidedoor.proto import chat as wire
from sidedoor.services.chat import Chat
from sidedoor.services.chat_store import StoredMessage


def add_routes(app: web.Application, node: Node, read_json: Any) -> None:
    routes = ChatRoutes(node, read_json)
    app.router.add_get("/v1/chat/conversations", routes.conversations)
    app.router.add_get("/v1/chat/conversations/{who}", routes.conversation)
    app.router.add_get("/v1/chat/conversations/{who}/messages", routes.history)
    app.router.add_post("/v1/chat/conversations/{who}/messages", routes.send)
    app.router.add_post("/v1/chat/conversations/{who}/read", routes.read)
    app.router.add_get("/v1/chat/search", routes.search)
    app.router.add_get("/v1/chat/inbox", routes.inbox)
    app.router.add_get("/v1/chat/rooms", routes.rooms)
    app.router.add_post("/v1/chat/rooms", routes.create_room)
    app.router.add_post("/v1/chat/rooms/{room}/{action}", routes.room_action)


# Scripts and the web UI name a conversation by the same address request after request.
_address_key = functools.lru_cache(maxsize=1024)(decode_address)


def _json(data: dict[str, Any]) -> web.Response:
    """A JSON answer encoded by msgspec: several times cheaper than json.dumps (aiohttp's
    default), on the path of every message sent and every history page."""
    return web.Response(body=msgspec.json.encode(data), content_type="application/json",
                        charset="utf-8")


def _int_query(request: web.Request, name: str, default: int | None) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ChatError(f"{name} is a whole number (milliseconds or a count)") from None


def _hex(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ChatError(f"{what} is hex text")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ChatError(f"{what} is hex text") from None


class ChatRoutes:
    def __init__(self, node: Node, read_json: Any) -> None:
        self.node = node
        self.read_json = read_json

    @property
    def chat(self) -> Chat:
        return self.node.chat

    async def _run(self, fn: Any, *args: Any) -> Any:
        assert self.node.db is not None
        return await self.node.db.run(fn, *args)

    async def _resolve(self, who: str) -> tuple[bytes, str]:
        # Scripts and the web UI name conversations by address or room id: no SQL then.
        with contextlib.suppress(InvalidAddress):
            key = _address_key(who)
            if self.node.standing(key) == "contact":
                return key, "direct"
        if len(who) == 2 * wire.ID_LEN:
            with contextlib.suppress(ValueError):
                rid = bytes.fromhex(who)
                if rid in self.chat.rooms:
                    return rid, "room"
        assert self.node.contacts is not None
        found: tuple[bytes, str] = await self._run(self.chat.store.resolve, self.node.contacts,
                                                   who)
        return found

    async def _names(self) -> dict[bytes, str]:
        assert self.node.contacts is not None
        return {c.identity: c.petname for c in await self._run(self.node.contacts.all)}

    def _describe_conversation(self, conv: bytes, names: dict[bytes, str]) -> dict[str, Any]:
        if len(conv) == wire.KEY_LEN:
            return {"id": conv.hex(), "kind": "direct", "address": PublicIdentity(conv).address,
                    "name": names.get(conv, PublicIdentity(conv).short),
                    "online": self.chat.is_online(conv)}
        room = self.chat.rooms.get(conv)
        info: dict[str, Any] = {"id": conv.hex(), "kind": "room",
                                "name": room.state.name if room else conv.hex()}
        if room is not None:
            info["room"] = self.chat.describe_room(room)
        return info

    async def _messages(self, messages: list[StoredMessage]) -> list[dict[str, Any]]:
        mine_in_rooms = [m.id for m in messages if m.mine and m.kind == "room"]
        receipts = await self._run(self.chat.store.receipts, mine_in_rooms) if mine_in_rooms \
            else {}
        out = []
        for m in messages:
            info = self.chat.describe(m)
            if m.mine and m.kind == "room":
                info["receipts"] = {PublicIdentity(k).address: v
                                    for k, v in receipts.get(m.id, {}).items()}
            out.append(info)
        return out

    # ------------------------------------------------------------- routes
    async def conversations(self, request: web.Request) -> web.Response:
        names = await self._names()
        rows = await self._run(self.chat.store.conversations)
        found = []
        for row in rows:
            info = self._describe_conversation(row["id"], names)
            info.update(unread=row["unread"], messages=row["messages"],
                        newest_at=row["newest_at"])
            found.append(info)
        return web.json_response({"conversations": found})

    async def conversation(self, request: web.Request) -> web.Response:
        conv, _ = await self._resolve(request.match_info["who"])
        return web.json_response(self._describe_conversation(conv, await self._names()))

    async def history(self, request: web.Request) -> web.Response:
        conv, _ = await self._resolve(request.match_info["who"])
        since = _int_query(request, "since", 0)
        before = _int_query(request, "before", None)
        limit = _int_query(request, "limit", 200)
        assert since is not None and limit is not None
        messages = await self._run(lambda: self.chat.store.history(
            conv, since=since, before=before, limit=limit))
        return _json({
            "conversation": self._describe_conversation(conv, await self._names()),
            "messages": await self._messages(messages)})

    async def send(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        conv, _ = await self._resolve(request.match_info["who"])
        text = body.get("text")
        if not isinstance(text, str):
            raise ChatError("give the message as 'text'")
        reply_to = _hex(body["reply_to"], "reply_to") if body.get("reply_to") else b""
        attachments = body.get("attachments") or []
        if not isinstance(attachments, list):
            raise ChatError("'attachments' is a list of hex references")
        refs = tuple(_hex(a, "an attachment") for a in attachments)
        message = await self.chat.send(conv, text, reply_to=reply_to, attachments=refs)
        return _json(self.chat.describe(message))

    async def read(self, request: web.Request) -> web.Response:
        conv, _ = await self._resolve(request.match_info["who"])
        ids = await self.chat.mark_read(conv)
        return web.json_response({"ids": [i.hex() for i in ids]})

    async def search(self, request: web.Request) -> web.Response:
        limit = _int_query(request, "limit", 50)
        assert limit is not None
        found = await self._run(self.chat.store.search, request.query.get("q", ""), limit)
        return web.json_response({"messages": await self._messages(found)})

    async def inbox(self, request: web.Request) -> web.Response:
        names = await self._names()
        rows = await self._run(self.chat.store.conversations)
        unread = []
        for row in rows:
            if row["unread"]:
                info = self._describe_conversation(row["id"], names)
                info.update(unread=row["unread"], newest_at=row["newest_at"])
                unread.append(info)
        return web.json_response({"unread": unread,
                                  "total": sum(u["unread"] for u in unread)})

    async def rooms(self, request: web.Request) -> web.Response:
        rooms = sorted(self.chat.rooms.values(), key=lambda r: (r.state.name.lower(),
                                                                  r.state.room))
        return web.json_response({"rooms": [self.chat.describe_room(r) for r in rooms]})

    async def _members(self, body: dict[str, Any]) -> list[bytes]:
        who = body.get("members", [])
        if isinstance(who, str):
            who = [who]
        if not isinstance(who, list) or not all(isinstance(w, str) for w in who):
            raise ChatError("'members' is a list of contacts")
        assert self.node.contacts is not None
        return [(await self._run(self.node.contacts.resolve, w)).identity for w in who]

    async def create_room(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        name = body.get("name")
        if not isinstance(name, str):
            raise ChatError("give the room a 'name'")
        room = await self.chat.create_room(name, await self._members(body))
        return web.json_response(self.chat.describe_room(room))

    async def room_action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in ("add", "remove", "leave"):
            raise web.HTTPNotFound()
        text = request.match_info["room"]
        conv, kind = await self._resolve(text if text.startswith("#") or len(text) == 32
                                         else "#" + text)
        if kind != "room":
            raise ChatError(f"{text!r} is not a room")
        if action == "leave":
            room = await self.chat.leave_room(conv)
        else:
            members = await self._members(await self.read_json(request))
            if not members:
                raise ChatError("name the members to add or remove")
            room = await (self.chat.change_members(conv, add=members) if action == "add"
                          else self.chat.change_members(conv, remove=members))
        return web.json_response(self.chat.describe_room(room))
