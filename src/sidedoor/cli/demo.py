"""`sidedoor demo`: the whole product on one machine, in about ten seconds.

A broker and two nodes, Alice and Bob, start in a temporary folder, on 127.0.0.1
only (no LAN discovery). They pair with an invite code that meets at the broker,
chat, leave a message for each other while one is away, and send a file; then both
web UIs open so a newcomer can click around. Ctrl-C removes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import tempfile
import time
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sidedoor.broker.server import BrokerServer
from sidedoor.cli.common import out, safe
from sidedoor.cli.web import browser_available
from sidedoor.control.server import ControlServer
from sidedoor.errors import SidedoorError
from sidedoor.identity import safety_words
from sidedoor.node import Node
from sidedoor.services.transfers import SETTING_DOWNLOADS, human_bytes

FILE_NAME = "Q3 figures.bin"
FILE_SIZE = 64_000_000
STEP_TIMEOUT = 30.0  # any single step of the tour; it takes well under a second here

Event = dict[str, Any]


class DemoFailed(SidedoorError):
    """A step of the tour did not happen in time (the machine is very busy, or a bug)."""


class Tour:
    """Prints the steps as they happen, or gathers them for ``--json``."""

    def __init__(self, as_json: bool, started: float) -> None:
        self.as_json = as_json
        self.started = started
        self.number = 0
        self.facts: dict[str, Any] = {}

    def step(self, text: str) -> None:
        self.number += 1
        if not self.as_json:
            out.print(f"\n[bold cyan]{self.number}.[/] {text}")

    def result(self, text: str) -> None:
        if not self.as_json:
            out.print(f"   [green]✓[/] {text}")

    def elapsed(self) -> float:
        return time.monotonic() - self.started


async def next_event(queue: asyncio.Queue[Event | None], match: Callable[[Event], bool],
                     what: str) -> Event:
    """The next event on ``queue`` that ``match`` accepts; `DemoFailed` after a while."""
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            while True:
                event = await queue.get()
                if event is None:
                    raise DemoFailed(f"the node's event stream ended while waiting for {what}")
                if match(event):
                    return event
    except TimeoutError:
        raise DemoFailed(f"{what} did not happen within {STEP_TIMEOUT:g} s") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _make_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for offset in range(0, FILE_SIZE, 1 << 20):
            f.write(os.urandom(min(1 << 20, FILE_SIZE - offset)))


def _node(home: Path) -> Node:
    return Node(home, host="127.0.0.1", remember_port=False)


async def _wait_registered(node: Node) -> str:
    (link,) = node.brokers.values()
    try:
        await asyncio.wait_for(link.registered.wait(), STEP_TIMEOUT)
    except TimeoutError:
        raise DemoFailed(f"{node.name} could not register at the broker") from None
    return link.observed or "?"


async def run_tour(tour: Tour, tmp: Path, stack: contextlib.AsyncExitStack
                   ) -> tuple[Node, Node]:
    """The steps; returns the two running nodes, which ``stack`` closes."""
    broker = BrokerServer(tmp / "broker", host="127.0.0.1", port=0)
    await stack.enter_async_context(broker)
    alice = await stack.enter_async_context(_node(tmp / "alice"))
    bob = _node(tmp / "bob")
    # Bob's node is replaced in step 7: close whichever one is current.
    current = {"bob": bob}

    async def close_bob() -> None:
        await current["bob"].aclose()

    stack.push_async_callback(close_bob)
    await bob.start()

    tour.step("Alice and Bob each install sidedoor: each gets a key, and an address made "
              "from it that stays theirs on any network.")
    await alice.set_name("Alice")
    await bob.set_name("Bob")
    for node in (alice, bob):
        tour.result(f"{node.name}: {safe(node.public.address)} "
                    f"(fingerprint {node.public.fingerprint()})")
    tour.facts["alice"] = alice.public.address
    tour.facts["bob"] = bob.public.address

    tour.step("A broker runs (usually on a small server anyone can set up; here on this "
              "machine). Both nodes register with it, so each can be found by key.")
    url = broker.url()
    tour.facts["broker"] = url
    for node in (alice, bob):
        await node.add_broker(url)
        seen = await _wait_registered(node)
        tour.result(f"{node.name} is registered; the broker sees it at {safe(seen)}")

    tour.step("Alice makes a one-time invite code and reads it out to Bob.")
    invite = await alice.invites.create()
    code = str(invite.code)
    tour.facts["invite_code"] = code
    tour.result(f"the code is [bold]{safe(code)}[/]; it works once, for a few minutes")

    tour.step("Bob types the code. His node finds Alice's through the broker, both prove "
              "the code without sending it, and they become contacts.")
    contact = await bob.invites.join(code)
    tour.result(f"Bob's contacts: {safe(contact.petname)}")
    await _until(lambda: alice.standing(bob.public.key) == "contact", "Alice to add Bob")
    tour.result("Alice's contacts: Bob")
    words = safety_words(alice.public, bob.public)
    tour.result(f"both screens show the same safety words: [bold]{words}[/]")

    tour.step("Bob checks that Alice's node answers, over an encrypted session.")
    ping = await bob.ping_reach(alice.public.key, count=3)
    rtts = ", ".join(f"{r:.2f}" for r in ping.rtts_ms)
    how = (f"a new session ({ping.pattern} handshake, {ping.handshake_ms:.1f} ms)"
           if ping.handshake_ms else "the session the invite opened")
    tour.result(f"reached by path “{ping.path}”, over {how}; round trips {rtts} ms")
    tour.facts["path"] = ping.path

    tour.step("They chat.")
    bob_events = bob.events.subscribe()
    alice_events = alice.events.subscribe()
    sent = await alice.chat.send(bob.public.key, "Hi Bob! Lunch at 12?")
    got = await next_event(bob_events, lambda e: e["type"] == "chat.message"
                           and not e["message"]["mine"], "Bob receiving Alice's message")
    tour.result(f"Bob sees: “{safe(got['message']['text'])}”")
    await next_event(alice_events, lambda e: e["type"] == "chat.delivered"
                     and e["id"] == sent.id.hex(), "Alice's message being delivered")
    tour.result("Alice's message shows ✓ (delivered)")
    await bob.chat.send(alice.public.key, "Sure, see you there.")
    got = await next_event(alice_events, lambda e: e["type"] == "chat.message"
                           and not e["message"]["mine"], "Alice receiving Bob's reply")
    tour.result(f"Alice sees: “{safe(got['message']['text'])}”")
    await bob.chat.mark_read(alice.public.key)
    await next_event(alice_events, lambda e: e["type"] == "chat.read",
                     "Alice seeing that Bob read her message")
    tour.result("Alice's message shows ✓✓ (read)")
    bob.events.unsubscribe(bob_events)

    tour.step("Bob shuts his laptop. Alice writes anyway: the message is sealed for Bob and "
              "left in his broker mailbox, which cannot read it.")
    await bob.aclose()
    note = await alice.chat.send(bob.public.key, "The slides are on their way.")
    mailbox = broker.mailbox
    assert mailbox is not None
    for _ in range(int(STEP_TIMEOUT / 0.02)):
        if await asyncio.to_thread(mailbox.count, bob.public.key):
            break
        await asyncio.sleep(0.02)
    else:
        raise DemoFailed("Alice's node did not leave the message at the broker")
    tour.result("the broker holds one sealed envelope for Bob: the message will arrive even "
                "if Alice shuts down too")
    bob = current["bob"] = _node(tmp / "bob")
    bob_events = bob.events.subscribe()
    await bob.start()
    await _wait_registered(bob)
    got = await next_event(bob_events, lambda e: e["type"] == "chat.message"
                           and e["message"]["id"] == note.id.hex(),
                           "Bob receiving the message left for him")
    tour.result(f"Bob is back; he gets: “{safe(got['message']['text'])}”")

    tour.step(f"Alice sends Bob a file ({human_bytes(FILE_SIZE)}); Bob accepts it.")
    source = tmp / "alice-files" / FILE_NAME
    await asyncio.to_thread(_make_file, source)
    downloads = tmp / "bob-downloads"
    assert bob.db is not None
    await bob.db.run(bob.db.set_setting, SETTING_DOWNLOADS, str(downloads))
    began = time.monotonic()
    offer = await alice.transfers.send([str(source)], bob.public.address, "Q3 numbers")
    offered = await next_event(bob_events, lambda e: e["type"] == "transfer.offered"
                               and e["id"] == offer["id"], "Bob seeing Alice's offer")
    tour.result(f"Bob is offered {safe(', '.join(offered['names']))} "
                f"({human_bytes(offered['total_bytes'])}) from Alice")
    await bob.transfers.accept(offer["id"])
    await next_event(bob_events, lambda e: e["type"] in ("transfer.done", "transfer.failed")
                     and e["id"] == offer["id"], "the file arriving")
    seconds = time.monotonic() - began
    record = await bob.transfers.describe_one(offer["id"])
    if record["status"] != "done":
        raise DemoFailed(f"the transfer {record['status']}: {record['error']}")
    received = downloads / FILE_NAME
    same = await asyncio.to_thread(_sha256, received) == await asyncio.to_thread(
        _sha256, source)
    if not same:
        raise DemoFailed("the received file differs from the one Alice sent")
    tour.result(f"it arrived in {seconds:.2f} s ({human_bytes(FILE_SIZE / seconds)}/s), "
                f"every chunk checked, byte-identical: {safe(str(received))}")
    tour.facts["file"] = {"bytes": FILE_SIZE, "seconds": round(seconds, 3),
                          "identical": same, "path": str(received)}
    tour.facts["file_received_s"] = round(tour.elapsed(), 3)
    tour.facts["file_received_at"] = time.time()  # for timing from outside the process
    bob.events.unsubscribe(bob_events)
    alice.events.unsubscribe(alice_events)

    tour.step("A stranger's node can knock, and nothing more.")
    async with _node(tmp / "mallory") as mallory:
        knock = await mallory.ping(alice.public.address, "127.0.0.1", alice.port)
    if knock.contact:
        raise DemoFailed("a stranger was treated as a contact")
    tour.result("Mallory gets an answer as a stranger: she may ask to become a contact, "
                "which waits for Alice, and nothing else")
    return alice, bob


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(int(STEP_TIMEOUT / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise DemoFailed(f"timed out waiting for {what}")


async def run_demo(*, wait: bool, no_browser: bool, as_json: bool, started: float) -> None:
    tour = Tour(as_json, started)
    with tempfile.TemporaryDirectory(prefix="sidedoor-demo-") as name:
        tmp = Path(name)
        async with contextlib.AsyncExitStack() as stack:
            alice, bob = await run_tour(tour, tmp, stack)
            servers = [ControlServer(alice), ControlServer(bob)]
            for server in servers:
                await server.start()
                stack.push_async_callback(server.aclose)
            tour.facts["elapsed_s"] = round(tour.elapsed(), 3)
            urls = {node.name.lower(): server.web.login_url()
                    for node, server in zip((alice, bob), servers, strict=True)}
            opened = False
            if wait and not no_browser and browser_available():
                opened = all(webbrowser.open(u, new=2) for u in urls.values())
            tour.facts["homes"] = {"alice": str(alice.home), "bob": str(bob.home)}
            tour.facts["ui"] = urls
            tour.facts["opened"] = opened
            if as_json:
                click.echo(json.dumps(tour.facts, indent=2))
            else:
                _tell(tour, urls, opened, (alice.home, bob.home), wait)
            if wait:
                await _wait_for_ctrl_c()
    if not as_json:
        out.print("[dim]Everything the demo made is removed.[/]")


def _tell(tour: Tour, urls: dict[str, str], opened: bool, homes: tuple[Path, Path],
          wait: bool) -> None:
    out.print(f"\n[bold]Done in {tour.facts['elapsed_s']:.1f} s[/] (the file was in Bob's "
              f"folder {tour.facts['file_received_s']:.1f} s after the start).")
    if not wait:
        return
    if opened:
        out.print("\nAlice's and Bob's web pages are open in your browser: write to each "
                  "other, send files by dropping them on the conversation.")
    else:
        out.print("\nOpen these in your browser (each link works once, within a minute) "
                  "to use Alice's and Bob's web pages:")
    for who, url in urls.items():
        out.print(f"  {who.title()}: ", end="")
        click.echo(url)
    out.print("\nOr use the command line, in another terminal:")
    out.print(f"  sidedoor --home {homes[1]} chat Alice")
    out.print(f"  sidedoor --home {homes[0]} send <file> --to Bob")
    out.print(f"  sidedoor --home {homes[0]} open --no-browser   [dim]# a new sign-in link[/]")
    out.print("\nPress Ctrl-C to stop both nodes and the broker and remove everything.")


async def _wait_for_ctrl_c() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@click.command("demo")
@click.option("--no-browser", is_flag=True,
              help="Print the two web UIs' sign-in links instead of opening them.")
@click.option("--no-wait", is_flag=True,
              help="Stop and clean up right after the steps (for scripts and tests).")
@click.option("--json", "as_json", is_flag=True,
              help="Print what happened as one JSON object instead of the steps.")
def demo_command(no_browser: bool, no_wait: bool, as_json: bool) -> None:
    """Try sidedoor on this machine: a broker, Alice and Bob, in about ten seconds.

    In a temporary folder (127.0.0.1 only, nothing on your network), a broker and two
    nodes start. Alice invites Bob with a one-time code, they chat, Bob gets a message
    left while his node was off, and Alice sends him a 64 MB file, checked byte for
    byte. Then both web UIs open in your browser (or their links are printed) and the
    nodes keep running until Ctrl-C, which removes everything.

    \b
    Examples:
      sidedoor demo
      sidedoor demo --no-browser          # on a machine without a desktop
      sidedoor demo --no-wait --json      # run the steps, print a summary, exit
    """
    started = time.monotonic()
    try:
        asyncio.run(run_demo(wait=not no_wait, no_browser=no_browser, as_json=as_json,
                             started=started))
    except DemoFailed as exc:
        raise click.ClickException(f"the demo failed: {exc}") from exc
