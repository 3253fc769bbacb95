"""The long-running processes' event loop: uvloop when installed, asyncio otherwise,
and two nodes that make a session, become contacts and chat under uvloop."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from sidedoor import event_loop
from sidedoor.node import Node
from sidedoor.testing.nodes import befriend, eventually

uvloop = pytest.importorskip("uvloop")


def test_uvloop_is_the_default_when_installed() -> None:
    assert event_loop.loop_factory() is uvloop.new_event_loop

    async def which() -> str:
        return event_loop.loop_name()

    assert event_loop.run(which()) == "uvloop"


def test_the_environment_can_ask_for_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.LOOP_ENV, "asyncio")
    assert event_loop.loop_factory() is None

    async def which() -> str:
        return event_loop.loop_name()

    assert event_loop.run(which()) == "asyncio"


def test_without_uvloop_the_standard_loop_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now fails
    assert event_loop.loop_factory() is None

    async def which() -> str:
        return event_loop.loop_name()

    assert event_loop.run(which()) == "asyncio"


def test_two_nodes_chat_under_uvloop(tmp_path: Path) -> None:
    """A session, an introduction and a chat message both ways, all on uvloop: the
    transports are uvloop's own classes (not asyncio.Transport subclasses)."""

    async def main() -> list[str]:
        assert event_loop.loop_name() == "uvloop"
        homes = [tmp_path / "a", tmp_path / "b"]
        for home in homes:
            home.mkdir(mode=0o700)
        async with Node(homes[0], host="127.0.0.1", port=0) as a, \
                Node(homes[1], host="127.0.0.1", port=0) as b:
            await befriend(a, b)
            conn = await a.reach(b.public.key)
            assert not isinstance(conn.transport, asyncio.Transport)  # uvloop's own
            await a.chat.send(b.public.key, "over uvloop")
            await b.chat.send(a.public.key, "and back")
            assert b.db is not None
            got: list[str] = []
            async with asyncio.timeout(10):
                while len(got) < 2:
                    await asyncio.sleep(0.02)
                    got = [m.text for m in await b.db.run(b.chat.store.history, a.public.key)]
            await eventually(lambda: a.chat.is_online(b.public.key), what="presence")
            return sorted(got)

    assert event_loop.run(main()) == ["and back", "over uvloop"]
