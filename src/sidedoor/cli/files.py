"""CLI commands for files: send, and the transfers list with its actions."""

from __future__ import annotations

import os
import time
from typing import Any

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from sidedoor.cli.common import Context, _api, _print_json, _run, err, out, pass_ctx, safe
from sidedoor.errors import TransferError
from sidedoor.services.transfers import human_bytes

POLL_INTERVAL = 0.2
SEND_TIMEOUT = 3600.0  # hashing a large folder the first time takes a while


def _call(ctx: Context, method: str, path: str, body: dict[str, Any] | None = None,
          timeout: float = 30.0) -> Any:
    return _run(_api(ctx.home, method, path, body, timeout=timeout))


def register(cli: click.Group) -> None:
    for command in (send_command, transfers_group):
        cli.add_command(command)


def _what(t: dict[str, Any]) -> str:
    names = t["names"]
    shown = ", ".join(names[:2]) + (f" +{len(names) - 2}" if len(names) > 2 else "")
    return f"{shown} ({t['files']} file{'s' if t['files'] != 1 else ''})"


def _state(t: dict[str, Any]) -> str:
    status = str(t["status"])
    if t["activity"] and status not in ("done", "failed", "declined", "cancelled"):
        return f"{status}: {t['activity']!s}"
    if t["error"] and status in ("failed", "declined", "cancelled"):
        return f"{status}: {t['error']!s}"
    return status


# ---------------------------------------------------------------------- send

@click.command("send")
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=True, dir_okay=True))
@click.option("--to", "to", required=True, metavar="WHO",
              help="Who gets the files: a contact (name, start of the address, fingerprint) "
                   "or a room (its name, or #name when a contact has the same name).")
@click.option("-m", "--message", default="", help="A note shown with the offer.")
@click.option("--background", is_flag=True,
              help="Return at once; follow the transfer with `sidedoor transfers`.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def send_command(ctx: Context, paths: tuple[str, ...], to: str, message: str, background: bool,
                 as_json: bool) -> None:
    """Send files and folders to a contact or a room, straight to their PCs.

    Any size and any number of files. Every chunk is checked on arrival and each
    file again before it gets its name, so a damaged file is never left behind. If
    a contact is offline, the transfer waits and starts when you both are online;
    an interrupted transfer resumes where it stopped. The offer also appears in
    your conversation, as a message naming the files. To a room, each member who
    is your contact gets the files. Shows progress until everyone has everything
    (Ctrl-C stops watching, not the transfer).

    \b
    Examples:
      sidedoor send report.pdf --to bob -m "Q3 draft"
      sidedoor send photos/ notes.txt --to bob --background
      sidedoor send slides.pdf --to eng
    """
    absolute = [os.path.abspath(p) for p in paths]
    sent = _call(ctx, "POST", "/v1/transfers", {"paths": absolute, "to": to, "note": message},
                 timeout=SEND_TIMEOUT)
    for skipped in sent.get("skipped", [])[:10]:
        err.print(f"[yellow]skipped[/] {safe(skipped)} (a link or special file)")
    left_out = sent.get("skipped_members", [])
    if left_out and not as_json:
        err.print(f"[yellow]{len(left_out)} member(s) of the room are not your contacts[/] "
                  "and get no files from you; another member can send them on.")
    transfers: list[dict[str, Any]] = sent.get("transfers") or [sent]
    if background:
        if as_json:
            _print_json(sent)
            return
        for t in transfers:
            out.print(f"Transfer [bold]{t['short']}[/] to {safe(t['peer_name'])}: "
                      f"{safe(_what(t))}, {human_bytes(t['total_bytes'])}.")
        out.print("Follow it with: sidedoor transfers")
        return
    finals = _follow(ctx, transfers, quiet=as_json)
    if as_json:
        _print_json({**sent, **finals[0], "transfers": finals})
    unfinished = [t for t in finals if t["status"] != "done"]
    if unfinished:
        raise TransferError("; ".join(f"transfer {t['short']} to {t['peer_name']} {_state(t)}"
                                      for t in unfinished))
    if not as_json:
        who = ", ".join(safe(t["peer_name"]) for t in finals)
        out.print(f"[green]Sent[/] {safe(_what(finals[0]))} to {who}; "
                  "they have everything.")


TERMINAL = ("done", "failed", "declined", "cancelled")


def _follow(ctx: Context, transfers: list[dict[str, Any]], quiet: bool
            ) -> list[dict[str, Any]]:
    """Poll the node until every transfer ends, with progress bars unless ``quiet``."""
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(), console=err, disable=quiet,
        transient=False)
    finals: dict[str, dict[str, Any]] = {}
    try:
        with progress:
            tasks = {t["id"]: progress.add_task(safe(t["peer_name"]), total=t["total_bytes"])
                     for t in transfers}
            while len(finals) < len(transfers):
                for t in transfers:
                    if t["id"] in finals:
                        continue
                    info = _call(ctx, "GET", f"/v1/transfers/{t['id']}")
                    label = f"{safe(info['peer_name'])}: {safe(_state(info))}"
                    progress.update(tasks[t["id"]], completed=info["done_bytes"],
                                    description=label[:60])
                    if info["status"] in TERMINAL:
                        finals[t["id"]] = dict(info)
                if len(finals) < len(transfers):
                    time.sleep(POLL_INTERVAL)
    except KeyboardInterrupt:
        left = " ".join(t["short"] for t in transfers if t["id"] not in finals)
        err.print(f"Stopped watching; the transfers go on. Cancel with: "
                  f"sidedoor transfers cancel {left}")
        raise SystemExit(130) from None
    return [finals[t["id"]] for t in transfers]


# ----------------------------------------------------------------- transfers

@click.group("transfers", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def transfers_group(click_ctx: click.Context, as_json: bool) -> None:
    """Your transfers, both directions: queued, waiting, running, done, failed.

    Without a subcommand, lists them (newest first). A transfer is named by the
    start of its id, as the list shows it.

    \b
    Examples:
      sidedoor transfers
      sidedoor transfers accept 3f9a12bc --to ~/Desktop
      sidedoor transfers decline 3f9a12bc
      sidedoor transfers cancel 3f9a12bc
      sidedoor transfers retry 3f9a12bc
    """
    if click_ctx.invoked_subcommand is not None:
        return
    ctx = click_ctx.find_object(Context)
    assert ctx is not None
    data = _call(ctx, "GET", "/v1/transfers")["transfers"]
    if as_json:
        _print_json(data)
        return
    if not data:
        out.print("No transfers yet. Send something: [bold]sidedoor send FILE --to NAME[/]")
        return
    table = Table()
    for column in ("ID", "With", "What", "Size", "Status", "Done", "Speed", "ETA"):
        table.add_column(column)
    for t in data:
        arrow = "→" if t["direction"] == "out" else "←"
        total = t["total_bytes"]
        done = f"{100 * t['done_bytes'] / total:.0f}%" if total else "-"
        speed = f"{human_bytes(t['speed'])}/s" if t["speed"] else ""
        eta = f"{t['eta']:.0f} s" if t["eta"] is not None else ""
        table.add_row(safe(t["short"]), f"{arrow} {safe(t['peer_name'])}", safe(_what(t)),
                      human_bytes(total), safe(_state(t)), done, speed, eta)
    out.print(table)
    waiting = [t for t in data if t["direction"] == "in" and t["status"] == "offered"]
    if waiting:
        out.print(f"[dim]Accept with: sidedoor transfers accept {safe(waiting[0]['short'])}[/]")


def _action(ctx: Context, tid: str, action: str, body: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    if not tid or "/" in tid:
        raise TransferError(f"{tid!r} is not a transfer id (see `sidedoor transfers`)")
    result: dict[str, Any] = _call(ctx, "POST", f"/v1/transfers/{tid}/{action}", body or {},
                                   timeout=60)
    return result


@transfers_group.command("accept")
@click.argument("transfer")
@click.option("--to", "dest", type=click.Path(file_okay=False), default=None,
              help="The folder to put the files in (default: `sidedoor config get downloads`).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def accept_command(ctx: Context, transfer: str, dest: str | None, as_json: bool) -> None:
    """Accept files offered to you; they arrive in the background.

    \b
    Example:
      sidedoor transfers accept 3f9a12bc --to ~/Desktop
    """
    body = {"dest": os.path.abspath(os.path.expanduser(dest))} if dest else {}
    info = _action(ctx, transfer, "accept", body)
    if as_json:
        _print_json(info)
        return
    out.print(f"Accepted {safe(_what(info))} from {safe(info['peer_name'])} into "
              f"{safe(info['dest'])}. Follow it with: sidedoor transfers")


def _simple(name: str, verb: str, doc: str) -> click.Command:
    @click.argument("transfer")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
    @pass_ctx
    def command(ctx: Context, transfer: str, as_json: bool) -> None:
        info = _action(ctx, transfer, name)
        if as_json:
            _print_json(info)
            return
        out.print(f"{verb} transfer {safe(info['short'])} ({safe(_what(info))}): "
                  f"{safe(_state(info))}")

    command.__doc__ = doc
    return transfers_group.command(name)(command)


_simple("decline", "Declined", """Refuse files offered to you; the sender is told.

    \b
    Example:
      sidedoor transfers decline 3f9a12bc
    """)
_simple("cancel", "Cancelled", """Stop a transfer, either direction; partial files are removed.

    \b
    Example:
      sidedoor transfers cancel 3f9a12bc
    """)
_simple("retry", "Retrying", """Start a failed or cancelled transfer again.

    Sending: the files are offered anew (a new id). Receiving: it resumes from what
    is already verified.

    \b
    Example:
      sidedoor transfers retry 3f9a12bc
    """)
