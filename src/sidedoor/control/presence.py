"""Control API routes for presence: who is online, away or offline; being away; typing.

    GET  /v1/presence                               {me: {state, since}, contacts: [{address,
                                                    name, presence (online | away | offline),
                                                    online, away, last_seen}]}
    POST /v1/presence                               {away: true | false} -> me; told to every
                                                    contact online now, and to the others as
                                                    their sessions open
    POST /v1/chat/conversations/{who}/typing        we are typing there (a contact or a room):
                                                    told to those online, at most every 3 s
                                                    -> {told}

Events on /v1/events: ``presence.changed`` {address, online, last_seen[, via: "broker"]}
(sessions; "broker": registered at a broker, reachable only through its relay),
``presence.away`` {address, away, since}, ``chat.typing`` {conversation, address, name}.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sidedoor.errors import ChatError
from sidedoor.node import Node


def add_routes(app: web.Application, node: Node, read_json: Any) -> None:
    routes = PresenceRoutes(node, read_json)
    app.router.add_get("/v1/presence", routes.presence)
    app.router.add_post("/v1/presence", routes.set_presence)
    app.router.add_post("/v1/chat/conversations/{who}/typing", routes.typing)


class PresenceRoutes:
    def __init__(self, node: Node, read_json: Any) -> None:
        self.node = node
        self.read_json = read_json

    async def presence(self, request: web.Request) -> web.Response:
        node = self.node
        assert node.contacts is not None and node.db is not None
        contacts = await node.db.run(node.contacts.all)
        return web.json_response({
            "me": node.presence.describe_me(),
            "contacts": [
                {"address": c.public.address, "name": c.petname,
                 "presence": node.presence.state_of(c.identity),
                 "online": node.presence.state_of(c.identity) != "offline",
                 "away": node.presence.is_away(c.identity), "last_seen": c.last_seen}
                for c in contacts if not c.blocked]})

    async def set_presence(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        away = body.get("away")
        if not isinstance(away, bool):
            raise ChatError("send {\"away\": true} or {\"away\": false}")
        return web.json_response(await self.node.presence.set_away(away))

    async def typing(self, request: web.Request) -> web.Response:
        node = self.node
        assert node.contacts is not None and node.db is not None
        conversation, _ = await node.db.run(node.chat.store.resolve, node.contacts,
                                            request.match_info["who"])
        return web.json_response({"told": await node.presence.typing(conversation)})
