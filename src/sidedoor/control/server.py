"""The node's local control API: HTTP + JSON on 127.0.0.1, and an event stream (SSE).

Who may call it: whoever can read ``control.json`` in the node's home (mode
0600), which holds the port and a random bearer token. Every request must carry
``Authorization: Bearer <token>`` and a ``Host`` header naming the loopback
address and our port; the Host check defeats DNS rebinding (a web page whose
name resolves to 127.0.0.1 still sends its own name as Host).

Errors are JSON: ``{"error": {"type": "ConnectError", "message": "..."}}``, whatever
went wrong: 400 for a request that cannot be done, 502 when the other node broke the
protocol or closed the channel, 504 when it did not answer in time, 500 (and a
traceback in the node's log) for anything unexpected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from sidedoor import event_loop
from sidedoor.control import brokers, chat, files, people, presence
from sidedoor.control import web as web_ui
from sidedoor.errors import InvalidAddress, RemoteProtocolError, SidedoorError
from sidedoor.home import CONTROL_FILE
from sidedoor.identity import PublicIdentity
from sidedoor.net.connection import ChannelClosedError
from sidedoor.node import Node

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NODE_KEY: web.AppKey[Node] = web.AppKey("node", Node)
MAX_BODY = 1 << 20
SSE_KEEPALIVE = 15.0


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message}}, status=status)


class ControlServer:
    def __init__(self, node: Node, *, port: int = 0) -> None:
        self.node = node
        self.token = secrets.token_urlsafe(32)
        self._requested_port = port
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._allowed_hosts: set[str] = set()
        self._event_queues: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.web = web_ui.WebGate()

    @property
    def control_path(self) -> Path:
        return self.node.home / CONTROL_FILE

    async def start(self) -> None:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        app[NODE_KEY] = self.node
        app.router.add_get("/v1/status", self._status)
        app.router.add_get("/v1/identity", self._identity)
        app.router.add_post("/v1/name", self._set_name)
        app.router.add_post("/v1/ping", self._ping)
        app.router.add_post("/v1/shutdown", self._shutdown)
        app.router.add_get("/v1/events", self._events)
        people.add_routes(app, self.node, self._json_body)
        web_ui.add_routes(app, self.web, self.node)
        brokers.add_routes(app, self.node, self._json_body)
        chat.add_routes(app, self.node, self._json_body)
        presence.add_routes(app, self.node, self._json_body)
        files.add_routes(app, self.node, self._json_body)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._requested_port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1])
        self._allowed_hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
        self.web.bind(self.port)
        self._write_control_file()

    def _write_control_file(self) -> None:
        data = json.dumps({"port": self.port, "pid": os.getpid(), "token": self.token})
        tmp = self.control_path.with_suffix(".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(data)
        tmp.replace(self.control_path)

    async def aclose(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.control_path.unlink()
        # End the event streams first: the runner waits for every open request to finish.
        for queue in list(self._event_queues):
            self.node.events.unsubscribe(queue)
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # ------------------------------------------------------------ guard
    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host", "")
        if host not in self._allowed_hosts:
            return _error(403, "Forbidden", f"this API answers only on 127.0.0.1:{self.port}")
        auth = request.headers.get("Authorization")
        bearer = None if auth is None else hmac.compare_digest(
            auth.encode(), f"Bearer {self.token}".encode())
        # The CLI's bearer token, or the browser's session cookie (and CSRF checks).
        refused = self.web.admit(request, bearer)
        if refused is not None:
            return refused
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except InvalidAddress as exc:
            return _error(400, type(exc).__name__, str(exc))
        except (RemoteProtocolError, ChannelClosedError) as exc:
            # The other node broke the rules or hung up: a bad gateway, not a bad request.
            return _error(502, type(exc).__name__, str(exc))
        except SidedoorError as exc:
            return _error(400, type(exc).__name__, str(exc))
        except TimeoutError:
            log.info("control API: %s %s timed out", request.method, request.path)
            return _error(504, "Timeout", "the other node did not answer in time")
        except Exception:
            # A bug: JSON for the CLI, the traceback for whoever reads the log.
            log.exception("control API: %s %s failed", request.method, request.path)
            return _error(500, "InternalError", "internal error; see the node's log")

    # ----------------------------------------------------------- routes
    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise web.HTTPBadRequest(
                text=json.dumps({"error": {"type": "BadRequest", "message": "body is not JSON"}}),
                content_type="application/json",
            ) from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(
                text=json.dumps({"error": {"type": "BadRequest",
                                           "message": "body must be a JSON object"}}),
                content_type="application/json",
            )
        return body

    async def _status(self, request: web.Request) -> web.Response:
        status = self.node.status()
        status["control_port"] = self.port
        status["event_loop"] = event_loop.loop_name()
        return web.json_response(status)

    async def _identity(self, request: web.Request) -> web.Response:
        node = self.node
        return web.json_response({
            "address": node.public.address, "name": node.display_name,
            "fingerprint": node.public.fingerprint(),
        })

    async def _set_name(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 64:
            return _error(400, "BadRequest", "a name is 1 to 64 characters")
        return web.json_response({"name": await self.node.set_name(name)})

    async def _ping(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        address, addr = body.get("address"), body.get("addr")
        count = body.get("count", 1)
        timeout = body.get("timeout", 10.0)
        who = body.get("who")
        if isinstance(who, str) and addr is None:
            contacts = self.node.contacts
            assert contacts is not None and self.node.db is not None
            contact = await self.node.db.run(contacts.resolve, who)
            address = contact.public.address
        elif not isinstance(address, str) or not isinstance(addr, str):
            return _error(400, "BadRequest", "give 'who' (a contact), or 'address' and 'addr'")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100:
            return _error(400, "BadRequest", "count is 1 to 100")
        if not isinstance(timeout, int | float) or not 0 < timeout <= 60:
            return _error(400, "BadRequest", "timeout is 0 to 60 seconds")
        if addr is None:
            result = await self.node.ping_reach(PublicIdentity.from_address(address).key,
                                                count=count, timeout=float(timeout))
        else:
            host, port = parse_host_port(addr)
            result = await self.node.ping(address, host, port, count=count,
                                          timeout=float(timeout))
        return web.json_response(result.as_dict())

    async def _shutdown(self, request: web.Request) -> web.Response:
        asyncio.get_running_loop().call_soon(self.node.stop)
        return web.json_response({"stopping": True})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        })
        await response.prepare(request)
        queue = self.node.events.subscribe()
        self._event_queues.add(queue)
        try:
            await response.write(b": connected\n\n")
            while True:
                try:
                    # asyncio.timeout, not wait_for: wait_for makes a task per event.
                    async with asyncio.timeout(SSE_KEEPALIVE):
                        event = await queue.get()
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if event is None:
                    break
                # msgspec: several times cheaper than json.dumps, on every event.
                await response.write(b"event: %s\ndata: %s\n\n" % (
                    event["type"].encode(), msgspec.json.encode(event)))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._event_queues.discard(queue)
            self.node.events.unsubscribe(queue)
        return response


def parse_host_port(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port), with a clear error."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise SidedoorError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:7070)")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise SidedoorError(f"{port_text!r} in {text!r} is not a port number") from None
    if not 0 < port < 65536:
        raise SidedoorError(f"port {port} is out of range (1-65535)")
    return host, port
