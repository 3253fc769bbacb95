"""The web UI in Firefox: Debian's firefox-esr, driven over WebDriver BiDi.

Everything (two nodes and the browser) runs inside a network namespace with only a
loopback interface, which `firefox_session.py` describes; this test makes the
namespace, runs the session there and checks what it saw.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sidedoor.testing.netlab import Host, NetLab, unavailable_reason

FIREFOX = Path("/usr/bin/firefox-esr")
SESSION = Path(__file__).with_name("firefox_session.py")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [
    pytest.mark.skipif(not FIREFOX.exists(),
                       reason="needs Debian's firefox-esr (apt-get install firefox-esr)"),
    pytest.mark.skipif(unavailable_reason() is not None,
                       reason=f"runs Firefox in a network namespace: {unavailable_reason()}"),
]


def kill_everything_in(netns: str) -> None:
    # The nodes detach from the session's process group: find them by namespace.
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                          timeout=10, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def test_chat_works_in_firefox() -> None:
    with NetLab(prefix="sdff") as lab:
        netns = lab.namespace("firefox")
        host = Host(netns=netns, ifname="lo", ipv4="127.0.0.1")
        lab.hosts.append(host)
        try:
            done = host.run(sys.executable, str(SESSION), str(ARTIFACTS), timeout=240,
                            check=False)
        finally:
            kill_everything_in(netns)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["browser"].startswith("firefox ")
    assert seen["cookie_login"] is True  # the one-time link was traded for a cookie
    assert seen["bob_got"] == ["Hello from Firefox"]  # typed with real key presses
    assert seen["answer_shown_as_text"] is True  # live over the event stream, not as HTML
    assert seen["script_errors"] == []
    assert (ARTIFACTS / "firefox-chat-light.png").stat().st_size > 10_000
