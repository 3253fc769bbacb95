"""Control API routes for file transfers.

    GET  /v1/transfers                      every transfer, both directions, newest first:
                                            {"transfers": [transfer, ...]}
    GET  /v1/transfers/{id}                 one transfer, by its id or the start of it (4+ hex)
    POST /v1/transfers                      {paths: [absolute paths], to: contact or room,
                                            note}: offer files and folders; delivered now, or
                                            queued until the contact is online, and written
                                            into the conversation as a chat message whose
                                            attachments are the transfer ids. Returns the
                                            (first) transfer, plus "skipped" (links and
                                            special files left out), "transfers" (one per
                                            recipient: a room's members who are contacts),
                                            "skipped_members" and "message"
    POST /v1/transfers/{id}/accept          {dest?}: accept an offer into dest (default: the
                                            downloads folder); refused if the disk has no room
    POST /v1/transfers/{id}/decline|cancel|retry
    GET  /v1/files/settings                 {downloads, auto_accept: [{address, name}]}

A transfer is a JSON object: id, short (8 hex), direction (out|in), peer (address),
peer_name, status (out: queued, offered, sending; in: offered, receiving; both: done,
declined, cancelled, failed), activity (what it is doing or waiting for, in words),
note, names (top-level names), files, total_bytes, done_bytes, bytes_sent,
bytes_received, speed (bytes/s), eta (s or null), dest, roots, error, created_at,
updated_at.

Events on /v1/events: ``transfer.offered`` (id, direction, peer, peer_name, names,
files, total_bytes, note), ``transfer.updated`` (id, direction, status, peer, error),
``transfer.progress`` (id, direction, done_bytes, total_bytes, speed; at most four a
second per transfer), ``transfer.done`` (id, direction, status, peer) and
``transfer.failed`` (the same, with error).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sidedoor.errors import TransferError
from sidedoor.node import Node
from sidedoor.services.file_posts import post_files
from sidedoor.services.transfers import SETTING_AUTO_ACCEPT


def add_routes(app: web.Application, node: Node, read_json: Any) -> None:
    routes = FileRoutes(node, read_json)
    app.router.add_get("/v1/transfers", routes.transfers)
    app.router.add_post("/v1/transfers", routes.send)
    app.router.add_get("/v1/transfers/{id}", routes.transfer)
    app.router.add_post("/v1/transfers/{id}/{action}", routes.action)
    app.router.add_get("/v1/files/settings", routes.settings)


class FileRoutes:
    def __init__(self, node: Node, read_json: Any) -> None:
        self.node = node
        self.read_json = read_json

    async def transfers(self, request: web.Request) -> web.Response:
        return web.json_response({"transfers": await self.node.transfers.all()})

    async def transfer(self, request: web.Request) -> web.Response:
        return web.json_response(await self.node.transfers.describe_one(request.match_info["id"]))

    async def send(self, request: web.Request) -> web.Response:
        body = await self.read_json(request)
        paths, to, note = body.get("paths"), body.get("to"), body.get("note", "")
        if not isinstance(paths, list) or not paths or not all(
                isinstance(p, str) and p.startswith("/") for p in paths):
            raise TransferError("'paths' is a list of absolute paths of files or folders")
        if not isinstance(to, str) or not to.strip():
            raise TransferError("'to' names the contact or room to send to")
        if not isinstance(note, str):
            raise TransferError("'note' is text")
        return web.json_response(await post_files(self.node, paths, to, note))

    async def action(self, request: web.Request) -> web.Response:
        transfers = self.node.transfers
        tid, action = request.match_info["id"], request.match_info["action"]
        if action == "accept":
            body = await self.read_json(request) if request.can_read_body else {}
            dest = body.get("dest")
            if dest is not None and not (isinstance(dest, str) and dest.startswith("/")):
                raise TransferError("'dest' is an absolute folder path")
            return web.json_response(await transfers.accept(tid, dest))
        if action == "decline":
            return web.json_response(await transfers.decline(tid))
        if action == "cancel":
            return web.json_response(await transfers.cancel(tid))
        if action == "retry":
            return web.json_response(await transfers.retry(tid))
        raise web.HTTPNotFound()

    async def settings(self, request: web.Request) -> web.Response:
        node = self.node
        assert node.db is not None and node.contacts is not None
        downloads = await node.transfers.downloads()
        trusted = (await node.db.run(node.db.get_setting, SETTING_AUTO_ACCEPT, "") or "")
        names = {c.public.address: c.petname for c in await node.db.run(node.contacts.all)}
        return web.json_response({
            "downloads": str(downloads),
            "auto_accept": [{"address": a, "name": names.get(a, "")}
                            for a in trusted.split(",") if a],
        })
