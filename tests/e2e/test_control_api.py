"""The control API in process: a Node, its ControlServer, and an aiohttp client."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from sidedoor.control.client import ControlClient
from sidedoor.control.server import ControlServer
from sidedoor.errors import ContactError, ControlAPIError, NotAllowed, PeerTimeout
from sidedoor.home import CONTROL_FILE
from sidedoor.identity import PublicIdentity
from sidedoor.net.connection import ChannelClosedError
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


async def test_an_event_with_any_text_is_one_line_of_json(api: Api) -> None:
    """Events are encoded by msgspec: line breaks and other control characters in the
    data stay escaped (one ``data:`` line per event), non-ASCII text arrives as itself."""
    text = "Zoë\nsays:\r\u2028 «hi»\x00 \U0001f600"
    async with api.http.get(api.base + "/v1/events", headers=api.auth) as resp:
        assert await resp.content.readline() == b": connected\n"
        assert await resp.content.readline() == b"\n"
        api.node.events.emit("test.text", text=text, nested={"n": [1, 2.5, None, True]})
        assert await asyncio.wait_for(resp.content.readline(), 5) == b"event: test.text\n"
        line = await asyncio.wait_for(resp.content.readline(), 5)
        assert line.startswith(b"data: ") and line.endswith(b"\n")
        data = json.loads(line[len(b"data: "):])
        assert data["text"] == text and data["nested"] == {"n": [1, 2.5, None, True]}
        assert await resp.content.readline() == b"\n"


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


# ------------------------------------------- errors that are not SidedoorError

def _raising(exc: BaseException) -> Any:
    def status() -> dict[str, Any]:
        raise exc

    return status


async def test_a_timeout_is_a_504_in_json(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.node, "status", _raising(TimeoutError()))
    status, body = await api.call("GET", "/v1/status")
    assert status == 504
    assert assert_error(body, "Timeout") == "the other node did not answer in time"


async def test_a_bug_is_a_500_in_json_and_a_traceback_in_the_log(
        api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(api.node, "status", _raising(KeyError("secret detail")))
    with caplog.at_level(logging.ERROR, logger="sidedoor.control.server"):
        status, body = await api.call("GET", "/v1/status")
    assert status == 500
    message = assert_error(body, "InternalError")
    assert message == "internal error; see the node's log"
    (record,) = [r for r in caplog.records if r.name == "sidedoor.control.server"]
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    assert "GET /v1/status" in record.getMessage()
    # The node goes on answering.
    monkeypatch.undo()
    status, _ = await api.call("GET", "/v1/status")
    assert status == 200


@pytest.mark.parametrize("exc", [
    ChannelClosedError("the channel was reset"),
    NotAllowed("they refused the request: no"),
    PeerTimeout("the peer went silent"),
], ids=lambda exc: type(exc).__name__)
async def test_errors_from_the_other_node_are_502(api: Api, monkeypatch: pytest.MonkeyPatch,
                                                  exc: Exception) -> None:
    monkeypatch.setattr(api.node, "status", _raising(exc))
    status, body = await api.call("GET", "/v1/status")
    assert status == 502
    assert assert_error(body, type(exc).__name__) == str(exc)


async def test_our_own_refusals_stay_400(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.node, "status", _raising(ContactError("no contact matches 'x'")))
    status, body = await api.call("GET", "/v1/status")
    assert status == 400
    assert_error(body, "ContactError")


async def test_http_errors_pass_through(api: Api) -> None:
    """aiohttp's own answers (404 here, 400 for a body that is not JSON) are not bugs."""
    async with api.http.get(api.base + "/v1/nothing-here", headers=api.auth) as resp:
        assert resp.status == 404
    headers = {**api.auth, "Content-Type": "application/json"}
    status, body = await api.call("POST", "/v1/add", headers=headers, data=b"{nope")
    assert status == 400
    assert "JSON" in assert_error(body, "BadRequest")


async def test_the_client_turns_a_bug_into_a_control_api_error(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.node, "status", _raising(RuntimeError("boom")))
    async with ControlClient(api.node.home) as client:
        with pytest.raises(ControlAPIError) as caught:
            await client.call("GET", "/v1/status")
    assert caught.value.status == 500
    assert str(caught.value) == "internal error; see the node's log"


@pytest.fixture
async def not_json(home: Path) -> AsyncIterator[Path]:
    """A home whose control.json leads to a server that answers in plain text."""

    async def text(request: web.Request) -> web.Response:
        status = int(request.query.get("status", "500"))
        body = request.query.get("body", "Internal Server Error")
        if body == "not-utf-8":  # and labelled JSON, which it is not
            return web.Response(status=status, body=b"\xff\xfe{}",
                                content_type="application/json")
        return web.Response(status=status, text=body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", text)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = runner.addresses[0][1]
    (home / CONTROL_FILE).write_text(json.dumps({"port": port, "token": "t", "pid": 1}))
    try:
        yield home
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("status", "body"), [
    (500, "500 Internal Server Error\n\nServer got itself in trouble"),
    (200, "OK"),
    (200, ""),
    (502, "<html>Bad Gateway</html>"),
    (200, "not-utf-8"),
    (400, "not-utf-8"),
])
async def test_the_client_turns_a_non_json_answer_into_a_control_api_error(
        not_json: Path, status: int, body: str) -> None:
    async with ControlClient(not_json) as client:
        with pytest.raises(ControlAPIError) as caught:
            await client.call("GET", f"/v1/status?status={status}&body={quote(body)}")
    assert caught.value.status == status
    assert f"HTTP {status}" in str(caught.value) and "JSON" in str(caught.value)


# ---------------------------------------------------- add: an address nearby

def _seen_nearby(node: Node) -> list[dict[str, Any]]:
    """What `Node.nearby` would say had LAN discovery seen ``node``."""
    public = node.public
    return [{"number": 1, "address": public.address, "name": "Seen", "hosts": [HOST],
             "port": node.port, "fingerprint": public.fingerprint(), "standing": "stranger",
             "addrs": [f"{HOST}:{node.port}"]}]


async def test_add_by_full_address_uses_where_nearby_saw_them(
        api: Api, node_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    other = await node_factory()
    monkeypatch.setattr(api.node, "nearby", lambda: _seen_nearby(other))
    status, body = await api.call("POST", "/v1/add", json={"address": other.public.address})
    assert status == 200, body
    assert body["status"] == "queued" and body["address"] == other.public.address
    assert other.contacts is not None and other.db is not None
    (request,) = await other.db.run(other.contacts.requests, "in")
    assert PublicIdentity(request.identity) == api.node.public


async def test_add_by_full_address_not_nearby_says_so(
        api: Api, node_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    other, stranger = await node_factory(), await node_factory()
    monkeypatch.setattr(api.node, "nearby", lambda: _seen_nearby(stranger))
    status, body = await api.call("POST", "/v1/add", json={"address": other.public.address})
    assert status == 400
    assert "no known way to reach" in assert_error(body, "ConnectError")
    assert other.contacts is not None and other.db is not None
    assert await other.db.run(other.contacts.requests, "in") == []
