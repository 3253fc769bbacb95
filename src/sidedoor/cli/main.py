"""The `sidedoor` command.

Exit codes: 0 ok, 1 failure (one clear line on stderr), 2 usage error.
`--debug` shows tracebacks and verbose logs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from sidedoor import __version__, allocator, event_loop
from sidedoor.cli import chat as chat_cli
from sidedoor.cli import files, people, web
from sidedoor.cli import presence as presence_cli
from sidedoor.cli.broker import (
    broker_add_command,
    broker_command,
    broker_remove_command,
    brokers_command,
    print_broker_status,
)
from sidedoor.cli.common import Context, _ago, _api, _print_json, _run, err, out, pass_ctx, safe
from sidedoor.cli.config import config_group
from sidedoor.cli.demo import demo_command
from sidedoor.control.server import parse_host_port
from sidedoor.daemon import run_node, setup_logging, start_detached, wait_for_exit
from sidedoor.errors import NodeAlreadyRunning, NodeError, NodeNotRunning, SidedoorError
from sidedoor.home import ensure_home, resolve_home
from sidedoor.identity import load_or_create_identity
from sidedoor.names import clean_name
from sidedoor.node import DEFAULT_NAME, Node, PingResult
from sidedoor.storage.db import Database, write_setting


class SidedoorGroup(click.Group):
    """Turns sidedoor's errors into one line and exit code 1 (tracebacks only with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SidedoorError as exc:
            if "--debug" in sys.argv:
                raise
            # The message may carry a peer's words (a reason, a name): shown as text, on one line.
            err.print(f"[bold red]error:[/] {safe(exc)}")
            ctx.exit(1)


@click.group(cls=SidedoorGroup, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The node's folder (identity, database, logs). "
                   "Default: $SIDEDOOR_HOME, else your user data folder.")
@click.option("--debug", is_flag=True, help="Show tracebacks and verbose logs.")
@click.option("--no-browser", is_flag=True,
              help="With no command: print the sign-in link instead of opening the browser.")
@click.version_option(__version__, prog_name="sidedoor")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, debug: bool, no_browser: bool) -> None:
    """sidedoor: talk and pass files to colleagues, PC to PC, with no server.

    \b
    Just run `sidedoor`: it sets you up, starts your node in the
    background and opens sidedoor in your browser.

    \b
    First steps on the command line:
      sidedoor id                 create your identity and show your address
      sidedoor name "Ada Lovelace"
      sidedoor up --detach        start your node in the background
      sidedoor status             what your node is doing

    Run several nodes on one machine with --home DIR (or SIDEDOOR_HOME).
    """
    ctx.obj = Context(resolve_home(home), debug)
    if ctx.invoked_subcommand is None:
        web.start_and_open(ctx.obj, no_browser)


# ------------------------------------------------------------------ id / name

@cli.command("id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def id_command(ctx: Context, as_json: bool) -> None:
    """Show your address, name and safety fingerprint (creates the identity on first use).

    Your address is what colleagues use to reach you; it is your public key, so it
    stays the same on any network. Compare the fingerprint words with a colleague
    to be sure you have each other's real address.

    \b
    Example:
      sidedoor id
      sidedoor --home /tmp/a id --json
    """
    home = ensure_home(ctx.home)
    identity, created = load_or_create_identity(home)
    db = Database(home)
    try:
        name = db.get_setting("name") or DEFAULT_NAME
    finally:
        db.close()
    info = {"address": identity.address, "name": name,
            "fingerprint": identity.public.fingerprint(), "home": str(home), "created": created}
    if as_json:
        _print_json(info)
        return
    if created:
        out.print(f"[green]Created a new identity in {safe(home)}[/]")
    out.print(f"[bold]Name[/]         {safe(name)}")
    out.print(f"[bold]Address[/]      {safe(identity.address)}")
    out.print(f"[bold]Fingerprint[/]  {safe(info['fingerprint'])}")
    if name == DEFAULT_NAME:
        out.print('[dim]Set your name: sidedoor name "Your Name"[/]')


@cli.command("name")
@click.argument("new_name")
@pass_ctx
def name_command(ctx: Context, new_name: str) -> None:
    """Set the display name colleagues see.

    \b
    Example:
      sidedoor name "Alice Example"
    """
    new_name = new_name.strip()
    if not new_name or len(new_name) > 64:
        raise click.BadParameter("a name is 1 to 64 characters", param_hint="NEW_NAME")
    home = ensure_home(ctx.home)
    load_or_create_identity(home)
    try:
        # A running node keeps the name in memory: tell it.
        new_name = _run(_api(home, "POST", "/v1/name", {"name": new_name}))["name"]
    except NodeNotRunning:
        new_name = clean_name(new_name)
        write_setting(home, "name", new_name)
    out.print(f"Your name is now [bold]{safe(new_name)}[/]")


# ---------------------------------------------------------------- up / down

@cli.command("up")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="TCP port for peers (default: the one used last time, else any free one).")
@click.option("--host", default="0.0.0.0", show_default=True,
              help="Address to listen on for peers.")
@click.option("--detach", is_flag=True, help="Run in the background and return.")
@click.option("--no-discovery", is_flag=True,
              help="Do not announce this node on the LAN or look for colleagues there "
                   "(also: `sidedoor config set discovery off`).")
@pass_ctx
def up_command(ctx: Context, port: int | None, host: str, detach: bool,
               no_discovery: bool) -> None:
    """Run your node (in the foreground; Ctrl-C stops it cleanly).

    While the node runs, colleagues can reach you and the other commands
    (status, ping, ...) talk to it. One node runs per home folder.

    \b
    Examples:
      sidedoor up                  # foreground, Ctrl-C to stop
      sidedoor up --detach         # background; stop with `sidedoor down`
      sidedoor --home /tmp/b up --port 7071
    """
    home = ensure_home(ctx.home)
    load_or_create_identity(home)
    if detach:
        if _running_pid(home):
            raise NodeAlreadyRunning(f"a node is already running for {home}")
        pid = start_detached(home, host=host, port=port, debug=ctx.debug,
                             discovery=not no_discovery)
        status = _run(_api(home, "GET", "/v1/status"))
        out.print(f"[green]Node started[/] in the background (pid {pid}).")
        _print_status(status)
        out.print(f"[dim]Stop it with: sidedoor --home {safe(home)} down[/]")
        return
    setup_logging(home, debug=ctx.debug, to_stderr=ctx.debug)
    allocator.tune_for_bulk_io()

    def ready(status: dict[str, Any]) -> None:
        out.print("[green]Node running.[/] Press Ctrl-C to stop.")
        _print_status(status)

    event_loop.run(run_node(home, host=host, port=port, discovery=not no_discovery,
                            on_ready=ready))
    out.print("Node stopped.")


def _running_pid(home: Path) -> int | None:
    """The pid of the node running for ``home``, or None when none runs.

    Only NodeNotRunning means "none runs". Any other failure (the API slow, or
    answering with an error) is reported: starting anyway would remove the running
    node's control.json and leave it unreachable.
    """
    try:
        status = _run(_api(home, "GET", "/v1/status", timeout=5))
    except NodeNotRunning:
        return None
    except SidedoorError as exc:
        raise NodeError(
            f"cannot tell whether the node for {home} is running ({exc}); not starting "
            f"another. Try `sidedoor --home {home} status`, or see its log"
        ) from exc
    return int(status["pid"])


@cli.command("down")
@pass_ctx
def down_command(ctx: Context) -> None:
    """Stop the node running in the background.

    \b
    Example:
      sidedoor down
    """
    status = _run(_api(ctx.home, "GET", "/v1/status", timeout=5))
    _run(_api(ctx.home, "POST", "/v1/shutdown", {}))
    if not wait_for_exit(ctx.home, timeout=15):
        raise SidedoorError(f"the node (pid {status['pid']}) did not stop within 15 s")
    out.print("Node stopped.")


# ------------------------------------------------------------------- status

def _print_status(status: dict[str, Any]) -> None:
    out.print(f"[bold]Name[/]        {safe(status['name'])}")
    out.print(f"[bold]Address[/]     {safe(status['address'])}")
    out.print(f"[bold]Fingerprint[/] {safe(status['fingerprint'])}")
    out.print(f"[bold]Listening[/]   {safe(', '.join(status['listening']))}")
    print_broker_status(status)


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def status_command(ctx: Context, as_json: bool) -> None:
    """Is the node running? Its addresses, uptime and live sessions.

    Exits 1 when no node is running.

    \b
    Example:
      sidedoor status --json
    """
    try:
        status = _run(_api(ctx.home, "GET", "/v1/status", timeout=10))
    except NodeNotRunning as exc:
        if as_json:
            _print_json({"running": False, "home": str(ctx.home)})
            sys.exit(1)
        raise exc
    if as_json:
        _print_json(status)
        return
    started = _ago(time.time() - status["uptime"])
    out.print(f"[green]Running[/] (pid {safe(status['pid'])}, started {started})")
    _print_status(status)
    sessions = status["sessions"]
    if not sessions:
        out.print("[dim]No live sessions.[/]")
        return
    table = Table(title="Sessions", title_justify="left")
    for column in ("Peer", "Fingerprint", "Direction", "Path", "Remote", "Since"):
        table.add_column(column)
    for s in sessions:
        table.add_row(*(safe(cell) for cell in (
            s["address"][:14] + "…", s["fingerprint"], s["direction"], s["path"],
            s["remote_addr"], _ago(s["since"]))))
    out.print(table)


# --------------------------------------------------------------------- ping

@cli.command("ping")
@click.argument("who")
@click.option("--addr", "addr", default=None, metavar="HOST:PORT",
              help="Dial this address instead of finding the contact (any node, by ADDRESS).")
@click.option("-c", "--count", type=click.IntRange(1, 100), default=3, show_default=True,
              help="How many round trips to measure.")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=10.0, show_default=True,
              help="Seconds to wait for the connection and each answer.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def ping_command(ctx: Context, who: str, addr: str | None, count: int, timeout: float,
                 as_json: bool) -> None:
    """Check that a contact (or any node) answers, by which path, and how fast.

    WHO is a contact's name or address: your running node reaches it however it can
    (the session already open, the LAN, its last address, or through a broker:
    punched or relayed) and reports the path. With --addr HOST:PORT, WHO is a node's
    address and that exact place is dialled (it works without a running node).
    Either way the node must prove it holds the key behind its address.

    \b
    Examples:
      sidedoor ping bob
      sidedoor ping sdabc...xyz --addr 127.0.0.1:7070
    """
    from sidedoor.identity import PublicIdentity

    if addr is None:
        body: dict[str, Any] = {"who": who, "count": count, "timeout": timeout}
        data = _run(_api(ctx.home, "POST", "/v1/ping", body, timeout=timeout * (count + 2)))
    else:
        PublicIdentity.from_address(who)  # a typo fails here, before any network
        host, port = parse_host_port(addr)
        body = {"address": who, "addr": addr, "count": count, "timeout": timeout}
        try:
            data = _run(_api(ctx.home, "POST", "/v1/ping", body,
                             timeout=timeout * (count + 2)))
        except NodeNotRunning:
            data = _run(_ping_direct(ctx.home, who, host, port, count, timeout)).as_dict()
    if as_json:
        _print_json(data)
        return
    rtts = data["rtts_ms"]
    note = "reachable; not a contact" if not data["contact"] else "reachable"
    how = (f"handshake {safe(data['pattern'])} {data['handshake_ms']:.1f} ms"
           if data["handshake_ms"] else "session already open")
    out.print(f"[green]{note}[/]: {safe(data['address'][:14])}… at {safe(data['addr'])} "
              f"(path: {safe(data['path'])}, {how})")
    for i, rtt in enumerate(rtts, 1):
        out.print(f"  round trip {i}: {rtt:.2f} ms")
    if len(rtts) > 1:
        out.print(f"  min/avg/max {min(rtts):.2f}/{sum(rtts) / len(rtts):.2f}/{max(rtts):.2f} ms")


async def _ping_direct(home: Path, address: str, host: str, port: int, count: int,
                       timeout: float) -> PingResult:
    # A one-shot node on a loopback port only this command uses.
    async with Node(home, host="127.0.0.1", port=0, remember_port=False) as node:
        return await node.ping(address, host, port, count=count, timeout=timeout)


people.register(cli)
chat_cli.register(cli)
presence_cli.register(cli)
cli.add_command(demo_command)
cli.add_command(web.open_command)
cli.add_command(broker_command)
cli.add_command(broker_add_command)
cli.add_command(broker_remove_command)
cli.add_command(brokers_command)
cli.add_command(config_group)
files.register(cli)


def main() -> None:
    cli(prog_name="sidedoor")


if __name__ == "__main__":
    main()

