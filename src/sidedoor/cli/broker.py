"""`sidedoor broker` (run one) and `broker-add` / `broker-remove` / `brokers` (use one)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import platformdirs

from sidedoor.broker.server import BrokerServer
from sidedoor.cli.common import Context, _api, _print_json, _run, out, pass_ctx, safe
from sidedoor.proto.broker import BrokerAddress


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return host.strip("[]") or "0.0.0.0", int(port)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not HOST:PORT") from None


@click.command("broker")
@click.option("--listen", default="0.0.0.0:7700", show_default=True, metavar="HOST:PORT",
              help="Where nodes connect (sessions and relays share this one TCP port).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The broker's key and mailbox. Default: the user data folder.")
@click.option("--public-host", default=None, metavar="NAME",
              help="The name or IP nodes use to reach this machine, for the printed address.")
@click.option("--health", default=None, metavar="HOST:PORT",
              help="Serve GET /health (counts as JSON) here, e.g. 127.0.0.1:7701.")
@click.option("--max-relays", default=512, show_default=True,
              help="Relays spliced at once; more are refused (nodes then retry).")
@click.option("--relay-idle", default=120.0, show_default=True,
              help="Seconds a relay may stay silent both ways before it is cut.")
@click.option("--mailbox-max", default=2000, show_default=True,
              help="Envelopes one recipient's mailbox holds (one sender may use a quarter).")
@click.option("--mailbox-mib", default=64, show_default=True,
              help="MiB one recipient's mailbox holds (one sender may use a quarter).")
@click.option("--tap-dir", hidden=True, type=click.Path(file_okay=False, path_type=Path),
              help="Tests only: write every relayed byte to files here.")
def broker_command(listen: str, data: Path | None, public_host: str | None,
                   health: str | None, max_relays: int, relay_idle: float,
                   mailbox_max: int, mailbox_mib: int, tap_dir: Path | None) -> None:
    """Run a broker: it helps nodes behind NATs find and reach each other.

    A broker registers nodes (soft state), tells a node's contacts where it is,
    coordinates TCP hole punching, relays when nothing else works, and keeps sealed
    mail for nodes that are offline. Sessions are end-to-end encrypted: the broker
    sees who talks to whom and how much, never what.

    Deploying: any small machine whose TCP port nodes can reach will do (a VM with a
    public IP, or one inside the office network). Open the --listen port, run this
    under a service manager, and give users the printed address:

    \b
      sidedoor broker --listen 0.0.0.0:7700 --public-host broker.example.org
      # on each PC:
      sidedoor broker-add 'sidedoor-broker://broker.example.org:7700/sd...'

    The key and mailbox live in --data; keep that folder (the address includes the key).
    Logs hold addresses and counts, never message content.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    host, port = _hostport(listen)
    data_dir = data or Path(platformdirs.user_data_dir("sidedoor")) / "broker"
    health_addr = _hostport(health) if health else None
    tap: Callable[[bytes], None] | None = None
    if tap_dir is not None:
        tap_dir.mkdir(parents=True, exist_ok=True)
        tap_file = (tap_dir / f"relayed-{os.getpid()}.bin").open("ab", buffering=0)
        tap = tap_file.write  # type: ignore[assignment]
    _run(_serve(BrokerServer(
        data_dir, host, port, public_host=public_host, max_relays=max_relays,
        relay_idle=relay_idle, mailbox_quota=(mailbox_max, mailbox_mib << 20),
        health=health_addr, tap=tap)))


async def _serve(broker: BrokerServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with broker:
        out.print(f"Broker running. Its address (give it to users):\n  {broker.url()}")
        if broker.health_addr is not None:
            out.print(f"Health: http://{broker.health_addr[0]}:{broker.health_port}/health")
        out.print("Stop with Ctrl-C.")
        out.file.flush()  # under a service manager or a pipe, the address must show now
        await stop.wait()
    out.print("Broker stopped.")


@click.command("broker-add")
@click.argument("url")
@pass_ctx
def broker_add_command(ctx: Context, url: str) -> None:
    """Use a broker: your contacts can then reach you from anywhere.

    URL is what `sidedoor broker` printed, sidedoor-broker://HOST:PORT/KEY. The node
    keeps one connection to it, registers, and tells your contacts (your contact card
    names it). Several brokers may be used.

    \b
    Example:
      sidedoor broker-add 'sidedoor-broker://203.0.113.7:7700/sdabc...'
    """
    BrokerAddress.parse(url)  # a clear error before asking the node
    link = _run(_api(ctx.home, "POST", "/v1/brokers", {"url": url}))
    _wait_registered(ctx, link)


def _wait_registered(ctx: Context, link: dict[str, Any]) -> None:
    deadline = time.monotonic() + 10
    while link["state"] != "registered" and time.monotonic() < deadline:
        time.sleep(0.2)
        links = _run(_api(ctx.home, "GET", "/v1/brokers"))
        link = next((b for b in links if b["url"] == link["url"]), link)
    if link["state"] == "registered":
        out.print(f"Registered at {safe(link['host'])}; it sees you as "
                  f"{safe(link['observed'])}.")
    else:
        out.print(f"Added {safe(link['host'])}, not connected yet"
                  + (f": {safe(link['error'])}" if link["error"] else "")
                  + ". The node keeps trying.")


@click.command("broker-remove")
@click.argument("url")
@pass_ctx
def broker_remove_command(ctx: Context, url: str) -> None:
    """Stop using a broker."""
    _run(_api(ctx.home, "POST", "/v1/brokers/remove", {"url": url}))
    out.print("Removed.")


@click.command("brokers")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def brokers_command(ctx: Context, as_json: bool) -> None:
    """The brokers this node uses, and whether it is registered at each."""
    links = _run(_api(ctx.home, "GET", "/v1/brokers"))
    if as_json:
        _print_json(links)
        return
    if not links:
        out.print("No broker. Contacts reach you on this network only; add one with "
                  "`sidedoor broker-add URL`.")
        return
    for link in links:
        line = f"{safe(link['host'])}  {safe(link['state'])}"
        if link["observed"]:
            line += f"  (seen as {safe(link['observed'])})"
        if link["error"] and link["state"] != "registered":
            line += f"  {safe(link['error'])}"
        out.print(line)


NAT_WORDS = {
    "none": "no NAT: contacts can dial you directly",
    "port-preserving": "behind a NAT that keeps ports: hole punching works",
    "port-changing": "behind a NAT that changes ports: contacts behind NATs go through "
                     "the relay",
    "unknown": "NAT not known yet",
}


def print_broker_status(status: dict[str, Any]) -> None:
    for link in status.get("brokers", []):
        if link["state"] == "registered":
            out.print(f"[bold]Broker[/]      registered at {safe(link['host'])}, "
                      f"public address {safe(link['observed'])} "
                      f"({NAT_WORDS.get(link.get('nat', 'unknown'), 'NAT not known')})")
        else:
            out.print(f"[bold]Broker[/]      {safe(link['host'])}: {safe(link['state'])}"
                      + (f" ({safe(link['error'])})" if link["error"] else ""))

