"""Chat on the command line between real nodes (``sidedoor up --detach`` processes).

Delivery from the outbox when a contact comes back, a room where one member was
away and catches up from a member who is not the sender, and the interactive
``sidedoor chat`` driven through a pseudo-terminal while messages arrive.
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
from test_cli import (
    CALL_TIMEOUT,
    Detached,
    _argv,
    _env,
    as_json,
    control,
    failed,
    ok,
    sd,
    sd_in,
    stop_node,
)

from sidedoor.testing.broker import start_broker, stop_broker
from sidedoor.testing.nodes import wait_until

WAIT = 20.0
until = functools.partial(wait_until, timeout=WAIT)


def start(homes: list[Path]) -> dict[Path, Detached]:
    """``up --detach`` for each home, in parallel."""
    up = ("up", "--detach", "--host", "127.0.0.1", "--no-discovery")
    procs = [subprocess.Popen(_argv(h, up), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, env=_env()) for h in homes]
    for proc in procs:
        out, err = proc.communicate(timeout=CALL_TIMEOUT)
        assert proc.returncode == 0 and "Node started" in out, (out, err)
    nodes = {}
    for home in homes:
        status = as_json(sd_in(home, "status", "--json"))
        nodes[home] = Detached(home, status["address"], status["port"], status["pid"])
    return nodes


def befriend(a: Detached, b: Detached) -> None:
    link = as_json(sd_in(a.home, "invite", "--link", "--json"))["link"]
    ok(sd_in(b.home, "join", link))


def history(node: Detached, who: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = as_json(sd_in(node.home, "history", who, "--json"))
    return result


@pytest.fixture
def homes(tmp_path: Path) -> Iterator[dict[str, Path]]:
    names = ("Ann", "Bob", "Cleo")
    homes = {n: tmp_path / n.lower() for n in names}
    for name, home in homes.items():
        ok(sd_in(home, "name", name))
    try:
        yield homes
    finally:
        for home in homes.values():
            stop_node(home)


def test_outbox_delivers_once_when_the_contact_comes_back(homes: dict[str, Path]) -> None:
    nodes = start([homes["Ann"], homes["Bob"]])
    ann, bob = nodes[homes["Ann"]], nodes[homes["Bob"]]
    assert as_json(sd_in(ann.home, "status", "--json"))["event_loop"] == "uvloop"
    befriend(ann, bob)  # an invite and a join between two nodes on uvloop
    ok(sd_in(bob.home, "down"))
    said = ok(sd(ann.home, "say", "Bob", "lunch at 12?"))  # a real process: exit 0
    assert "Stored" in said.stdout
    (pending,) = history(ann, "Bob")
    assert pending["text"] == "lunch at 12?" and pending["state"] == "pending"
    failed(sd_in(ann.home, "say", "Bob", "x" * 20_000), "limit")
    failed(sd_in(ann.home, "say", "nobody", "hi"), "no contact or room")

    bob = start([homes["Bob"]])[homes["Bob"]]  # back; it says hello to its contacts
    got = until(lambda: history(bob, "Ann"))
    assert [m["text"] for m in got] == ["lunch at 12?"]
    until(lambda: history(ann, "Bob")[0]["state"] == "delivered")
    assert "✓" in ok(sd_in(ann.home, "history", "Bob")).stdout
    inbox = as_json(sd_in(bob.home, "inbox", "--json"))
    assert [(c["name"], c["unread"]) for c in inbox["unread"]] == [("Ann", 1)]
    time.sleep(0.5)
    assert len(history(bob, "Ann")) == 1  # exactly once
    found = as_json(sd_in(bob.home, "history", "--search", "LUNCH", "--json"))
    assert [m["text"] for m in found] == ["lunch at 12?"]
    assert len(as_json(sd_in(bob.home, "history", "Ann", "--since", "1h", "--json"))) == 1
    assert as_json(sd_in(bob.home, "history", "Ann", "--since", "0s", "--json")) == []


def registered(node: Detached) -> bool:
    brokers = as_json(sd_in(node.home, "brokers", "--json"))
    return bool(brokers) and all(b["state"] == "registered" for b in brokers)


def test_mailbox_delivers_when_the_sender_is_gone(homes: dict[str, Path],
                                                   tmp_path: Path) -> None:
    broker, url = start_broker(tmp_path / "broker", env=_env())
    try:
        nodes = start([homes["Ann"], homes["Bob"]])
        ann, bob = nodes[homes["Ann"]], nodes[homes["Bob"]]
        for node in (ann, bob):
            ok(sd_in(node.home, "broker-add", url))
        for node in (ann, bob):
            until(lambda node=node: registered(node))
        befriend(ann, bob)
        ok(sd_in(ann.home, "say", "Bob", "hello"))
        until(lambda: history(ann, "Bob")[0]["state"] == "delivered")
        ok(sd_in(bob.home, "down"))
        ok(sd_in(ann.home, "say", "Bob", "left in your mailbox"))
        until(lambda: history(ann, "Bob")[-1]["state"] == "mailed")
        ok(sd_in(ann.home, "down"))  # the sender is gone before Bob is back

        bob = start([homes["Bob"]])[homes["Bob"]]
        got = until(lambda: len(history(bob, "Ann")) == 2 and history(bob, "Ann"))
        assert [m["text"] for m in got] == ["hello", "left in your mailbox"]
        ann = start([homes["Ann"]])[homes["Ann"]]
        until(lambda: history(ann, "Bob")[-1]["state"] == "delivered")
        time.sleep(0.5)
        assert len(history(bob, "Ann")) == 2  # by mail and from the outbox: shown once
    finally:
        stop_broker(broker)
        if broker.stdout is not None:
            broker.stdout.close()


def test_room_member_away_catches_up_from_another_member(homes: dict[str, Path]) -> None:
    nodes = start(list(homes.values()))
    ann, bob, cleo = (nodes[homes[n]] for n in ("Ann", "Bob", "Cleo"))
    befriend(ann, bob)
    befriend(ann, cleo)
    befriend(bob, cleo)
    room = as_json(sd_in(ann.home, "room", "create", "eng", "--with", "Bob", "Cleo", "--json"))
    assert room["admin"] and len(room["members"]) == 3
    for node in (bob, cleo):
        until(lambda node=node: as_json(sd_in(node.home, "rooms", "--json")))
    failed(sd_in(bob.home, "room", "remove", "eng", "Cleo"), "admins")

    ok(sd_in(cleo.home, "down"))
    ok(sd_in(ann.home, "say", "eng", "standup moved to 10:15"))
    ok(sd_in(bob.home, "say", "eng", "ok"))
    until(lambda: len(history(bob, "eng")) == 2)
    ok(sd_in(ann.home, "down"))  # the sender is gone: Cleo must learn it from Bob

    cleo = start([homes["Cleo"]])[homes["Cleo"]]
    got = until(lambda: len(history(cleo, "eng")) == 2 and history(cleo, "eng"))
    assert [m["text"] for m in got] == ["standup moved to 10:15", "ok"]
    assert "#eng" in ok(sd_in(cleo.home, "rooms")).stdout


def test_terminal_chat_types_and_receives_at_once(homes: dict[str, Path]) -> None:
    nodes = start([homes["Ann"], homes["Bob"]])
    ann, bob = nodes[homes["Ann"]], nodes[homes["Bob"]]
    befriend(ann, bob)
    ok(sd_in(bob.home, "say", "Ann", "earlier message"))
    until(lambda: history(ann, "Bob"))
    argv = _argv(ann.home, ("chat", "Bob"))
    # pexpect's terminal does not answer cursor-position queries; say so up front.
    env = {**_env(), "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"}
    child = pexpect.spawn(argv[0], argv[1:], env=env, encoding="utf-8", timeout=WAIT,
                          dimensions=(40, 120))
    try:
        child.expect("/quit")
        child.expect("earlier message")  # scrollback
        child.expect(">")
        # Bob types in his own chat view (his node's typing route, as his view calls it).
        # The view subscribes to events just after it shows the prompt: a signal sent
        # before that is gone, as typing signals are; the next one (3 s on) shows.
        # (The terminal view prints one line per burst of typing.)
        for _ in range(5):
            control(bob.home, "POST", "/v1/chat/conversations/Ann/typing")
            if child.expect(["Bob is typing", pexpect.TIMEOUT], timeout=3.5) == 0:
                break
        else:
            raise AssertionError("Bob's typing never showed in Ann's chat view")
        child.send("half a sent")  # typing, not done yet...
        ok(sd_in(bob.home, "say", "Ann", "incoming while you type"))
        child.expect("incoming while you type")  # ...and it shows up meanwhile
        child.send("ence\r")
        until(lambda: any(m["text"] == "half a sentence" for m in history(bob, "Ann")))
        child.expect("✓")  # delivered mark
        child.send("/quit\r")
        child.expect(pexpect.EOF)
    finally:
        with contextlib.suppress(Exception):
            child.close(force=True)
    assert child.exitstatus == 0, child.before
    texts = [m["text"] for m in history(bob, "Ann")]
    assert texts == ["earlier message", "incoming while you type", "half a sentence"]
    # Ann read them in the chat view: Bob sees ✓✓.
    until(lambda: all(m["state"] == "read" for m in history(bob, "Ann") if m["mine"]))


def test_usage_errors_need_no_node(tmp_path: Path) -> None:
    home = tmp_path / "nobody"
    for args in (("history", "Ann", "--since", "yesterday"), ("history",),
                 ("history", "Ann", "--search", "x"), ("say", "Ann"),
                 ("room", "create", "eng")):
        result = sd_in(home, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
    failed(sd_in(home, "say", "Ann", "hi"), "no node is running")
