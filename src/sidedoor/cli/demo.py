"""`sidedoor demo`: two nodes on this machine, Alice and Bob, meet and talk.

Everything happens in a temporary folder, on 127.0.0.1 only (no LAN discovery),
and is removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
import time
from pathlib import Path

import click

from sidedoor.cli.common import out, safe
from sidedoor.control.server import ControlServer
from sidedoor.identity import safety_words
from sidedoor.node import Node


def _step(number: int, text: str) -> None:
    out.print(f"\n[bold cyan]{number}.[/] {text}")


def _result(text: str) -> None:
    out.print(f"   [green]✓[/] {text}")


async def run_demo(keep: bool) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sidedoor-demo-") as tmp:
        homes = Path(tmp) / "alice", Path(tmp) / "bob"
        alice = Node(homes[0], host="127.0.0.1", remember_port=False)
        bob = Node(homes[1], host="127.0.0.1", remember_port=False)
        async with alice, bob:
            _step(1, "Alice and Bob each install sidedoor: each gets a key, and an address "
                     "made from it.")
            await alice.set_name("Alice")
            await bob.set_name("Bob")
            for node in (alice, bob):
                _result(f"{node.name}: {safe(node.public.address)} "
                        f"(fingerprint {node.public.fingerprint()})")

            _step(2, "Alice makes a one-time invite link and sends it to Bob.")
            link = await alice.introductions.create_link()
            _result(f"{safe(link[:60])}…")

            _step(3, "Bob joins with the link: his node reaches Alice's over an encrypted "
                     "session, and both become contacts.")
            status, name = await bob.introductions.join_link(link)
            _result(f"Bob's request was {status} by {safe(name)}")
            for node in (alice, bob):
                assert node.contacts is not None and node.db is not None
                names = [c.petname for c in await node.db.run(node.contacts.all)]
                _result(f"{node.name}'s contacts: {safe(', '.join(names))}")
            words = safety_words(alice.public, bob.public)
            _result(f"Both screens show the same safety words: [bold]{words}[/]")

            _step(4, "Bob checks that Alice's node answers, and proves it is really hers.")
            ping = await bob.ping(alice.public.address, "127.0.0.1", alice.port, count=3)
            rtts = ", ".join(f"{r:.2f}" for r in ping.rtts_ms)
            _result(f"reachable as a contact, path {ping.path}, handshake {ping.pattern} "
                    f"{ping.handshake_ms:.1f} ms, round trips {rtts} ms")

            _step(5, "A stranger's node can knock, and nothing more.")
            mallory = Node(Path(tmp) / "mallory", host="127.0.0.1", remember_port=False)
            async with mallory:
                knock = await mallory.ping(alice.public.address, "127.0.0.1", alice.port)
                assert not knock.contact
                _result("Mallory's node gets an answer, as a stranger: it may send Alice a "
                        "contact request, which waits for her, and nothing else")
            out.print(f"\n[bold]Done in {time.monotonic() - started:.1f} s.[/] "
                      "Chat, files and the web page are coming next.")
            if keep:
                await _keep_running(alice, bob, homes)
        out.print("[dim]The demo's folder is removed.[/]")


async def _keep_running(alice: Node, bob: Node, homes: tuple[Path, Path]) -> None:
    servers = [ControlServer(alice), ControlServer(bob)]
    for server in servers:
        await server.start()
    out.print("\nBoth nodes keep running; try, in another terminal:")
    for home in homes:
        out.print(f"  sidedoor --home {home} status")
        out.print(f"  sidedoor --home {home} contacts")
    out.print("Press Ctrl-C to stop and clean up.")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        for server in servers:
            with contextlib.suppress(Exception):
                await server.aclose()


@click.command("demo")
@click.option("--keep", is_flag=True, help="Keep both nodes running until Ctrl-C.")
def demo_command(keep: bool) -> None:
    """Try sidedoor on this machine: Alice and Bob meet, pair and check each other.

    Two nodes start in a temporary folder (on 127.0.0.1 only), pair with a one-time
    link, and ping each other over an authenticated, encrypted session. Nothing is
    left behind.

    \b
    Example:
      sidedoor demo
      sidedoor demo --keep
    """
    asyncio.run(run_demo(keep))
