"""CLI commands for people: contacts, requests, adding, invites and links."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import segno
from rich.table import Table

from sidedoor.cli.common import Context, _ago, _api, _print_json, _run, out, pass_ctx, safe
from sidedoor.control.client import ControlClient
from sidedoor.errors import ContactError


def _call(ctx: Context, method: str, path: str, body: dict[str, Any] | None = None,
          timeout: float = 30.0) -> Any:
    return _run(_api(ctx.home, method, path, body, timeout=timeout))


def register(cli: click.Group) -> None:
    for command in (contacts_command, contact_group, requests_group, add_command,
                    invite_command, join_command, nearby_command):
        cli.add_command(command)


# ------------------------------------------------------------------ contacts

@click.command("contacts")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def contacts_command(ctx: Context, as_json: bool) -> None:
    """List your contacts: name, address, online / away / offline, last seen, verified?

    \b
    Example:
      sidedoor contacts
      sidedoor contacts --json
    """
    data = _call(ctx, "GET", "/v1/contacts")["contacts"]
    if as_json:
        _print_json(data)
        return
    if not data:
        out.print("No contacts yet. Invite a colleague: [bold]sidedoor invite[/]")
        return
    table = Table()
    for column in ("Name", "Address", "Presence", "Last seen", "Verified", "Path"):
        table.add_column(column)
    for c in data:
        name = safe(c["petname"]) + (" [red](blocked)[/]" if c["blocked"] else "")
        table.add_row(name, safe(c["address"][:14]) + "…", c["presence"],
                      "now" if c["online"] else _ago(c["last_seen"]),
                      "yes" if c["verified"] else "no", safe(c.get("path") or "-"))
    out.print(table)


@click.group("contact")
def contact_group() -> None:
    """Change one contact: rename, remove, block, unblock, verify.

    A contact is named by its name, the start of its address, or its fingerprint.

    \b
    Example:
      sidedoor contact rename "Bob Builder" Bob
      sidedoor contact verify Bob
    """


def _contact_action(ctx: Context, who: str, action: str,
                    body: dict[str, Any] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = _call(ctx, "POST", f"/v1/contacts/{quote(who, safe='')}/{action}",
                                   body or {})
    return result


@contact_group.command("rename")
@click.argument("contact")
@click.argument("new_name")
@pass_ctx
def contact_rename(ctx: Context, contact: str, new_name: str) -> None:
    """Give a contact the name you know them by.

    \b
    Example:
      sidedoor contact rename "Bob Builder" Bob
    """
    result = _contact_action(ctx, contact, "rename", {"petname": new_name})
    out.print(f"Renamed to [bold]{safe(result['petname'])}[/]")


@contact_group.command("remove")
@click.argument("contact")
@pass_ctx
def contact_remove(ctx: Context, contact: str) -> None:
    """Remove a contact: they can no longer open sessions with you.

    \b
    Example:
      sidedoor contact remove Bob
    """
    _contact_action(ctx, contact, "remove")
    out.print("Removed.")


@contact_group.command("block")
@click.argument("contact")
@pass_ctx
def contact_block(ctx: Context, contact: str) -> None:
    """Block a contact: their connections are refused at the handshake.

    \b
    Example:
      sidedoor contact block Mallory
    """
    _contact_action(ctx, contact, "block")
    out.print("Blocked. `sidedoor contact unblock` undoes it.")


@contact_group.command("unblock")
@click.argument("contact")
@pass_ctx
def contact_unblock(ctx: Context, contact: str) -> None:
    """Unblock a contact.

    \b
    Example:
      sidedoor contact unblock Mallory
    """
    _contact_action(ctx, contact, "unblock")
    out.print("Unblocked.")


@contact_group.command("verify")
@click.argument("contact")
@click.option("--yes", is_flag=True, help="Mark as verified without asking.")
@pass_ctx
def contact_verify(ctx: Context, contact: str, yes: bool) -> None:
    """Compare safety words with a contact, then mark them verified.

    Read the words to each other (in person or by phone). The same words on both
    screens mean nobody is in between.

    \b
    Example:
      sidedoor contact verify Bob
    """
    # The node resolves CONTACT (name, start of address, fingerprint) exactly as it will
    # for the verify itself; the words shown are those of the contact that gets marked.
    info = _call(ctx, "GET", f"/v1/contacts/{quote(contact, safe='')}")
    name = safe(info["petname"])
    card_name = info.get("name") or ""
    aka = f" (on their card: {safe(card_name)})" if card_name not in ("", info["petname"]) else ""
    out.print(f"[bold]Contact[/]      {name}{aka}")
    out.print(f"[bold]Address[/]      {safe(info['address'])}")
    out.print(f"[bold]Fingerprint[/]  {safe(info['fingerprint'])}")
    out.print(f"Safety words with {name}: [bold]{safe(info['safety_words'])}[/]")
    if not yes and not click.confirm("Do they see the same words?", default=False):
        raise ContactError("not verified: the words must match on both screens")
    # By full address: the contact whose words were shown, whatever CONTACT could also mean.
    result = _contact_action(ctx, info["address"], "verify")
    out.print(f"[green]{safe(result['petname'])} is verified.[/]")


# ------------------------------------------------------------------ requests

@click.group("requests", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def requests_group(click_ctx: click.Context, as_json: bool) -> None:
    """Contact requests waiting for your answer (and the ones you sent).

    Compare the safety words with the person before you accept.

    \b
    Example:
      sidedoor requests
      sidedoor requests accept 3
      sidedoor requests decline 4
      sidedoor requests block 5
    """
    if click_ctx.invoked_subcommand is not None:
        return
    ctx = click_ctx.find_object(Context)
    assert ctx is not None
    data = _call(ctx, "GET", "/v1/requests")
    if as_json:
        _print_json(data)
        return
    if not data["incoming"]:
        out.print("No contact requests are waiting.")
    for r in data["incoming"]:
        out.print(f"[bold]#{safe(r['id'])}[/] {safe(r['name'] or '(no name)')} "
                  f"({safe(r['address'][:14])}…), {_ago(r['received_at'])}, via {safe(r['via'])}")
        if r["message"]:
            out.print(f"    “{safe(r['message'])}”")
        out.print(f"    safety words: [bold]{safe(r['safety_words'])}[/]")
    for r in data["outgoing"]:
        out.print(f"[dim]sent to {safe(r['name'] or '(no name)')} ({safe(r['address'][:14])}…), "
                  "waiting for them[/]")


@requests_group.command("accept")
@click.argument("request_id", type=int)
@pass_ctx
def requests_accept(ctx: Context, request_id: int) -> None:
    """Accept a contact request (see the numbers in `sidedoor requests`).

    \b
    Example:
      sidedoor requests accept 3
    """
    data = _call(ctx, "POST", f"/v1/requests/{request_id}/accept", {})
    name = safe(data["contact"]["petname"])
    out.print(f"[green]{name} is now a contact.[/]")
    if not data["told"]:
        out.print(f"[dim]{name} could not be reached just now; they will see it when they "
                  "next ask.[/]")


@requests_group.command("block")
@click.argument("request_id", type=int)
@pass_ctx
def requests_block(ctx: Context, request_id: int) -> None:
    """Decline a request and block its sender: their node is refused from now on.

    `sidedoor contact unblock NAME` undoes it.

    \b
    Example:
      sidedoor requests block 4
    """
    _call(ctx, "POST", f"/v1/requests/{request_id}/block", {})
    out.print("Declined and blocked.")


@requests_group.command("decline")
@click.argument("request_id", type=int)
@pass_ctx
def requests_decline(ctx: Context, request_id: int) -> None:
    """Decline a contact request.

    \b
    Example:
      sidedoor requests decline 4
    """
    _call(ctx, "POST", f"/v1/requests/{request_id}/decline", {})
    out.print("Declined.")


# ----------------------------------------------------------------------- add

@click.command("add")
@click.argument("who")
@click.option("--addr", "addrs", multiple=True, metavar="HOST:PORT",
              help="Where their node listens, when they are not nearby.")
@click.option("-m", "--message", default="", help="A short note shown with your request.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def add_command(ctx: Context, who: str, addrs: tuple[str, ...], message: str,
                as_json: bool) -> None:
    """Send a contact request to a colleague.

    WHO is someone from `sidedoor nearby` (their number, name or fingerprint), or
    an address, with --addr saying where their node listens.
    They see your request with safety words to compare, and accept or decline.

    \b
    Example:
      sidedoor add 2
      sidedoor add "Bob Builder" -m "Hi, it's Ann from sales"
      sidedoor add sdabc...xyz --addr 192.168.1.20:7070
    """
    body = {"address": who, "addrs": list(addrs), "message": message}
    data = _call(ctx, "POST", "/v1/add", body, timeout=60)
    if as_json:
        _print_json(data)
        return
    name = safe(data["name"]) if data["name"] else ""
    if data["status"] == "accepted":
        out.print(f"[green]{name or 'They'} and you are now contacts.[/]")
    else:
        out.print(f"Request sent. {name or 'They'} will see it in `sidedoor requests`.")


# -------------------------------------------------------------- invite, join

@click.command("invite")
@click.option("--link", "want_link", is_flag=True,
              help="Make a sidedoor:// link instead, for a colleague anywhere.")
@click.option("--qr", is_flag=True, help="Show the link as a QR code in the terminal.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also save the link's QR code as a PNG image.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="With a code: wait until the colleague joins (or the code fails).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts (does not wait).")
@pass_ctx
def invite_command(ctx: Context, want_link: bool, qr: bool, png: Path | None, wait: bool,
                   as_json: bool) -> None:
    """Invite a colleague: a one-time code to read to them, or a link to send.

    The code (like 7-guitar-orbit) works once, for 10 minutes, for a colleague on
    the same network, or anywhere when you both use the same broker
    (`sidedoor broker-add`): they run `sidedoor join 7-guitar-orbit` and you both
    become contacts. A wrong guess burns the code.

    The link (--link, --qr, --png) carries your signed contact card and a one-time
    token: whoever joins with it first becomes your contact.

    \b
    Example:
      sidedoor invite
      sidedoor invite --link --qr --png invite.png
    """
    if not (want_link or qr or png):
        data = _call(ctx, "POST", "/v1/invites", {})
        if as_json:
            _print_json(data)
            return
        code = safe(data["code"])
        out.print(f"Your invite code: [bold]{code}[/]")
        out.print("Read it to your colleague; on their computer they run:")
        out.print(f"  sidedoor join {code}")
        where = (f"anywhere through the broker {safe(data['broker'])}" if data.get("broker")
                 else "on this network")
        out.print(f"[dim]It works once, for 10 minutes, {where}.[/]")
        if wait:
            nameplate = int(data["code"].split("-")[0])
            try:
                with out.status("Waiting for your colleague…"):
                    outcome = _run(_wait_for_invite(ctx.home, nameplate, data["expires_at"]))
            except KeyboardInterrupt:
                out.print("Stopped waiting; the code stays valid until it expires.")
                return
            if outcome is None:
                raise ContactError("the code expired unused; make a new one with "
                                   "`sidedoor invite`")
            if outcome["type"] == "invite.failed":
                raise ContactError("someone tried the code and it did not match, so it is "
                                   "burned; check with your colleague and make a new one")
            out.print(f"[green]{safe(outcome.get('name') or 'Your colleague')} joined: "
                      "you are now contacts.[/]")
        return
    data = _call(ctx, "POST", "/v1/links", {})
    link = data["link"]
    if png is not None:
        segno.make(link, error="m").save(str(png), scale=6, border=2)
    if as_json:
        _print_json({"link": link, "png": str(png) if png else None})
        return
    out.print("Send this link to your colleague; it works once, for 7 days:")
    out.print(safe(link), overflow="fold")
    if qr:
        segno.make(link, error="m").terminal(compact=True)
    if png is not None:
        out.print(f"QR code saved to {safe(png)}")
    out.print("[dim]They run: sidedoor join '<link>'[/]")


async def _wait_for_invite(home: Path, nameplate: int, expires_at: float
                           ) -> dict[str, Any] | None:
    """The invite.accepted or invite.failed event for ``nameplate``; None when it expires."""

    async def watch() -> dict[str, Any] | None:
        async with ControlClient(home) as client:
            async for event in client.events():
                if event.get("nameplate") == nameplate and event["type"] in (
                        "invite.accepted", "invite.failed"):
                    return event
        return None

    try:
        return await asyncio.wait_for(watch(), max(1.0, expires_at - time.time()))
    except TimeoutError:
        return None


@click.command("nearby")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def nearby_command(ctx: Context, as_json: bool) -> None:
    """Colleagues' nodes seen on your network right now.

    Add one with `sidedoor add NUMBER` (or their name).

    \b
    Example:
      sidedoor nearby
      sidedoor add 2
    """
    data = _call(ctx, "GET", "/v1/nearby")
    if as_json:
        _print_json(data)
        return
    if not data["discovery"]:
        out.print("Discovery is off on this node (`sidedoor up` without --no-discovery, "
                  "or `sidedoor config set discovery on`).")
        return
    if not data["nearby"]:
        out.print("Nobody is visible on this network yet.")
        return
    table = Table()
    for column in ("#", "Name", "Fingerprint", "Contact"):
        table.add_column(column)
    for p in data["nearby"]:
        table.add_row(safe(p["number"]), safe(p["name"]), safe(p["fingerprint"]),
                      {"contact": "yes", "blocked": "blocked"}.get(p["standing"], "no"))
    out.print(table)


@click.command("join")
@click.argument("code_or_link")
@click.option("--wait", type=click.FloatRange(0.5, 120), default=15, show_default=True,
              help="Seconds to look for the colleague's node on the network.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def join_command(ctx: Context, code_or_link: str, wait: float, as_json: bool) -> None:
    """Join a colleague's invite: the code they read to you, or the link they sent.

    \b
    Example:
      sidedoor join 7-guitar-orbit
      sidedoor join 'sidedoor://add/...'
    """
    data = _call(ctx, "POST", "/v1/join", {"text": code_or_link, "wait": wait},
                 timeout=wait + 60)
    if as_json:
        _print_json(data)
        return
    if data["status"] == "accepted":
        out.print(f"[green]{safe(data['name'] or 'They')} and you are now contacts.[/]")
    else:
        out.print("Request sent; your colleague will see it in `sidedoor requests`.")
