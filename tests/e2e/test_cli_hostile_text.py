"""Text that others control, on the command line: shown as it is, never taken for markup.

Names come from contact cards and the LAN (`clean_name` keeps ``[``), messages from
contact requests, reasons from the other node: any of them may hold rich markup
(``Eve [/]`` made `sidedoor requests` crash with a MarkupError) or terminal control
characters. Real nodes show the everyday paths; a fake control API (in process)
shows the ones that need a LAN or a hostile peer: `nearby`, invite codes, reasons
with ESC and line breaks.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from test_cli import (
    Detached,
    as_json,
    detached_nodes,
    failed,
    ok,
    sd,
    sd_in,
)

from sidedoor.cli import common
from sidedoor.cli.common import _api, _run
from sidedoor.control.client import ControlClient
from sidedoor.errors import ControlAPIError
from sidedoor.home import CONTROL_FILE
from sidedoor.identity import PublicIdentity, load_or_create_identity, safety_words
from sidedoor.names import clean_name
from sidedoor.storage.db import Database

ESC = "\x1b"
# Markup that crashes rich ("[/]" closes nothing), markup that would silently restyle,
# and an emoji code: all must show as typed.
EVE = "Eve [/] [bold red]boss[/bold red] :smile:"
VIC = "[link=https://evil.example]Vic[/link]"
JOE = "Joe [/ ] \\[x]"
MESSAGE = f"hi [/] [blink]urgent[/blink] {ESC}[2J{ESC}]0;pwned{ESC}\\ bye"


def no_control_chars(text: str) -> None:
    assert ESC not in text and "\x07" not in text and "\x9b" not in text, repr(text)


def set_name(home: Path, name: str) -> None:
    """A name as the node keeps it (cleaned like a card's), without a CLI process."""
    load_or_create_identity(home)
    db = Database(home)
    try:
        db.set_setting("name", clean_name(name))
    finally:
        db.close()


STARTED: dict[str, subprocess.CompletedProcess[str]] = {}  # each `up --detach`, by node


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Detached]]:
    """Eve, Vic and Joe, with names full of markup, up in the background on 127.0.0.1.

    What each `up --detach` printed is in STARTED (it printed the name: a test of its own).
    """
    base = tmp_path_factory.mktemp("hostile")
    names = {"eve": EVE, "vic": VIC, "joe": JOE}
    homes = {key: base / key for key in names}
    for key, home in homes.items():
        set_name(home, names[key])
    with detached_nodes(homes) as (nodes, started):
        STARTED.update(started)
        for key, node in nodes.items():
            assert as_json(sd_in(node.home, "status", "--json"))["name"] == names[key]
        yield nodes


@pytest.fixture(autouse=True)
def _wide_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, rich has no terminal and draws 80 columns: a long name would wrap in
    its table cell, and no longer be found in one piece."""
    monkeypatch.setattr(common.out, "_width", 300)


def shown(result: Any) -> str:
    text = ok(result).stdout
    no_control_chars(text)
    return str(text)


# ------------------------------------------------------------- the helpers

@pytest.mark.parametrize(("raw", "expected"), [
    ("Eve [/]", "Eve [/]"),
    (f"a{ESC}[31mred{ESC}[0m", "a[31mred[0m"),
    ("two\nlines\r\tand\u2028more", "two lines  and more"),
    ("bidi \u202eevil\u202c", "bidi evil"),
    ("Zoë 日本 🙂", "Zoë 日本 🙂"),
])
def test_printable_and_safe(raw: str, expected: str) -> None:
    assert common.printable(raw) == expected
    console = Console(file=io.StringIO(), width=200, highlight=False, emoji=False,
                      color_system=None)
    safe = common.safe(raw)
    console.print(f"[bold]{safe}[/] | {safe}!")
    assert console.file.getvalue() == f"{expected} | {expected}!\n"


# --------------------------------------------------------- with real nodes

def test_up_detach_shows_the_name_as_text(trio: dict[str, Detached]) -> None:
    for key, name in (("eve", EVE), ("vic", clean_name(VIC)), ("joe", clean_name(JOE))):
        text = shown(STARTED[key])  # the node started, then the print of its name crashed
        assert "Node started" in text and f"Name        {name}" in text


def test_markup_in_names_and_messages_is_shown_as_text(trio: dict[str, Detached]) -> None:
    eve, vic = trio["eve"], trio["vic"]
    clean_vic = clean_name(VIC)

    text = shown(sd_in(eve.home, "status"))
    assert f"Name        {EVE}" in text
    text = shown(sd_in(eve.home, "id"))
    assert f"Name         {EVE}" in text
    assert f"Your name is now {EVE}" in shown(sd_in(eve.home, "name", EVE))

    sent = shown(sd_in(eve.home, "add", vic.address, "--addr", vic.addr, "-m", MESSAGE))
    assert f"Request sent. {clean_vic} will see it" in sent
    assert f"sent to {clean_vic} (" in shown(sd_in(eve.home, "requests"))

    waiting = shown(sd_in(vic.home, "requests"))  # crashed: MarkupError on "Eve [/]"
    assert f"#1 {EVE} (" in waiting
    assert "hi [/] [blink]urgent[/blink]" in waiting and "bye" in waiting
    words = safety_words(PublicIdentity.from_address(vic.address),
                         PublicIdentity.from_address(eve.address))
    assert f"safety words: {words}" in waiting

    assert f"{EVE} is now a contact." in shown(sd_in(vic.home, "requests", "accept", "1"))
    listed = shown(sd_in(vic.home, "contacts"))
    assert "Eve [/]" in listed and "[bold red]boss" in listed
    # (The fake API below answers in the same shape.)
    (real,) = as_json(sd_in(vic.home, "contacts", "--json"))
    assert set(real) == set(_fake_answers()["GET", "/v1/contacts"]["contacts"][0])

    verify = shown(sd_in(vic.home, "contact", "verify", "Eve", "--yes"))
    assert f"Safety words with {EVE}: {words}" in verify
    assert f"{EVE} is verified." in verify

    renamed = shown(sd_in(vic.home, "contact", "rename", "Eve", "[/]Evil[red]"))
    assert "Renamed to [/]Evil[red]" in renamed
    ok(sd_in(vic.home, "contact", "block", "[/]Evil"))
    assert "[/]Evil[red] (blocked)" in shown(sd_in(vic.home, "contacts"))
    ok(sd_in(vic.home, "contact", "unblock", "[/]Evil"))


def test_markup_in_a_link_joiner_sees(trio: dict[str, Detached]) -> None:
    eve, joe = trio["eve"], trio["joe"]
    link = as_json(sd_in(eve.home, "invite", "--link", "--json"))["link"]
    assert f"{EVE} and you are now contacts." in shown(sd_in(joe.home, "join", link))
    # The other way round, a name with backslashes and brackets.
    link = as_json(sd_in(joe.home, "invite", "--link", "--json"))["link"]
    vic = trio["vic"]
    assert f"{clean_name(JOE)} and you are now contacts." in shown(sd_in(vic.home, "join", link))


def test_markup_in_error_messages_is_shown_as_text(trio: dict[str, Detached]) -> None:
    vic = trio["vic"]
    # The message quotes what was typed; "[/]" in it crashed the error line itself.
    failed(sd_in(vic.home, "contact", "block", "[/]nobody"), "no contact matches '[/]nobody'")
    failed(sd(vic.home, "contact", "remove", "[bold]x"), "no contact matches '[bold]x'")


# ------------------------------------------------ a fake API, hostile data

HOSTILE = f"Mal [/] {ESC}[31mred{ESC}[0m\nsecond line [bold]b[/bold]"
HOSTILE_SHOWN = "Mal [/] [31mred[0m second line [bold]b[/bold]"
ADDRESS = "sd" + "a" * 56


def _fake_answers() -> dict[tuple[str, str], Any]:
    now = time.time()
    contact = {"petname": HOSTILE, "name": HOSTILE, "address": ADDRESS,
               "fingerprint": "able-baker-charlie-delta", "safety_words": "one two three",
               "source": "link", "added_at": now, "verified": False, "blocked": True,
               "last_seen": now - 600, "online": False, "away": False, "presence": "offline",
               "path": None, "addrs": []}
    return {
        ("GET", "/v1/nearby"): {"discovery": True, "nearby": [
            {"number": 1, "address": ADDRESS, "name": HOSTILE, "fingerprint": "a-b-c-d",
             "hosts": ["127.0.0.1"], "port": 1, "standing": "stranger",
             "addrs": ["127.0.0.1:1"]}]},
        ("GET", "/v1/requests"): {
            "incoming": [{"id": 1, "direction": "in", "name": HOSTILE, "address": ADDRESS,
                          "fingerprint": "a-b-c-d", "safety_words": "one two three",
                          "message": HOSTILE, "via": HOSTILE, "received_at": now}],
            "outgoing": [{"id": 2, "direction": "out", "name": HOSTILE, "address": ADDRESS,
                          "fingerprint": "a-b-c-d", "safety_words": "one two three",
                          "message": "", "via": "link", "received_at": now}]},
        ("GET", "/v1/contacts"): {"contacts": [contact]},
        ("GET", f"/v1/contacts/{ADDRESS}"): contact,
        ("POST", f"/v1/contacts/{ADDRESS}/verify"): contact,
        ("POST", "/v1/add"): {"status": "accepted", "name": HOSTILE, "address": ADDRESS},
        ("POST", "/v1/join"): {"status": "accepted", "name": HOSTILE},
        ("POST", "/v1/invites"): {"code": "7-guitar-orbit", "expires_at": now + 60},
        ("POST", "/v1/requests/1/accept"): {"contact": contact, "told": False},
        ("GET", "/v1/status"): {
            "running": True, "pid": 1, "uptime": 5, "name": HOSTILE, "address": ADDRESS,
            "fingerprint": "a-b-c-d", "listening": [HOSTILE], "port": 1, "discovery": False,
            "sessions": [{"address": ADDRESS, "fingerprint": HOSTILE, "direction": "in",
                          "path": HOSTILE, "remote_addr": HOSTILE, "since": now}]},
        ("POST", "/v1/ping"): {"address": ADDRESS, "addr": HOSTILE, "path": HOSTILE,
                               "pattern": HOSTILE, "handshake_ms": 1.0, "rtts_ms": [1.0],
                               "contact": False, "reachable": True},
    }


@pytest.fixture
def fake_api(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home whose "node" answers from `_fake_answers`; adding "refuse" fails."""
    load_or_create_identity(home)
    (home / CONTROL_FILE).write_text(json.dumps({"port": 9, "token": "t", "pid": 1}))
    answers = _fake_answers()

    async def call(self: ControlClient, method: str, path: str,
                   body: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        if path == "/v1/add" and body and body.get("address") == "refuse":
            raise ControlAPIError(f"they refused the request: {HOSTILE}", 502)
        return answers[method, path.replace("%2F", "/")]

    async def events(self: ControlClient) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "invite.accepted", "nameplate": 7, "name": HOSTILE}

    monkeypatch.setattr(ControlClient, "call", call)
    monkeypatch.setattr(ControlClient, "events", events)
    return home


@pytest.mark.parametrize("args", [
    ("nearby",),
    ("requests",),
    ("requests", "accept", "1"),
    ("contacts",),
    ("contact", "verify", ADDRESS, "--yes"),
    ("add", "1"),
    ("join", "7-guitar-orbit"),
    ("invite",),
    ("status",),
    ("ping", "OWN-ADDRESS", "--addr", "127.0.0.1:1"),
])
def test_hostile_answers_are_shown_as_text(fake_api: Path, args: tuple[str, ...]) -> None:
    own = load_or_create_identity(fake_api)[0].address  # ping checks its address first
    args = tuple(own if arg == "OWN-ADDRESS" else arg for arg in args)
    text = shown(sd_in(fake_api, *args))  # a MarkupError would be raised here
    assert HOSTILE_SHOWN in text, text  # every field, table cells too: as it is, on one line


def test_hostile_error_reasons_are_one_plain_line(fake_api: Path) -> None:
    message = failed(sd_in(fake_api, "add", "refuse"), "they refused the request")
    no_control_chars(message)
    assert message == f"error: they refused the request: {HOSTILE_SHOWN}"


def test_the_fake_status_is_the_real_shape(trio: dict[str, Detached]) -> None:
    real = _run(_api(trio["vic"].home, "GET", "/v1/status"))
    assert set(_fake_answers()["GET", "/v1/status"]) <= set(real)
