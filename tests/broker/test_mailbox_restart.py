"""Mail held by a broker process survives kill -9 and reaches its recipient exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sidedoor.identity import PublicIdentity
from sidedoor.node import Node
from sidedoor.testing.broker import start_broker, stop_broker
from sidedoor.testing.nodes import befriend, eventually


async def test_mail_survives_a_broker_killed_with_sigkill(node_factory, home_factory,  # type: ignore[no-untyped-def]
                                                          tmp_path: Path) -> None:
    data = tmp_path / "broker"
    proc, url = start_broker(data)
    try:
        alice: Node = await node_factory()
        bob_home = home_factory("bob")
        bob: Node = await node_factory(home=bob_home)
        await befriend(alice, bob)
        for node in (alice, bob):
            link = await node.add_broker(url)
            await asyncio.wait_for(link.registered.wait(), 10)
        await bob.aclose()
        await asyncio.sleep(0.2)
        assert await alice.mail.send(bob.public.key, "test", b"sent while bob was away")
        await alice.aclose()
        stop_broker(proc)  # kill -9: no chance to flush anything more
        port = int(url.split(":")[2].split("/")[0])
        proc, url2 = start_broker(data, port=port)
        assert url2 == url  # same key, same address

        got: list[tuple[str, bytes]] = []

        async def handler(sender: PublicIdentity, payload: bytes) -> None:
            got.append((sender.address, payload))

        bob2 = Node(bob_home, host="127.0.0.1")
        bob2.mail.add_handler("test", handler)
        await bob2.start()
        try:
            await eventually(lambda: got)
            await asyncio.sleep(0.5)
            assert got == [(alice.public.address, b"sent while bob was away")]
        finally:
            await bob2.aclose()
        # Acknowledged, so deleted: a restart delivers nothing again.
        bob3 = Node(bob_home, host="127.0.0.1")
        bob3.mail.add_handler("test", handler)
        await bob3.start()
        try:
            link3 = next(iter(bob3.brokers.values()))
            await asyncio.wait_for(link3.registered.wait(), 10)
            assert link3.mail_waiting == 0
            await asyncio.sleep(0.3)
            assert len(got) == 1
        finally:
            await bob3.aclose()
    finally:
        stop_broker(proc)
