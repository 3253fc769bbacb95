"""The web UI's door: static files, the one-time login, browser sessions and CSRF.

The UI is served by the control API on 127.0.0.1, so it shares that API's Host
check (DNS rebinding). The browser cannot hold the bearer token of ``control.json``,
so it gets in another way:

1. ``sidedoor`` (holding the bearer token) asks ``POST /v1/web/login`` for a
   one-time login URL ``/login?t=<token>``, valid for `LOGIN_TTL` seconds, and
   opens it in the browser.
2. ``GET /login?t=...`` burns the token (a second use is refused, even in time)
   and answers with a session cookie (HttpOnly: scripts cannot read it;
   SameSite=Strict: other sites' pages cannot make the browser send it) and a
   redirect to ``/``.
3. Every request that relies on the cookie is checked again here: its Origin (when
   the browser sends one) must be this very UI; ``Sec-Fetch-Site`` must not say
   another site or port made it; a state-changing request (not GET/HEAD) must carry
   an Origin and the header `CSRF_HEADER` holding the session's CSRF token, which
   the UI reads from ``GET /v1/web/session`` (a page on another origin cannot read
   that answer, nor set a custom header without a CORS preflight we never grant).

Cookies are not separated by port: a node on 127.0.0.1:A sees the cookies of one on
127.0.0.1:B. So the cookie's name carries the port (several nodes on one machine
keep their own sessions), a session id is only ever valid at the node that made it,
and requests another port's page makes (``Sec-Fetch-Site: same-site``) are refused.

Routes::

    GET  /login?t=TOKEN          burn a login token, set the cookie, redirect to /
    GET  /                       the app (index.html); GET /static/NAME: its files
    POST /v1/web/login           bearer token only: a new one-time login URL
    GET  /v1/web/session         the session's CSRF token (and the header to send it in)
    POST /v1/web/logout          end this browser's session
    GET  /v1/qr?text=&format=    a QR image (svg or png) of ``text`` (an invite link)
    POST /v1/web/uploads         one dropped file, streamed into ``web-uploads/`` of the
                                 home (``X-Sidedoor-Name``: its relative path;
                                 ``X-Sidedoor-Batch``: the drop it belongs to)
    POST /v1/web/reveal          {id}: show a received transfer's folder on the desktop

The bearer-token API the CLI uses is unchanged: a request with an ``Authorization``
header is judged by the token alone (plus the Host check, and a foreign Origin is
refused there too).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import html
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import unicodedata
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import segno
from aiohttp import web

from sidedoor.errors import WebUIError
from sidedoor.node import Node

LOGIN_TTL = 60.0
MAX_LOGIN_TOKENS = 16
SESSION_TTL = 7 * 24 * 3600.0
MAX_SESSIONS = 32
MAX_QR_TEXT = 2048
CSRF_HEADER = "X-Sidedoor-CSRF"
# Uploads: files a user drops on a conversation are staged in the home, then offered.
UPLOAD_DIR = "web-uploads"
UPLOAD_KEEP = 7 * 24 * 3600.0
UPLOAD_CHUNK = 1 << 20
NAME_HEADER = "X-Sidedoor-Name"
BATCH_HEADER = "X-Sidedoor-Batch"
MAX_NAME_PARTS = 32
BATCH_ID = re.compile(r"^[0-9a-f]{16}$")
SAFE_METHODS = frozenset({"GET", "HEAD"})
STATIC_DIR = Path(__file__).resolve().parent.parent / "web"
STATIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}\.(js|css|svg|png)$")
CONTENT_TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml",
                 "png": "image/png"}
# Pages, scripts and styles come from this origin only; QR images are served by us too.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")


def _digest(secret: str) -> bytes:
    # Secrets are looked up by their hash: a dict lookup on the secret itself would
    # compare it byte by byte.
    return hashlib.sha256(secret.encode()).digest()


@dataclass
class WebSession:
    csrf: str
    created: float
    expires: float


class WebGate:
    """Login tokens and browser sessions of one control server, and the checks on requests.

    ``clock`` is injectable so expiry is tested without sleeping.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.port = 0
        self._logins: dict[bytes, float] = {}
        self._sessions: dict[bytes, WebSession] = {}

    def bind(self, port: int) -> None:
        self.port = port

    @property
    def cookie_name(self) -> str:
        return f"sidedoor_{self.port}"

    @property
    def origins(self) -> frozenset[str]:
        return frozenset({f"http://127.0.0.1:{self.port}", f"http://localhost:{self.port}"})

    # --------------------------------------------------------- tokens
    def issue_login(self) -> str:
        """A new one-time login token (the oldest is dropped past `MAX_LOGIN_TOKENS`)."""
        now = self.clock()
        self._logins = {k: exp for k, exp in self._logins.items() if exp > now}
        while len(self._logins) >= MAX_LOGIN_TOKENS:
            del self._logins[next(iter(self._logins))]
        token = secrets.token_urlsafe(32)
        self._logins[_digest(token)] = now + LOGIN_TTL
        return token

    def login_url(self) -> str:
        """A one-time sign-in link for a browser on this machine."""
        return f"http://127.0.0.1:{self.port}/login?t={self.issue_login()}"

    def redeem(self, token: str) -> tuple[str, WebSession] | None:
        """Burn ``token``; a new (session id, session) if it was valid, else None."""
        expires = self._logins.pop(_digest(token), None)
        now = self.clock()
        if expires is None or expires <= now:
            return None
        self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        session_id = secrets.token_urlsafe(32)
        session = WebSession(csrf=secrets.token_urlsafe(32), created=now,
                             expires=now + SESSION_TTL)
        self._sessions[_digest(session_id)] = session
        return session_id, session

    def session(self, request: web.Request) -> WebSession | None:
        session_id = request.cookies.get(self.cookie_name)
        if not session_id:
            return None
        session = self._sessions.get(_digest(session_id))
        if session is None or session.expires <= self.clock():
            return None
        return session

    def end_session(self, request: web.Request) -> None:
        session_id = request.cookies.get(self.cookie_name)
        if session_id:
            self._sessions.pop(_digest(session_id), None)

    # --------------------------------------------------------- checks
    def admit(self, request: web.Request, bearer: bool | None) -> web.StreamResponse | None:
        """None if ``request`` may go on, else the refusal to send.

        ``bearer``: None when the request has no Authorization header, else whether
        the header held the right token.
        """
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self.origins:
            return refusal(request, 403, "Forbidden",
                           "requests made by other web sites are refused")
        if bearer is not None:
            if not bearer:
                return refusal(request, 401, "Unauthorized",
                               "missing or wrong token (see control.json)")
            return None
        if request.method in SAFE_METHODS and (
                request.path == "/login" or request.path.startswith("/static/")):
            return None  # the door itself, and files that hold no secret
        fetch_site = request.headers.get("Sec-Fetch-Site")
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return refusal(request, 403, "Forbidden",
                           "requests made by other web sites are refused")
        session = self.session(request)
        if session is None:
            return refusal(request, 401, "Unauthorized",
                           "not signed in: run `sidedoor open` to open a fresh sign-in link "
                           "(scripts use the token in control.json)")
        if request.method not in SAFE_METHODS:
            if origin is None:
                return refusal(request, 403, "Forbidden",
                               "a change made from the browser must say where it comes from "
                               "(Origin)")
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                return refusal(request, 403, "Forbidden",
                               f"missing or wrong {CSRF_HEADER} header; reload the page")
        return None


def refusal(request: web.Request, status: int, kind: str, message: str) -> web.Response:
    """The error as JSON for the API, as a small page for a browser asking for a page."""
    if request.path.startswith("/v1/"):
        return web.json_response({"error": {"type": kind, "message": message}}, status=status)
    return web.Response(status=status, text=_page(message), content_type="text/html")


def _page(message: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        "<title>sidedoor</title><link rel=stylesheet href='/static/style.css'></head>"
        "<body class=door><main class=door-card><h1>sidedoor</h1>"
        f"<p>{html.escape(message)}</p>"
        "<p class=muted>Run <code>sidedoor</code> on this computer: it opens this page "
        "for you, signed in.</p></main></body></html>"
    )


def qr_image(text: str, kind: str) -> bytes:
    buffer = io.BytesIO()
    segno.make(text, error="m").save(buffer, kind=kind, scale=8 if kind == "png" else 6,
                                     border=2)
    return buffer.getvalue()


def upload_parts(header: str) -> list[str]:
    """The relative path of an uploaded file (``folder/sub/name``, percent-encoded), checked.

    Browsers send what the user dropped; a name must still not climb out of its
    batch folder or carry control characters.
    """
    try:
        name = urllib.parse.unquote(header, errors="strict")
    except UnicodeDecodeError:
        raise WebUIError("the file name is not UTF-8") from None
    parts = name.split("/")
    if not name or len(parts) > MAX_NAME_PARTS:
        raise WebUIError(f"give the file's name (at most {MAX_NAME_PARTS} folders deep) "
                         f"in {NAME_HEADER}")
    for part in parts:
        if (part in ("", ".", "..") or "\\" in part or len(part.encode()) > 255
                or any(unicodedata.category(ch)[0] == "C" for ch in part)):
            raise WebUIError(f"{name!r} is not a file name that can be saved")
    return parts


def _create(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise WebUIError(f"{path.name!r} was already uploaded in this batch") from None
    return os.fdopen(fd, "wb")


def _prune_uploads(root: Path, now: float) -> None:
    """Batches older than UPLOAD_KEEP go (their transfers have had a week to finish)."""
    with contextlib.suppress(FileNotFoundError):
        for batch in root.iterdir():
            with contextlib.suppress(OSError):
                if now - batch.stat().st_mtime > UPLOAD_KEEP:
                    shutil.rmtree(batch, ignore_errors=True)


def folder_opener() -> list[str] | None:
    """The command that shows a folder in the desktop's file manager, if there is one."""
    if sys.platform == "darwin":
        return ["open"]
    if sys.platform == "win32":
        return ["explorer"]
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return None
    found = shutil.which("xdg-open")
    return [found] if found else None


class WebRoutes:
    def __init__(self, gate: WebGate, node: Node) -> None:
        self.gate = gate
        self.node = node
        self._files: dict[str, bytes] = {}

    async def _read_static(self, name: str) -> bytes | None:
        if name not in self._files:
            path = STATIC_DIR / name
            try:
                self._files[name] = await asyncio.to_thread(path.read_bytes)
            except (FileNotFoundError, IsADirectoryError):
                return None
        return self._files[name]

    async def index(self, request: web.Request) -> web.Response:
        body = await self._read_static("index.html")
        if body is None:
            raise web.HTTPNotFound(text="the web UI is not installed")
        return web.Response(body=body, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        match = STATIC_NAME.match(name)
        body = await self._read_static(name) if match else None
        if match is None or body is None:
            raise web.HTTPNotFound(text="no such file")
        return web.Response(body=body, content_type=CONTENT_TYPES[match.group(1)],
                            headers={"Cache-Control": "no-cache"})

    async def login(self, request: web.Request) -> web.StreamResponse:
        made = self.gate.redeem(request.query.get("t", ""))
        if made is None:
            return web.Response(
                status=403, content_type="text/html",
                text=_page("This sign-in link was already used or has expired."))
        session_id, _ = made
        response = web.Response(status=303, headers={"Location": "/"})
        response.set_cookie(self.gate.cookie_name, session_id, path="/", httponly=True,
                            samesite="Strict", max_age=int(SESSION_TTL))
        response.headers["Cache-Control"] = "no-store"
        return response

    async def logout(self, request: web.Request) -> web.Response:
        self.gate.end_session(request)
        response = web.json_response({"signed_out": True})
        response.del_cookie(self.gate.cookie_name, path="/")
        return response

    async def new_login(self, request: web.Request) -> web.Response:
        # The guard let it in: an Authorization header here held the right token.
        if "Authorization" not in request.headers:
            # A browser session does not mint more sessions.
            return refusal(request, 403, "Forbidden", "only the sidedoor command may do this")
        return web.json_response({"url": self.gate.login_url(), "expires_in": LOGIN_TTL})

    async def session_info(self, request: web.Request) -> web.Response:
        session = self.gate.session(request)
        if session is None:
            return refusal(request, 400, "BadRequest", "this is for the browser's session")
        return web.json_response({"csrf": session.csrf, "csrf_header": CSRF_HEADER},
                                 headers={"Cache-Control": "no-store"})

    async def qr(self, request: web.Request) -> web.Response:
        text = request.query.get("text", "")
        kind = request.query.get("format", "svg")
        if not text or len(text) > MAX_QR_TEXT or kind not in ("svg", "png"):
            return refusal(request, 400, "BadRequest",
                           f"give 'text' (1 to {MAX_QR_TEXT} characters) and format svg or png")
        body = await asyncio.to_thread(qr_image, text, kind)
        return web.Response(body=body, content_type=CONTENT_TYPES[kind],
                            headers={"Cache-Control": "no-store"})


    async def upload(self, request: web.Request) -> web.Response:
        """Stage one file the user dropped (the body is its bytes); offer it with /v1/transfers.

        Files of one drop share a batch (``X-Sidedoor-Batch``, from the first answer),
        so a dropped folder arrives as one folder.
        """
        parts = upload_parts(request.headers.get(NAME_HEADER, ""))
        root = self.node.home / UPLOAD_DIR
        batch = request.headers.get(BATCH_HEADER, "")
        if batch:
            if not BATCH_ID.match(batch) or not await asyncio.to_thread((root / batch).is_dir):
                raise WebUIError("unknown upload batch; start the upload again")
        else:
            batch = secrets.token_hex(8)
            await asyncio.to_thread(_prune_uploads, root, time.time())
        target = root / batch / Path(*parts)
        out = await asyncio.to_thread(_create, target)
        size = 0
        try:
            async for chunk in request.content.iter_chunked(UPLOAD_CHUNK):
                await asyncio.to_thread(out.write, chunk)
                size += len(chunk)
            await asyncio.to_thread(out.close)
        except BaseException as exc:
            await asyncio.to_thread(out.close)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(target.unlink)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise WebUIError("the disk is full: free some space and try again") from exc
            if isinstance(exc, OSError):
                raise WebUIError(f"the file could not be saved: {exc.strerror}") from exc
            raise
        return web.json_response({"batch": batch, "path": str(root / batch / parts[0]),
                                   "size": size})

    async def reveal(self, request: web.Request) -> web.Response:
        """Show a received transfer's folder in the desktop's file manager."""
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise WebUIError("the body is not JSON") from None
        tid = body.get("id") if isinstance(body, dict) else None
        if not isinstance(tid, str):
            raise WebUIError("name the transfer as 'id'")
        info = await self.node.transfers.describe_one(tid)
        if info.get("direction") != "in" or info.get("status") != "done":
            raise WebUIError("only the folder of files you received can be opened")
        folder = str(info.get("dest") or "")
        opener = folder_opener()
        if opener is None or not folder:
            raise WebUIError(f"this computer cannot show folders from here; the files are in "
                             f"{folder}")
        await asyncio.to_thread(
            subprocess.Popen, [*opener, folder], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        return web.json_response({"opened": folder})


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    if response.content_type == "text/html":
        headers.setdefault("Content-Security-Policy", CSP)


def add_routes(app: web.Application, gate: WebGate, node: Node) -> None:
    routes = WebRoutes(gate, node)
    app.router.add_get("/", routes.index)
    app.router.add_get("/login", routes.login)
    app.router.add_get("/static/{name}", routes.static)
    app.router.add_post("/v1/web/login", routes.new_login)
    app.router.add_post("/v1/web/logout", routes.logout)
    app.router.add_get("/v1/web/session", routes.session_info)
    app.router.add_get("/v1/qr", routes.qr)
    app.router.add_post("/v1/web/uploads", routes.upload)
    app.router.add_post("/v1/web/reveal", routes.reveal)
    app.on_response_prepare.append(_security_headers)


