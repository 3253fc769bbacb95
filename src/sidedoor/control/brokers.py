"""Control API routes for the brokers a node uses.

    GET    /v1/brokers                  [{url, host, state, observed, error, mail_waiting}]
    POST   /v1/brokers      {url}       use a broker from now on (kept across restarts)
    POST   /v1/brokers/remove {url}     stop using it
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sidedoor.errors import SidedoorError
from sidedoor.node import Node


def add_routes(app: web.Application, node: Node, read_json: Any) -> None:
    async def brokers(_: web.Request) -> web.Response:
        return web.json_response([link.describe() for link in node.brokers.values()])

    async def add(request: web.Request) -> web.Response:
        body = await read_json(request)
        url = body.get("url")
        if not isinstance(url, str):
            raise SidedoorError("give the broker's address: {\"url\": \"sidedoor-broker://...\"}")
        link = await node.add_broker(url)
        return web.json_response(link.describe())

    async def remove(request: web.Request) -> web.Response:
        body = await read_json(request)
        url = body.get("url")
        if not isinstance(url, str):
            raise SidedoorError("give the broker's address: {\"url\": \"sidedoor-broker://...\"}")
        await node.remove_broker(url)
        return web.json_response({"removed": url})

    app.router.add_get("/v1/brokers", brokers)
    app.router.add_post("/v1/brokers", add)
    app.router.add_post("/v1/brokers/remove", remove)
