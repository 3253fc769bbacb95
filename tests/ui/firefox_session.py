"""Drive the web UI in Firefox (Debian's firefox-esr) over WebDriver BiDi; run in a netns.

Playwright's own Firefox is a patched build downloaded from its CDN, and its BiDi
mode needs commands this ESR lacks, so this speaks the W3C WebDriver BiDi protocol
to the stock browser directly (a websocket of JSON commands). It is started by
`test_firefox.py` inside a network namespace that has only a loopback interface:
the two nodes and the browser live there, and nothing can leave.

    python firefox_session.py ARTIFACTS_DIR    # prints one JSON object: what it saw

Alice and Bob start (real `sidedoor up` processes), become contacts with a link;
Alice's page opens in Firefox, she types to Bob with real key presses, Bob's node
gets the message, Bob answers through his API and the answer appears live on
Alice's page. Script errors on the page are collected through BiDi's log events.
"""

# One browser, one step at a time: blocking file and process calls in the coroutines
# hold up nothing else.
# ruff: noqa: ASYNC220, ASYNC240
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

FIREFOX = "/usr/bin/firefox-esr"
STEP_TIMEOUT = 20.0
# Whatever Firefox would fetch in the background, it is not allowed to try: the netns
# would stop it anyway, but then it would retry and slow the test down.
PREFS = {
    "app.update.auto": False, "app.update.disabledForTesting": True,
    "app.normandy.enabled": False, "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False, "browser.shell.checkDefaultBrowser": False,
    "browser.startup.page": 0, "browser.newtabpage.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False, "toolkit.telemetry.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False, "network.dns.disablePrefetch": True,
    "network.prefetch-next": False, "network.proxy.type": 0, "dom.push.connection.enabled": False,
    "extensions.update.enabled": False, "extensions.getAddons.cache.enabled": False,
    "services.settings.server": "http://127.0.0.1:9/", "browser.region.network.url": "",
    "ui.systemUsesDarkTheme": 0,
}


def sd(home: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("SIDEDOOR_HOME", "DISPLAY")}
    result = subprocess.run([sys.executable, "-m", "sidedoor", "--home", str(home), *args],
                            capture_output=True, text=True, timeout=60, env=env,
                            stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"sidedoor {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def control(home: Path, method: str, path: str, body: Any = None) -> Any:
    info = json.loads((home / "control.json").read_text())
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{info['port']}{path}", data=data, method=method,
        headers={"Authorization": f"Bearer {info['token']}",
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


class BiDi:
    """Just enough of WebDriver BiDi: commands by id, events kept in a list."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.waiting:
                future = self.waiting.pop(data["id"])
                if data.get("type") == "error":
                    future.set_exception(RuntimeError(f"{data['error']}: {data['message']}"))
                else:
                    future.set_result(data.get("result"))
            elif data.get("type") == "event":
                self.events.append(data)

    async def __call__(self, method: str, **params: Any) -> Any:
        self.next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting[self.next_id] = future
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method,
                                           "params": params}))
        return await asyncio.wait_for(future, STEP_TIMEOUT)


class Page:
    def __init__(self, bidi: BiDi, context: str) -> None:
        self.bidi, self.context = bidi, context

    async def js(self, expression: str) -> Any:
        result = await self.bidi("script.evaluate", expression=expression, awaitPromise=True,
                                 target={"context": self.context})
        if result["type"] == "exception":
            raise RuntimeError(f"script failed: {result['exceptionDetails']['text']}")
        return result["result"].get("value")

    async def until(self, expression: str, what: str) -> Any:
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}")

    async def type(self, text: str) -> None:
        keys = [a for ch in text for a in ({"type": "keyDown", "value": ch},
                                            {"type": "keyUp", "value": ch})]
        enter = "\ue007"
        keys += [{"type": "keyDown", "value": enter}, {"type": "keyUp", "value": enter}]
        await self.bidi("input.performActions", context=self.context,
                        actions=[{"type": "key", "id": "keyboard", "actions": keys}])

    async def screenshot(self, path: Path) -> None:
        result = await self.bidi("browsingContext.captureScreenshot", context=self.context,
                                 origin="document")
        path.write_bytes(base64.b64decode(result["data"]))


async def start_firefox(profile: Path) -> tuple[subprocess.Popen[bytes], str]:
    profile.mkdir()
    (profile / "user.js").write_text("".join(
        f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items()))
    proc = subprocess.Popen(
        [FIREFOX, "--headless", "--no-remote", "--profile", str(profile),
         "--remote-debugging-port=0", "--window-size=1280,860", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    loop = asyncio.get_running_loop()
    while time.monotonic() < deadline:
        line = (await loop.run_in_executor(None, proc.stderr.readline)).decode(errors="replace")
        if not line:
            break
        found = re.search(r"WebDriver BiDi listening on (ws://\S+)", line)
        if found:
            return proc, found.group(1)
    proc.kill()
    raise RuntimeError("Firefox did not start its WebDriver BiDi endpoint")


async def main(artifacts: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sidedoor-ff-") as name:
        tmp = Path(name)
        alice, bob = tmp / "alice", tmp / "bob"
        homes = [alice, bob]
        try:
            for home, who in ((alice, "Alice"), (bob, "Bob")):
                sd(home, "name", who)
                sd(home, "up", "--detach", "--host", "127.0.0.1", "--no-discovery")
            link = json.loads(sd(alice, "invite", "--link", "--json"))["link"]
            sd(bob, "join", link)
            login = control(alice, "POST", "/v1/web/login", {})["url"]
            firefox, ws_url = await start_firefox(tmp / "profile")
            try:
                seen.update(await drive(ws_url, login, alice, bob, artifacts))
            finally:
                firefox.kill()
                firefox.wait(10)
        finally:
            for home in homes:
                with contextlib.suppress(Exception):
                    sd(home, "down")
    return seen


async def drive(ws_url: str, login: str, alice: Path, bob: Path, artifacts: Path
                ) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http, http.ws_connect(
            f"{ws_url}/session", max_msg_size=64 << 20) as ws:
        bidi = BiDi(ws)
        session = await bidi("session.new", capabilities={})
        seen["browser"] = f"{session['capabilities']['browserName']} " \
                          f"{session['capabilities']['browserVersion']}"
        await bidi("session.subscribe", events=["log.entryAdded"])
        tree = await bidi("browsingContext.getTree")
        page = Page(bidi, tree["contexts"][0]["context"])
        await bidi("browsingContext.navigate", context=page.context, url=login,
                   wait="complete")
        await page.until("document.body.dataset.ready !== undefined", "the page to start")
        seen["cookie_login"] = await page.js("location.pathname + location.search") == "/"
        await page.until("[...document.querySelectorAll('#people-nav a')]"
                         ".some(a => a.textContent.includes('Bob'))", "Bob in the list")
        await page.js("[...document.querySelectorAll('#people-nav a')]"
                      ".find(a => a.textContent.includes('Bob')).click()")
        await page.until("document.querySelector('#composer') !== null", "the composer")
        await page.js("document.querySelector('#composer').focus()")
        await page.type("Hello from Firefox")
        await page.until("[...document.querySelectorAll('.bubble.mine')]"
                         ".some(b => b.textContent.includes('Hello from Firefox'))",
                         "Alice's own message on her page")
        alice_key = control(alice, "GET", "/v1/identity")["address"]
        deadline = time.monotonic() + STEP_TIMEOUT
        got: list[Any] = []
        while time.monotonic() < deadline and not got:
            got = [m["text"] for m in control(
                bob, "GET", f"/v1/chat/conversations/{alice_key}/messages")["messages"]]
            await asyncio.sleep(0.1)
        seen["bob_got"] = got
        control(bob, "POST", f"/v1/chat/conversations/{alice_key}/messages",
                {"text": "Hello back, <i>Firefox</i>"})
        await page.until("[...document.querySelectorAll('.bubble:not(.mine)')]"
                         ".some(b => b.textContent.includes('Hello back, <i>Firefox</i>'))",
                         "Bob's answer, live on Alice's page")
        seen["answer_shown_as_text"] = await page.js("document.querySelector('.bubble i')"
                                                     " === null")
        artifacts.mkdir(parents=True, exist_ok=True)
        await page.screenshot(artifacts / "firefox-chat-light.png")
        seen["script_errors"] = [
            e["params"].get("text") for e in bidi.events
            if e.get("method") == "log.entryAdded" and e["params"].get("type") == "javascript"
            and e["params"].get("level") == "error"]
        with contextlib.suppress(Exception):
            await bidi("session.end")
        bidi.reader.cancel()
    return seen


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(Path(sys.argv[1])))))
