"""CLI commands for chat: say, chat (interactive), history, inbox, rooms."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any
from urllib.parse import quote, urlencode

import click
from rich.table import Table

from sidedoor.cli.common import (
    Context,
    _api,
    _print_json,
    _run,
    err,
    out,
    pass_ctx,
    printable,
    safe,
)
from sidedoor.control.client import ControlClient
from sidedoor.errors import SidedoorError
from sidedoor.proto.presence import TYPING_EVERY, TYPING_SHOWN_FOR

HISTORY_ON_OPEN = 30
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MARKS = {"pending": "·", "mailed": "✉", "sent": "·", "delivered": "✓", "read": "✓✓",
         "failed": "✗"}


def register(cli: click.Group) -> None:
    for command in (say_command, chat_command, history_command, inbox_command,
                    rooms_command, room_group):
        cli.add_command(command)


def _call(ctx: Context, method: str, path: str, body: dict[str, Any] | None = None,
          timeout: float = 30.0) -> Any:
    return _run(_api(ctx.home, method, path, body, timeout=timeout))


def _conv_path(who: str) -> str:
    return f"/v1/chat/conversations/{quote(who, safe='')}"


def parse_since(text: str) -> int:
    """``2d``, ``3h``, ``90m``, ``45s``, ``1w`` -> milliseconds since the epoch."""
    match = _DURATION.match(text)
    if not match:
        raise click.BadParameter("use a number and a unit: 45s, 90m, 3h, 2d, 1w",
                                 param_hint="--since")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    return int((time.time() - seconds) * 1000)


def _clock(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))


def line(m: dict[str, Any], *, day: bool = True) -> str:
    """One message as rich markup: time, who, text, and our delivery mark."""
    when = _clock(m["order_at"]) if day else _clock(m["order_at"])[11:]
    who = "you" if m["mine"] else m["sender_name"]
    mark = ""
    if m["mine"]:
        mark = f" [dim]{MARKS.get(m['state'], '')}[/]"
        if m["state"] == "failed":
            mark += f" [red]{safe(m.get('error') or 'refused')}[/]"
        receipts = m.get("receipts")
        if receipts:
            mark += f" [dim]({sum(1 for v in receipts.values() if v)} got it)[/]"
    style = "bold cyan" if m["mine"] else "bold"
    where = f"[magenta]#{safe(m['room'])}[/] " if m.get("room") and day else ""
    return f"[dim]{when}[/] {where}[{style}]{safe(who)}[/]: {safe(m['text'])}{mark}"


# ---------------------------------------------------------------------- say

@click.command("say")
@click.argument("who")
@click.argument("text", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the stored message as JSON.")
@pass_ctx
def say_command(ctx: Context, who: str, text: tuple[str, ...], as_json: bool) -> None:
    """Send TEXT to a contact or a room; returns as soon as it is stored here.

    Delivery goes on in the background: at once if WHO is online, else as soon
    as they are (the message waits in your outbox). `sidedoor history WHO`
    shows ✓ once it is delivered and ✓✓ once it is read.

    \b
    Examples:
      sidedoor say bob "lunch at 12?"
      sidedoor say eng standup moved to 10:15
      sidedoor say '#eng' "a room, if a contact has the same name"
    """
    message = _call(ctx, "POST", _conv_path(who) + "/messages", {"text": " ".join(text)})
    if as_json:
        _print_json(message)
        return
    target = f"#{message['room']}" if message["room"] else who
    out.print(f"[green]Stored[/] for {safe(target)}; delivering in the background.")


# ------------------------------------------------------------------ history

@click.command("history")
@click.argument("who", required=False)
@click.option("--since", "since", default=None, metavar="AGE",
              help="Only messages newer than AGE: 45s, 90m, 3h, 2d, 1w.")
@click.option("--search", "search", default=None, metavar="TEXT",
              help="Full-text search over all conversations (whole words).")
@click.option("-n", "--limit", type=click.IntRange(1, 1000), default=200, show_default=True,
              help="At most this many messages (the newest).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def history_command(ctx: Context, who: str | None, since: str | None, search: str | None,
                    limit: int, as_json: bool) -> None:
    """Show a conversation, oldest first, with what became of your messages.

    Marks after your messages: · stored here, ✉ in their mailbox, ✓ delivered,
    ✓✓ read, ✗ refused.

    \b
    Examples:
      sidedoor history bob
      sidedoor history eng --since 2d
      sidedoor history --search budget
      sidedoor history bob --json
    """
    if search is not None:
        if who is not None:
            raise click.UsageError("--search looks in every conversation; leave WHO out")
        data = _call(ctx, "GET", "/v1/chat/search?" + urlencode({"q": search,
                                                                 "limit": limit}))
        messages = data["messages"]
        if as_json:
            _print_json(messages)
            return
        if not messages:
            out.print(f"Nothing matches {safe(search)!s}.")
        for m in reversed(messages):
            out.print(line(m))
        return
    if who is None:
        raise click.UsageError("name a contact or a room, or use --search TEXT")
    query = {"limit": limit}
    if since is not None:
        query["since"] = parse_since(since)
    data = _call(ctx, "GET", _conv_path(who) + "/messages?" + urlencode(query))
    if as_json:
        _print_json(data["messages"])
        return
    conv = data["conversation"]
    title = f"#{conv['name']}" if conv["kind"] == "room" else conv["name"]
    out.print(f"[bold]{safe(title)}[/]")
    if not data["messages"]:
        out.print("[dim]No messages yet.[/]")
    for m in data["messages"]:
        out.print(line(m))


# -------------------------------------------------------------------- inbox

@click.command("inbox")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def inbox_command(ctx: Context, as_json: bool) -> None:
    """Unread messages, counted per conversation.

    \b
    Example:
      sidedoor inbox
    """
    data = _call(ctx, "GET", "/v1/chat/inbox")
    if as_json:
        _print_json(data)
        return
    if not data["unread"]:
        out.print("No unread messages.")
        return
    table = Table()
    for column in ("Conversation", "Unread", "Newest"):
        table.add_column(column)
    for c in data["unread"]:
        name = f"#{c['name']}" if c["kind"] == "room" else c["name"]
        table.add_row(safe(name), str(c["unread"]), _clock(c["newest_at"]))
    out.print(table)


# -------------------------------------------------------------------- rooms

def _print_room(room: dict[str, Any]) -> None:
    status = "" if room["status"] == "active" else f" [yellow]({safe(room['status'])})[/]"
    out.print(f"[bold]#{safe(room['name'])}[/]{status}  {len(room['members'])} members, "
              f"version {room['version']}" + ("  [dim](you are an admin)[/]"
                                              if room["admin"] else ""))


@click.command("rooms")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def rooms_command(ctx: Context, as_json: bool) -> None:
    """List your rooms.

    \b
    Example:
      sidedoor rooms
    """
    rooms = _call(ctx, "GET", "/v1/chat/rooms")["rooms"]
    if as_json:
        _print_json(rooms)
        return
    if not rooms:
        out.print("No rooms yet. Make one: [bold]sidedoor room create eng --with bob carol[/]")
    for room in rooms:
        _print_room(room)


@click.group("room")
def room_group() -> None:
    """Group rooms: create, add, remove, leave.

    The creator is the room's admin: only admins add and remove members, and
    every member's node checks the admin's signature on each change.

    \b
    Examples:
      sidedoor room create eng --with bob carol
      sidedoor room add eng dave
      sidedoor room remove eng carol
      sidedoor room leave eng
    """


def _room_path(name: str, action: str) -> str:
    return f"/v1/chat/rooms/{quote(name, safe='')}/{action}"


@room_group.command("create")
@click.argument("name")
@click.option("--with", "members", multiple=True, required=True, metavar="WHO",
              help="A contact to add (repeat it, or list several after one --with).")
@click.argument("more", nargs=-1, metavar="[WHO]...")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def room_create(ctx: Context, name: str, members: tuple[str, ...], more: tuple[str, ...],
                as_json: bool) -> None:
    """Create a room called NAME with some of your contacts.

    \b
    Example:
      sidedoor room create eng --with bob carol
    """
    room = _call(ctx, "POST", "/v1/chat/rooms", {"name": name,
                                                 "members": [*members, *more]})
    if as_json:
        _print_json(room)
        return
    out.print("[green]Room created.[/]")
    _print_room(room)


def _change(ctx: Context, name: str, action: str, who: tuple[str, ...]) -> None:
    room = _call(ctx, "POST", _room_path(name, action), {"members": list(who)})
    _print_room(room)


@room_group.command("add")
@click.argument("name")
@click.argument("who", nargs=-1, required=True)
@pass_ctx
def room_add(ctx: Context, name: str, who: tuple[str, ...]) -> None:
    """Add contacts to a room (admins only); they catch up on its history.

    \b
    Example:
      sidedoor room add eng dave
    """
    _change(ctx, name, "add", who)


@room_group.command("remove")
@click.argument("name")
@click.argument("who", nargs=-1, required=True)
@pass_ctx
def room_remove(ctx: Context, name: str, who: tuple[str, ...]) -> None:
    """Remove members from a room (admins only); they get nothing more from it.

    \b
    Example:
      sidedoor room remove eng carol
    """
    _change(ctx, name, "remove", who)


@room_group.command("leave")
@click.argument("name")
@pass_ctx
def room_leave(ctx: Context, name: str) -> None:
    """Leave a room: you get nothing more from it; its admins remove you.

    \b
    Example:
      sidedoor room leave eng
    """
    room = _call(ctx, "POST", _room_path(name, "leave"), {})
    out.print(f"You left [bold]#{safe(room['name'])}[/].")


# --------------------------------------------------------------------- chat

@click.command("chat")
@click.argument("who")
@pass_ctx
def chat_command(ctx: Context, who: str) -> None:
    """Talk with a contact or a room, live, in this terminal.

    Type and press Enter to send; messages from the others appear above the
    prompt as they come, with ✓ when yours are delivered and ✓✓ when read, and a
    line when someone starts typing (they see the same of you). /quit (or Ctrl-D)
    leaves. Works over SSH.

    \b
    Example:
      sidedoor chat bob
    """
    with contextlib.suppress(KeyboardInterrupt, EOFError):
        _run(_chat(ctx, who))


async def _chat(ctx: Context, who: str) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    async with ControlClient(ctx.home) as client:
        conv = await client.call("GET", _conv_path(who))
        data = await client.call(
            "GET", _conv_path(conv["id"] if conv["kind"] == "room" else conv["address"])
            + f"/messages?limit={HISTORY_ON_OPEN}")
        target = _conv_path(conv["id"] if conv["kind"] == "room" else conv["address"])
        title = f"#{conv['name']}" if conv["kind"] == "room" else conv["name"]
        online = " (online)" if conv.get("online") else ""
        out.print(f"[bold]{safe(title)}[/]{safe(online)}  [dim]/quit to leave[/]")
        for m in data["messages"]:
            out.print(line(m, day=False))
        await client.call("POST", target + "/read", {})
        mine: dict[str, str] = {}
        # When each person last typed here (monotonic s): one line per burst of typing.
        typed_at: dict[str, float] = {}
        session: PromptSession[str] = PromptSession()
        tasks: set[asyncio.Task[Any]] = set()
        typing_sent = 0.0

        def typed(_: object) -> None:
            # Tell the others we are typing: at most every TYPING_EVERY s, best effort.
            nonlocal typing_sent
            now = time.monotonic()
            if not session.default_buffer.text.strip() or now - typing_sent < TYPING_EVERY:
                return
            typing_sent = now
            task = asyncio.get_running_loop().create_task(client.call("POST", target + "/typing",
                                                                      {}))
            tasks.add(task)
            task.add_done_callback(forget)

        def forget(task: asyncio.Task[Any]) -> None:
            tasks.discard(task)
            if not task.cancelled():
                task.exception()  # retrieved: a lost typing signal matters to nobody

        session.default_buffer.on_text_changed += typed

        async def follow() -> None:
            async for event in client.events():
                kind = event["type"]
                if kind == "chat.message":
                    m = event["message"]
                    if m["conversation"] != conv["id"] or m["id"] in mine:
                        continue
                    typed_at.pop(m["sender"], None)
                    out.print(line(m, day=False))
                    if not m["mine"]:
                        await client.call("POST", target + "/read", {})
                elif kind == "chat.typing" and event["conversation"] == conv["id"]:
                    now = time.monotonic()
                    last = typed_at.get(event["address"])
                    typed_at[event["address"]] = now
                    if last is None or now - last > TYPING_SHOWN_FOR:
                        out.print(f"[dim italic]{safe(event['name'])} is typing…[/]")
                elif kind in ("chat.delivered", "chat.read", "chat.failed"):
                    if event["conversation"] != conv["id"]:
                        continue
                    ids = event.get("ids") or [event.get("id")]
                    for mid in ids:
                        if mid in mine:
                            text = printable(mine[mid])[:40]
                            if kind == "chat.failed":
                                err.print(f"[red]✗ not delivered[/]: {safe(text)} "
                                          f"({safe(event.get('reason', ''))})")
                            else:
                                mark = MARKS["delivered" if kind == "chat.delivered"
                                             else "read"]
                                out.print(f"[dim]{mark} {safe(text)}[/]")
                elif kind == "presence.changed" and event["address"] == conv.get("address"):
                    state = "online" if event["online"] else "offline"
                    out.print(f"[dim]{safe(conv['name'])} is {state}[/]")
                elif kind == "presence.away" and event["address"] == conv.get("address"):
                    state = "away" if event["away"] else "back"
                    out.print(f"[dim]{safe(conv['name'])} is {state}[/]")

        with patch_stdout(raw=True):
            watcher = asyncio.get_running_loop().create_task(follow())
            try:
                while True:
                    try:
                        text = await session.prompt_async("> ")
                    except (EOFError, KeyboardInterrupt):
                        break
                    if text.strip() in ("/quit", "/q", "/exit"):
                        break
                    if not text.strip():
                        continue
                    try:
                        sent = await client.call("POST", target + "/messages", {"text": text})
                    except SidedoorError as exc:
                        err.print(f"[red]not sent:[/] {safe(exc)}")
                        continue
                    mine[sent["id"]] = text
                    out.print(line(sent, day=False))
                    if watcher.done():
                        break
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, SidedoorError):
                    await watcher
