"""Control API routes for people: contacts, requests, links and invites.

    GET  /v1/contacts                       the contact list
    GET  /v1/contacts/{who}                 one contact, by name, address (or its start)
                                            or fingerprint: as in the list
    POST /v1/contacts/{who}/{action}        rename {petname} | remove | block | unblock | verify
    GET  /v1/requests                       incoming and outgoing contact requests
    POST /v1/requests/{id}/accept|decline|block
    POST /v1/add                            {address, addrs: [host:port], message}: send a request
                                            (no addrs: where `nearby` saw them, if it did)
    POST /v1/links                          a one-time sidedoor:// link (and its QR as SVG)
    POST /v1/invites                        a one-time invite code for a colleague nearby
    POST /v1/join                           {text}: an invite code or a link
    GET  /v1/nearby                         nodes seen on the LAN right now
"""

from __future__ import annotations

import io
from typing import Any

import segno
from aiohttp import web

from sidedoor.errors import ContactError, SidedoorError
from sidedoor.identity import PublicIdentity
from sidedoor.node import Node
from sidedoor.services.contacts import Contact


def add_routes(app: web.Application, node: Node, read_json: Any) -> None:
    routes = PeopleRoutes(node, read_json)
    app.router.add_get("/v1/contacts", routes.contacts)
    app.router.add_get("/v1/contacts/{who}", routes.contact)
    app.router.add_post("/v1/contacts/{who}/{action}", routes.contact_action)
    app.router.add_get("/v1/requests", routes.requests)
    app.router.add_post("/v1/requests/{id}/{action}", routes.request_action)
    app.router.add_post("/v1/add", routes.add)
    app.router.add_post("/v1/links", routes.link)
    app.router.add_post("/v1/join", routes.join)
    app.router.add_post("/v1/invites", routes.invite)
    app.router.add_get("/v1/nearby", routes.nearby)


def qr_svg(text: str) -> str:
    buffer = io.BytesIO()
    segno.make(text, error="m").save(buffer, kind="svg", scale=4, border=2)
    return buffer.getvalue().decode("utf-8")


class PeopleRoutes:
    def __init__(self, node: Node, read_json: Any) -> None:
        self.node = node
        self.read_json = read_json

    def _describe(self, contact: Contact) -> dict[str, Any]:
        info = contact.as_dict(self.node.public)
        conn = self.node.session_with(contact.identity)
        session = self.node.sessions.get(conn) if conn is not None else None
        state = self.node.presence.state_of(contact.identity)
        info["online"] = state != "offline"
        info["away"] = self.node.presence.is_away(contact.identity)
        info["presence"] = state
        # "broker": online at a broker, with no session (see services.keep_in_touch).
        info["path"] = session.path if session is not None else (
            "broker" if info["online"] else None)
        return info

    async def _resolve(self, who: str) -> Contact:
        book = self.node.contacts
        assert book is not None and self.node.db is not None
        contact: Contact = await self.node.db.run(book.resolve, who)
        return contact

    async def contacts(self, request: web.Request) -> web.Response:
        book = self.node.contacts
        assert book is not None and self.node.db is not None
        contacts = await self.node.db.run(book.all)
        return web.json_response({"contacts": [self._describe(c) for c in contacts]})

    async def contact(self, request: web.Request) -> web.Response:
        """One contact, resolved here as the actions resolve it (the CLI must not guess)."""
        contact = await self._resolve(request.match_info["who"])
        return web.json_response(self._describe(contact))

    async def contact_action(self, request: web.Request) -> web.Response:
        node = self.node
        book = node.contacts
        assert book is not None and node.db is not None
        contact = await self._resolve(request.match_info["who"])
        action = request.match_info["action"]
        if action == "rename":
            body = await self.read_json(request)
            petname = body.get("petname")
            if not isinstance(petname, str):
                raise ContactError("give the new name as 'petname'")
            await node.db.run(book.rename, contact.identity, petname)
        elif action == "remove":
            await node.db.run(book.remove, contact.identity)
            node.set_standing(contact.identity, "stranger")
            return web.json_response({"removed": contact.public.address})
        elif action in ("block", "unblock"):
            await node.db.run(book.set_flag, contact.identity, "blocked", action == "block")
            node.set_standing(contact.identity, "blocked" if action == "block" else "contact")
        elif action == "verify":
            await node.db.run(book.set_flag, contact.identity, "verified", True)
        else:
            raise web.HTTPNotFound()
        updated = await node.db.run(book.get, contact.identity)
        assert updated is not None
        node.events.emit("contact.changed", address=updated.public.address, action=action)
        return web.json_response(self._describe(updated))

    async def requests(self, request: web.Request) -> web.Response:
        book = self.node.contacts
        assert book is not None and self.node.db is not None
        me = self.node.public
        incoming = await self.node.db.run(book.requests, "in")
        outgoing = await self.node.db.run(book.requests, "out")
        return web.json_response({
            "incoming": [r.as_dict(me) for r in incoming],
            "outgoing": [r.as_dict(me) for r in outgoing],
        })

    async def request_action(self, request: web.Request) -> web.Response:
        try:
            request_id = int(request.match_info["id"])
        except ValueError:
            raise ContactError("a request is named by its number (see `sidedoor requests`)"
                               ) from None
        action = request.match_info["action"]
        intros = self.node.introductions
        if action == "accept":
            contact, told = await intros.accept(request_id)
            return web.json_response({"contact": self._describe(contact), "told": told})
        if action in ("decline", "block"):
            await intros.decline(request_id, block=action == "block")
            return web.json_response({"declined": request_id, "blocked": action == "block"})
        raise web.HTTPNotFound()

    def _find_nearby(self, who: str) -> dict[str, Any]:
        peers = self.node.nearby()
        text = who.strip().lower()
        for test in (
            lambda p: str(p["number"]) == text,
            lambda p: p["address"] == text or p["fingerprint"] == text,
            lambda p: p["name"].lower() == text,
            lambda p: len(text) >= 6 and p["address"].startswith(text),
            lambda p: p["name"].lower().startswith(text),
        ):
            found = [p for p in peers if test(p)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise ContactError(f"{who!r} matches several people nearby; use the number "
                                   "from `sidedoor nearby`")
        if not peers:
            raise ContactError("nobody is visible nearby; give their address and --addr")
        raise ContactError(f"nobody nearby matches {who!r}; `sidedoor nearby` lists them")

    async def add(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        address, addrs = body.get("address"), body.get("addrs", [])
        message = body.get("message", "")
        if isinstance(address, str) and not addrs:
            try:
                wanted = PublicIdentity.from_address(address)
            except SidedoorError:
                peer = self._find_nearby(address)
                address, addrs = peer["address"], peer["addrs"]
            else:
                # A full address and no --addr: where the LAN saw them, if it did. If not,
                # no addrs, and the node says it does not know where they are.
                seen = [p for p in self.node.nearby() if p["address"] == wanted.address]
                addrs = list(seen[0]["addrs"]) if seen else []
        if not isinstance(address, str):
            raise ContactError("give the address of the person to add")
        if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
            raise ContactError("'addrs' is a list of HOST:PORT")
        if not isinstance(message, str):
            raise ContactError("'message' is text")
        target = PublicIdentity.from_address(address)
        status, name = await self.node.introductions.send_request(
            target, addrs, message=message, via=body.get("via", "nearby"))
        return web.json_response({"status": status, "name": name, "address": target.address})

    async def link(self, request: web.Request) -> web.Response:
        link = await self.node.introductions.create_link()
        return web.json_response({"link": link, "qr_svg": qr_svg(link)})

    async def join(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ContactError("give a sidedoor:// link or an invite code")
        if text.strip().startswith("sidedoor:"):
            status, name = await self.node.introductions.join_link(text)
            return web.json_response({"status": status, "name": name})
        wait = body.get("wait", 15)
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 < wait <= 120:
            raise ContactError("'wait' is 0 to 120 seconds")
        contact = await self.node.invites.join(text, float(wait))
        return web.json_response({"status": "accepted", "name": contact.petname,
                                  "contact": self._describe(contact)})

    async def invite(self, request: web.Request) -> web.Response:
        invite = await self.node.invites.create()
        return web.json_response({"code": str(invite.code), "expires_at": invite.expires_at,
                                  "broker": invite.broker})

    async def nearby(self, request: web.Request) -> web.Response:
        return web.json_response({"discovery": self.node.discovery is not None,
                                  "nearby": self.node.nearby()})
