"""The control API in process: a Node, its ControlServer, and an aiohttp client."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from sidedoor.control.client import ControlClient
from sidedoor.control.server import ControlServer
from sidedoor.errors import ControlAPIError
from sidedoor.home import CONTROL_FILE
from sidedoor.node import Node

HOST = "127.0.0.1"


@dataclass
class Api:
    node: Node
    server: ControlServer
    http: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.server.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.server.token}"}

    async def call(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                   **kwargs: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path,
                                     headers=headers if headers is not None else self.auth,
                                     **kwargs) as resp:
            assert resp.content_type == "application/json", resp.content_type
            return resp.status, await resp.json()


@pytest.fixture
async def api(node_factory) -> AsyncIterator[Api]:
    node = await node_factory()
    server = ControlServer(node)
    await server.start()
    timeout = aiohttp.ClientTimeout(total=15)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            yield Api(node, server, http)
    finally:
        await server.aclose()


def assert_error(body: Any, kind: str | None = None) -> str:
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if kind is not None:
        assert body["error"]["type"] == kind, body
    return str(body["error"]["message"])


# ------------------------------------------------------------------- guard

async def test_control_file_is_private(api: Api) -> None:
    path = api.node.home / CONTROL_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    info = json.loads(path.read_text())
    assert info["port"] == api.server.port and info["token"] == api.server.token
    await api.server.aclose()
    assert not path.exists()


async def test_no_token_is_401(api: Api) -> None:
    status, body = await api.call("GET", "/v1/status", headers={})
    assert status == 401
    assert "token" in assert_error(body, "Unauthorized")


@pytest.mark.parametrize("auth", [
    "Bearer wrong", "Bearer ", "bearer {token}", "{token}", "Basic {token}", "Bearer {token}x",
])
async def test_wrong_token_is_401(api: Api, auth: str) -> None:
    headers = {"Authorization": auth.format(token=api.server.token)}
    status, body = await api.call("GET", "/v1/status", headers=headers)
    assert status == 401
    assert_error(body, "Unauthorized")


@pytest.mark.parametrize("host", [
    "evil.example:{port}", "evil.example", "127.0.0.1", "127.0.0.1:1", "localhost.evil:{port}",
])
async def test_foreign_host_header_is_403_even_with_the_token(api: Api, host: str) -> None:
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 still sends its own Host."""
    headers = {**api.auth, "Host": host.format(port=api.server.port)}
    status, body = await api.call("GET", "/v1/status", headers=headers)
    assert status == 403
    assert_error(body, "Forbidden")
    status, body = await api.call("POST", "/v1/shutdown", headers=headers, json={})
    assert status == 403
    assert not api.node._stopped.is_set()


async def test_status(api: Api) -> None:
    status, body = await api.call("GET", "/v1/status")
    assert status == 200
    node = api.node
    assert body["running"] is True
    assert body["address"] == node.public.address
    assert body["port"] == node.port and body["control_port"] == api.server.port
    assert body["listening"] == [f"{HOST}:{node.port}"]
    assert body["uptime"] >= 0 and body["sessions"] == []
    # localhost is the other name the API answers to.
    headers = {**api.auth, "Host": f"localhost:{api.server.port}"}
    status, _ = await api.call("GET", "/v1/status", headers=headers)
    assert status == 200


async def test_identity_and_name(api: Api) -> None:
    status, body = await api.call("POST", "/v1/name", json={"name": "  Ada  "})
    assert (status, body) == (200, {"name": "Ada"})
    status, body = await api.call("GET", "/v1/identity")
    assert status == 200 and body["name"] == "Ada"
    assert body["address"] == api.node.public.address
    for bad in ({"name": ""}, {"name": "x" * 65}, {"name": 5}, {}):
        status, body = await api.call("POST", "/v1/name", json=bad)
        assert status == 400, bad
        assert_error(body)


# -------------------------------------------------------------------- ping

@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b""])
async def test_ping_bad_json_is_400(api: Api, raw: bytes) -> None:
    headers = {**api.auth, "Content-Type": "application/json"}
    status, body = await api.call("POST", "/v1/ping", headers=headers, data=raw)
    assert status == 400
    assert "JSON" in assert_error(body, "BadRequest")


@pytest.mark.parametrize("body", [
    [],
    "text",
    {},
    {"address": "sdx"},
    {"addr": "127.0.0.1:1"},
    {"address": 5, "addr": "127.0.0.1:1"},
])
async def test_ping_missing_fields_is_400(api: Api, body: Any) -> None:
    status, answer = await api.call("POST", "/v1/ping", json=body)
    assert status == 400
    assert_error(answer, "BadRequest")


@pytest.mark.parametrize("extra", [
    {"count": 0}, {"count": 101}, {"count": "3"}, {"count": 1.5},
    {"timeout": 0}, {"timeout": 61}, {"timeout": "soon"},
])
async def test_ping_out_of_range_is_400(api: Api, node_factory, extra: dict[str, Any]) -> None:
    other = await node_factory()
    body = {"address": other.public.address, "addr": f"{HOST}:{other.port}", **extra}
    status, answer = await api.call("POST", "/v1/ping", json=body)
    assert status == 400
    assert_error(answer, "BadRequest")
    assert not other.sessions


async def test_ping_typo_and_bad_addr_are_400(api: Api, node_factory) -> None:
    other = await node_factory()
    typo = other.public.address[:-1] + ("a" if other.public.address[-1] != "a" else "b")
    status, body = await api.call("POST", "/v1/ping",
                                  json={"address": typo, "addr": f"{HOST}:{other.port}"})
    assert status == 400
    assert "typo" in assert_error(body, "InvalidAddress")
    for addr in ("127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", "127.0.0.1:port", ":7070"):
        status, body = await api.call("POST", "/v1/ping",
                                      json={"address": other.public.address, "addr": addr})
        assert status == 400, addr
        assert_error(body)


async def test_ping_another_node(api: Api, node_factory) -> None:
    other = await node_factory()
    body = {"address": other.public.address, "addr": f"{HOST}:{other.port}", "count": 2}
    status, answer = await api.call("POST", "/v1/ping", json=body)
    assert status == 200, answer
    assert answer["reachable"] is True and answer["contact"] is False
    assert answer["address"] == other.public.address and answer["pattern"] == "XX"
    assert len(answer["rtts_ms"]) == 2


async def test_ping_unreachable_is_an_error_not_a_crash(api: Api, node_factory) -> None:
    other = await node_factory()
    port = other.port
    address = other.public.address
    await other.aclose()  # nobody listens there now
    status, body = await api.call("POST", "/v1/ping",
                                  json={"address": address, "addr": f"{HOST}:{port}",
                                        "timeout": 2})
    assert status >= 400
    assert_error(body, "ConnectError")
    status, _ = await api.call("GET", "/v1/status")
    assert status == 200


# ------------------------------------------------------------- events, client

async def read_event(resp: aiohttp.ClientResponse, kind: str) -> dict[str, Any]:
    """Read SSE lines until an event of ``kind``; return its data."""
    current = None
    while True:
        line = (await resp.content.readline()).decode()
        if not line:
            raise AssertionError(f"the event stream ended before a {kind!r} event")
        line = line.rstrip("\n")
        if line.startswith("event: "):
            current = line[len("event: "):]
        elif line.startswith("data: ") and current == kind:
            data: dict[str, Any] = json.loads(line[len("data: "):])
            assert data["type"] == kind
            return data


async def test_event_stream_sees_session_opened(api: Api, node_factory) -> None:
    pinger = await node_factory()
    url = api.base + "/v1/events"
    async with api.http.get(url, headers=api.auth) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert await resp.content.readline() == b": connected\n"
        await pinger.ping(api.node.public.address, HOST, api.node.port, timeout=5)
        opened = await asyncio.wait_for(read_event(resp, "session.opened"), 5)
        assert opened["address"] == pinger.public.address
        assert opened["direction"] == "in" and opened["path"] == "lan"
        closed = await asyncio.wait_for(read_event(resp, "session.closed"), 5)
        assert closed["address"] == pinger.public.address
    # The stream needs the token and the right Host like everything else.
    async with api.http.get(url) as resp:
        assert resp.status == 401


async def test_event_stream_ends_when_the_node_closes(api: Api) -> None:
    async with api.http.get(api.base + "/v1/events", headers=api.auth) as resp:
        assert await resp.content.readline() == b": connected\n"
        api.node.events.close()
        rest = await asyncio.wait_for(resp.content.read(), 5)
        assert rest.strip() == b""  # no more events, and the stream ended


async def test_closing_the_api_ends_open_event_streams_promptly(api: Api) -> None:
    """`sidedoor down` must not hang because a client is watching the event stream."""
    async with api.http.get(api.base + "/v1/events", headers=api.auth) as resp:
        assert await resp.content.readline() == b": connected\n"
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(api.server.aclose(), 5)
        assert loop.time() - start < 2
        rest = await asyncio.wait_for(resp.content.read(), 5)
        assert rest.strip() == b""


async def test_shutdown_stops_the_node(api: Api) -> None:
    status, body = await api.call("POST", "/v1/shutdown", json={})
    assert (status, body) == (200, {"stopping": True})
    await asyncio.wait_for(api.node.wait_stopped(), 5)


async def test_control_client(api: Api) -> None:
    async with ControlClient(api.node.home) as client:
        status = await client.call("GET", "/v1/status")
        assert status["address"] == api.node.public.address
        with pytest.raises(ControlAPIError) as caught:
            await client.call("POST", "/v1/ping", {"count": 0})
        assert caught.value.status == 400
