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

The bearer-token API the CLI uses is unchanged: a request with an ``Authorization``
header is judged by the token alone (plus the Host check, and a foreign Origin is
refused there too).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import io
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import segno
from aiohttp import web

LOGIN_TTL = 60.0
MAX_LOGIN_TOKENS = 16
SESSION_TTL = 7 * 24 * 3600.0
MAX_SESSIONS = 32
MAX_QR_TEXT = 2048
CSRF_HEADER = "X-Sidedoor-CSRF"
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


class WebRoutes:
    def __init__(self, gate: WebGate) -> None:
        self.gate = gate
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
        token = self.gate.issue_login()
        url = f"http://127.0.0.1:{self.gate.port}/login?t={token}"
        return web.json_response({"url": url, "expires_in": LOGIN_TTL})

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


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    if response.content_type == "text/html":
        headers.setdefault("Content-Security-Policy", CSP)


def add_routes(app: web.Application, gate: WebGate) -> None:
    routes = WebRoutes(gate)
    app.router.add_get("/", routes.index)
    app.router.add_get("/login", routes.login)
    app.router.add_get("/static/{name}", routes.static)
    app.router.add_post("/v1/web/login", routes.new_login)
    app.router.add_post("/v1/web/logout", routes.logout)
    app.router.add_get("/v1/web/session", routes.session_info)
    app.router.add_get("/v1/qr", routes.qr)
    app.on_response_prepare.append(_security_headers)


