"""Browser tests: real `sidedoor` nodes in the background, Debian's Chromium driven by Playwright.

Skipped (with the reason) when /usr/bin/chromium or the playwright package is missing.
Screenshots go to ``test-artifacts/`` at the top of the repository (git ignores it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CALL_TIMEOUT = 30.0
# No updates, sync, metrics or other calls home from the test browser.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-background-networking", "--disable-component-update",
    "--disable-default-apps", "--disable-sync", "--no-first-run", "--disable-breakpad",
    "--disable-domain-reliability", "--metrics-recording-only", "--no-pings",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
]

if not CHROMIUM.exists():
    pytest.skip("browser tests need Debian's chromium at /usr/bin/chromium "
                "(apt-get install chromium)", allow_module_level=True)
playwright_sync = pytest.importorskip(
    "playwright.sync_api",
    reason="browser tests need the playwright package (pip install playwright)")


def sd(home: Path, *args: str, timeout: float = CALL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SIDEDOOR_HOME", "DISPLAY")}
    env["COLUMNS"] = "200"
    result = subprocess.run([sys.executable, "-m", "sidedoor", "--home", str(home), *args],
                            capture_output=True, text=True, timeout=timeout, env=env,
                            stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


@dataclass
class User:
    name: str
    home: Path
    address: str
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def login_url(self) -> str:
        """A one-time login link, asked for as `sidedoor open` does (with the bearer token)."""
        token = json.loads((self.home / "control.json").read_text())["token"]
        request = urllib.request.Request(self.base + "/v1/web/login", data=b"{}", headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            url = json.loads(resp.read())["url"]
        assert isinstance(url, str)
        return url

    def api(self, *args: str) -> Any:
        """A CLI command's --json answer (a real `sidedoor` process: about a second)."""
        return json.loads(sd(self.home, *args, "--json").stdout)

    def get(self, path: str) -> Any:
        """GET from the node's control API, as the CLI does (bearer token), in process."""
        token = json.loads((self.home / "control.json").read_text())["token"]
        request = urllib.request.Request(self.base + path,
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())


def start_user(base: Path, name: str) -> User:
    home = base / name.lower()
    sd(home, "name", name)
    sd(home, "up", "--detach", "--host", "127.0.0.1", "--no-discovery")
    status = json.loads(sd(home, "status", "--json").stdout)
    return User(name, home, status["address"], status["control_port"])


def stop_user(user: User) -> None:
    with contextlib.suppress(Exception):
        sd(user.home, "down", timeout=20)
        return
    with contextlib.suppress(OSError, ValueError):
        os.kill(int((user.home / "node.lock").read_text().strip()), signal.SIGKILL)


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, User]]:
    base = tmp_path_factory.mktemp("ui")
    started: dict[str, User] = {}
    try:
        with ThreadPoolExecutor(3) as pool:
            jobs = {name: pool.submit(start_user, base, name) for name in ("Alice", "Bob", "Cleo")}
            for name, job in jobs.items():
                started[name] = job.result()
        yield started
    finally:
        for user in started.values():
            stop_user(user)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# Uncaught errors in the pages' scripts, checked after every test.
PAGE_ERRORS: list[str] = []


@pytest.fixture(autouse=True)
def _no_script_errors() -> Iterator[None]:
    PAGE_ERRORS.clear()
    yield
    assert not PAGE_ERRORS, f"the page's scripts failed: {PAGE_ERRORS}"


def open_ui(browser: Any, user: User, scheme: str = "light") -> Any:
    """A fresh browser profile (its own cookies) signed in to ``user``'s node."""
    context = browser.new_context(color_scheme=scheme, viewport={"width": 1280, "height": 860})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.on("pageerror", lambda exc: PAGE_ERRORS.append(f"{user.name}: {exc}"))
    page.goto(user.login_url())
    page.wait_for_selector("body[data-ready]")
    return page


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(150)  # let the last update paint
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def wait_until(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)
