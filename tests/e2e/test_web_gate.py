"""The web UI's door over real HTTP: one-time login, the session cookie, Host, Origin, CSRF.

A real node and its ControlServer on 127.0.0.1; an aiohttp client that sends exactly
the headers a browser (or an attacker's page) would, cookies set by hand.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from sidedoor.control import web as web_ui
from sidedoor.control.server import ControlServer
from sidedoor.node import Node

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Door:
    node: Node
    server: ControlServer
    http: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def origin(self) -> str:
        return self.base

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        async with self.http.request(method, self.base + path, headers=headers or {},
                                     allow_redirects=False, **kwargs) as resp:
            return resp.status, dict(resp.headers), await resp.read()

    async def login_url(self) -> str:
        status, _, body = await self.request(
            "POST", "/v1/web/login", {"Authorization": f"Bearer {self.server.token}"})
        assert status == 200, body
        url = json.loads(body)["url"]
        assert isinstance(url, str)
        return url

    async def sign_in(self) -> tuple[str, str]:
        """Log in like a browser: -> (Cookie header value, CSRF token)."""
        url = urlsplit(await self.login_url())
        status, headers, _ = await self.request("GET", f"{url.path}?{url.query}",
                                                {"Sec-Fetch-Site": "none"})
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        status, _, body = await self.request("GET", "/v1/web/session", {"Cookie": cookie})
        assert status == 200, body
        return cookie, json.loads(body)["csrf"]


@pytest.fixture
async def door(node_factory: Any) -> AsyncIterator[Door]:
    node = await node_factory()
    server = ControlServer(node)
    await server.start()
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                         timeout=aiohttp.ClientTimeout(total=15)) as http:
            yield Door(node, server, http)
    finally:
        await server.aclose()


def error_of(body: bytes) -> str:
    data = json.loads(body)
    return str(data["error"]["type"])


async def test_login_sets_a_strict_httponly_cookie_and_redirects(door: Door) -> None:
    url = urlsplit(await door.login_url())
    assert url.hostname == "127.0.0.1" and url.port == door.server.port
    status, headers, _ = await door.request("GET", f"{url.path}?{url.query}")
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert cookie.startswith(f"sidedoor_{door.server.port}=")
    assert {"httponly", "samesite", "path"} <= attributes
    assert "SameSite=Strict" in cookie
    assert headers["Referrer-Policy"] == "no-referrer"


async def test_the_cookie_opens_the_page_and_the_api(door: Door) -> None:
    cookie, _ = await door.sign_in()
    status, headers, body = await door.request("GET", "/", {"Cookie": cookie})
    assert status == 200 and b"<html" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    status, _, body = await door.request("GET", "/v1/contacts", {"Cookie": cookie})
    assert status == 200 and json.loads(body) == {"contacts": []}


@pytest.mark.parametrize("path", ["/", "/v1/contacts", "/v1/events", "/v1/web/session",
                                  "/v1/qr?text=x"])
async def test_no_cookie_is_refused(door: Door, path: str) -> None:
    status, headers, body = await door.request("GET", path)
    assert status == 401
    if path == "/":
        assert b"sidedoor" in body and headers["Content-Type"].startswith("text/html")
    else:
        assert error_of(body) == "Unauthorized"


async def test_a_made_up_or_other_ports_cookie_is_refused(door: Door) -> None:
    cookie, _ = await door.sign_in()
    value = cookie.split("=", 1)[1]
    for forged in (f"sidedoor_{door.server.port}=nope", f"sidedoor_1={value}"):
        status, _, _ = await door.request("GET", "/v1/contacts", {"Cookie": forged})
        assert status == 401


async def test_a_login_token_works_once(door: Door) -> None:
    url = urlsplit(await door.login_url())
    target = f"{url.path}?{url.query}"
    status, _, _ = await door.request("GET", target)
    assert status == 303
    status, headers, body = await door.request("GET", target)
    assert status == 403 and "Set-Cookie" not in headers
    assert b"already used or has expired" in body


async def test_an_expired_or_unknown_login_token_is_refused(door: Door) -> None:
    now = [1000.0]
    door.server.web.clock = lambda: now[0]
    url = urlsplit(await door.login_url())
    now[0] += web_ui.LOGIN_TTL + 1
    for target in (f"{url.path}?{url.query}", "/login?t=guess", "/login"):
        status, headers, _ = await door.request("GET", target)
        assert status == 403 and "Set-Cookie" not in headers


async def test_only_the_newest_login_tokens_stay_valid(door: Door) -> None:
    urls = [urlsplit(await door.login_url()) for _ in range(web_ui.MAX_LOGIN_TOKENS + 1)]
    status, _, _ = await door.request("GET", f"{urls[0].path}?{urls[0].query}")
    assert status == 403
    status, _, _ = await door.request("GET", f"{urls[-1].path}?{urls[-1].query}")
    assert status == 303


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1",
                                  "localhost.evil.example:{port}"])
async def test_a_foreign_host_is_refused_even_with_the_cookie(door: Door, host: str) -> None:
    cookie, _ = await door.sign_in()
    headers = {"Cookie": cookie, "Host": host.format(port=door.server.port)}
    for path in ("/", "/v1/contacts"):
        status, _, _ = await door.request("GET", path, headers)
        assert status == 403


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1",
                                    "https://127.0.0.1:{port}", "http://127.0.0.1:{port}.evil"])
async def test_a_foreign_origin_is_refused(door: Door, origin: str) -> None:
    cookie, csrf = await door.sign_in()
    origin = origin.format(port=door.server.port)
    status, _, body = await door.request("GET", "/v1/contacts",
                                         {"Cookie": cookie, "Origin": origin})
    assert status == 403 and error_of(body) == "Forbidden"
    status, _, _ = await door.request(
        "POST", "/v1/name", {"Cookie": cookie, "Origin": origin, web_ui.CSRF_HEADER: csrf},
        json={"name": "Mallory"})
    assert status == 403
    # Even the CLI's token does not help a web page that got hold of it.
    status, _, _ = await door.request(
        "GET", "/v1/status", {"Authorization": f"Bearer {door.server.token}", "Origin": origin})
    assert status == 403
    assert door.node.name != "Mallory"


@pytest.mark.parametrize("site", ["same-site", "cross-site"])
async def test_requests_from_other_sites_or_ports_are_refused(door: Door, site: str) -> None:
    cookie, _ = await door.sign_in()
    status, _, _ = await door.request("GET", "/v1/contacts",
                                      {"Cookie": cookie, "Sec-Fetch-Site": site})
    assert status == 403


async def test_a_change_needs_the_csrf_header_and_the_origin(door: Door) -> None:
    cookie, csrf = await door.sign_in()
    base = {"Cookie": cookie, "Origin": door.origin}
    for headers in (base, {**base, web_ui.CSRF_HEADER: "wrong"},
                    {**base, web_ui.CSRF_HEADER: ""},
                    {"Cookie": cookie, web_ui.CSRF_HEADER: csrf}):
        status, _, body = await door.request("POST", "/v1/name", headers,
                                             json={"name": "Mallory"})
        assert status == 403 and error_of(body) == "Forbidden", headers
    assert door.node.name != "Mallory"
    status, _, body = await door.request("POST", "/v1/name", {**base, web_ui.CSRF_HEADER: csrf},
                                         json={"name": "Ada"})
    assert status == 200 and json.loads(body) == {"name": "Ada"}
    assert door.node.name == "Ada"


async def test_another_sessions_csrf_token_does_not_count(door: Door) -> None:
    cookie, _ = await door.sign_in()
    _, other_csrf = await door.sign_in()
    status, _, _ = await door.request(
        "POST", "/v1/name", {"Cookie": cookie, "Origin": door.origin,
                             web_ui.CSRF_HEADER: other_csrf}, json={"name": "Mallory"})
    assert status == 403


async def test_a_browser_session_cannot_mint_login_links(door: Door) -> None:
    cookie, csrf = await door.sign_in()
    status, _, _ = await door.request(
        "POST", "/v1/web/login", {"Cookie": cookie, "Origin": door.origin,
                                  web_ui.CSRF_HEADER: csrf})
    assert status == 403


async def test_sign_out_ends_the_session(door: Door) -> None:
    cookie, csrf = await door.sign_in()
    status, _headers, _ = await door.request(
        "POST", "/v1/web/logout", {"Cookie": cookie, "Origin": door.origin,
                                   web_ui.CSRF_HEADER: csrf})
    assert status == 200
    status, _, _ = await door.request("GET", "/v1/contacts", {"Cookie": cookie})
    assert status == 401


async def test_the_event_stream_works_with_the_cookie(door: Door) -> None:
    cookie, _ = await door.sign_in()
    async with door.http.get(door.base + "/v1/events", headers={"Cookie": cookie}) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        assert (await resp.content.readline()).startswith(b": connected")
        await door.node.set_name("Grace")
        async with asyncio.timeout(5):
            async for raw in resp.content:
                if raw.startswith(b"data: "):
                    event = json.loads(raw[6:])
                    assert event["type"] == "identity.changed" and event["name"] == "Grace"
                    break


async def test_static_files_and_no_way_out_of_their_folder(door: Door) -> None:
    status, headers, _body = await door.request("GET", "/static/app.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert headers["X-Content-Type-Options"] == "nosniff"
    for bad in ("/static/..%2Fcontrol%2Fweb.py", "/static/index.html", "/static/.hidden.js",
                "/static/nope.js", "/static/app.py"):
        status, _, _ = await door.request("GET", bad)
        assert status == 404, bad


async def test_qr_images(door: Door) -> None:
    cookie, _ = await door.sign_in()
    status, headers, body = await door.request("GET", "/v1/qr?text=sidedoor%3A%2F%2Fx&format=png",
                                               {"Cookie": cookie})
    assert status == 200 and body.startswith(PNG_MAGIC)
    status, headers, body = await door.request("GET", "/v1/qr?text=hello", {"Cookie": cookie})
    assert status == 200 and headers["Content-Type"].startswith("image/svg+xml")
    assert b"<svg" in body
    for bad in ("/v1/qr", "/v1/qr?text=" + "x" * (web_ui.MAX_QR_TEXT + 1),
                "/v1/qr?text=x&format=gif"):
        status, _, body = await door.request("GET", bad, {"Cookie": cookie})
        assert status == 400 and error_of(body) == "BadRequest"


async def test_the_bearer_api_is_unchanged(door: Door) -> None:
    auth = {"Authorization": f"Bearer {door.server.token}"}
    status, _, body = await door.request("POST", "/v1/name", auth, json={"name": "Cli"})
    assert status == 200 and json.loads(body)["name"] == "Cli"
    status, _, body = await door.request("GET", "/v1/contacts",
                                         {"Authorization": "Bearer wrong"})
    assert status == 401


# ------------------------------------------------------------------ uploads

async def _upload(door: Door, cookie: str, csrf: str, name: str, data: bytes,
                  batch: str = "") -> tuple[int, Any]:
    headers = {"Cookie": cookie, "Origin": door.origin, web_ui.CSRF_HEADER: csrf,
               web_ui.NAME_HEADER: name}
    if batch:
        headers[web_ui.BATCH_HEADER] = batch
    status, _, body = await door.request("POST", "/v1/web/uploads", headers,
                                         data=io.BytesIO(data))
    return status, json.loads(body)


async def test_uploads_are_staged_in_the_home(door: Door) -> None:
    cookie, csrf = await door.sign_in()
    big = os.urandom(3 << 20)  # over the API's 1 MiB body limit: uploads stream
    status, first = await _upload(door, cookie, csrf, "report%20v2.pdf", big)
    assert status == 200, first
    staged = Path(first["path"])
    assert await asyncio.to_thread(staged.read_bytes) == big and first["size"] == len(big)
    assert staged.parent.parent == door.node.home / web_ui.UPLOAD_DIR
    status, second = await _upload(door, cookie, csrf, "photos/2026/a.jpg", b"jpeg",
                                   batch=first["batch"])
    assert status == 200 and second["batch"] == first["batch"]
    assert Path(second["path"]) == staged.parent / "photos"
    photo = staged.parent / "photos" / "2026" / "a.jpg"
    assert await asyncio.to_thread(photo.read_bytes) == b"jpeg"
    status, again = await _upload(door, cookie, csrf, "photos/2026/a.jpg", b"x",
                                  batch=first["batch"])
    assert status == 400 and "already uploaded" in again["error"]["message"]


@pytest.mark.parametrize("name", ["", "../escape", "a/../../escape", "%2e%2e/escape", "/abs",
                                  "a//b", "a\\b", "x%00y", "x%1by", "%ff%fe", "./a",
                                  "/".join(["d"] * 40)])
async def test_upload_names_cannot_escape(door: Door, name: str) -> None:
    cookie, csrf = await door.sign_in()
    before = {p for p in door.node.home.rglob("*")}
    status, body = await _upload(door, cookie, csrf, name, b"data")
    assert status == 400 and body["error"]["type"] == "WebUIError", body
    assert {p for p in door.node.home.rglob("*") if p.is_file()} <= before


async def test_upload_needs_the_csrf_header_and_a_known_batch(door: Door) -> None:
    cookie, csrf = await door.sign_in()
    status, _, _ = await door.request("POST", "/v1/web/uploads", {
        "Cookie": cookie, "Origin": door.origin, web_ui.NAME_HEADER: "a.txt"}, data=b"x")
    assert status == 403
    for batch in ("0123456789abcdef", "../../etc", "zz"):
        status, body = await _upload(door, cookie, csrf, "a.txt", b"x", batch=batch)
        assert status == 400 and "batch" in body["error"]["message"]
    assert not (door.node.home / web_ui.UPLOAD_DIR).exists()


async def test_reveal_explains_what_it_cannot_do(door: Door) -> None:
    cookie, csrf = await door.sign_in()
    headers = {"Cookie": cookie, "Origin": door.origin, web_ui.CSRF_HEADER: csrf}
    for body in (b"not json", b'{"id": 5}'):
        status, _, answer = await door.request("POST", "/v1/web/reveal", headers, data=body)
        assert status == 400 and error_of(answer) == "WebUIError"
    status, _, answer = await door.request("POST", "/v1/web/reveal", headers,
                                           data=b'{"id": "abcd"}')
    assert status == 400 and error_of(answer) == "TransferError"  # no such transfer
