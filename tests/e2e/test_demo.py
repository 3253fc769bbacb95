"""`sidedoor demo`: the one-machine tour runs, says what it did, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

URL = re.compile(r"http://127\.0\.0\.1:\d+/login\?t=[A-Za-z0-9_-]{20,}")


def demo_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("sidedoor-demo-*")}


def demo_env() -> dict[str, str]:
    # No desktop: nothing may try to open a real browser during the tests.
    return {k: v for k, v in os.environ.items()
            if k not in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER", "SIDEDOOR_HOME")}


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidedoor", "demo", *args],
                          capture_output=True, text=True, timeout=120, env=demo_env())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def login_status(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=10) as resp:
            return int(resp.status), ""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Set-Cookie", "")


def test_demo_walks_through_every_feature_and_cleans_up() -> None:
    before = demo_folders()
    result = run_demo("--no-wait")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Alice is registered" in out and "Bob is registered" in out
    assert re.search(r"the code is \d+-\w+-\w+", out)
    assert "Bob's contacts: Alice" in out and "Alice's contacts: Bob" in out
    assert "Bob sees: “Hi Bob! Lunch at 12?”" in out
    assert "Alice sees: “Sure, see you there.”" in out
    assert "✓✓ (read)" in out
    assert "the broker holds one sealed envelope for Bob" in out
    assert "Bob is back; he gets: “The slides are on their way.”" in out
    assert "byte-identical" in out
    assert "as a stranger" in out
    assert "Press Ctrl-C" not in out  # --no-wait: no UIs to keep alive
    assert demo_folders() == before


def test_demo_json_reports_the_measures() -> None:
    before = demo_folders()
    result = run_demo("--no-wait", "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["alice"].startswith("sd") and facts["bob"].startswith("sd")
    assert facts["broker"].startswith("sidedoor-broker://127.0.0.1:")
    assert facts["path"] == "lan"
    assert facts["file"]["identical"] is True and facts["file"]["bytes"] == 64_000_000
    assert 0 < facts["file_received_s"] <= facts["elapsed_s"]
    assert set(facts["ui"]) == {"alice", "bob"} and facts["opened"] is False
    assert demo_folders() == before


def test_demo_keeps_both_uis_and_the_cli_until_ctrl_c() -> None:
    before = demo_folders()
    proc = subprocess.Popen([sys.executable, "-m", "sidedoor", "demo", "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=demo_env())
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Press Ctrl-C" in line or not line:
                break
        text = "".join(lines)
        urls = URL.findall(text)
        assert len(urls) == 2, text
        for url in urls:
            status, cookie = login_status(url)
            assert status == 303 and "HttpOnly" in cookie, (url, status)
            assert login_status(url)[0] != 303  # the link works once
        bob_home = next(ln.split("--home ")[1].split()[0] for ln in lines
                        if "--home" in ln and "chat Alice" in ln)
        contacts = subprocess.run(
            [sys.executable, "-m", "sidedoor", "--home", bob_home, "contacts", "--json"],
            capture_output=True, text=True, timeout=30, env=demo_env())
        assert contacts.returncode == 0, contacts.stderr
        assert '"Alice"' in contacts.stdout
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert not Path(bob_home).exists()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert demo_folders() == before
