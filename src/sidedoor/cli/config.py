"""`sidedoor config`: read and change this node's settings.

Settings live in the node's database, so they can be changed whether the node runs
or not. ``discovery`` applies when the node next starts; ``downloads`` and
``auto-accept`` apply to the next offer, ``fsync`` and ``direct-writes`` to the next
transfer that starts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from sidedoor.cli.common import Context, out, pass_ctx, safe
from sidedoor.errors import ContactError
from sidedoor.home import ensure_home
from sidedoor.identity import PublicIdentity
from sidedoor.services.contacts import ContactBook
from sidedoor.services.transfers import (
    SETTING_AUTO_ACCEPT,
    SETTING_DIRECT_WRITES,
    SETTING_DOWNLOADS,
    SETTING_FSYNC,
    default_downloads,
)
from sidedoor.storage.db import Database

KEYS = ("auto-accept", "direct-writes", "discovery", "downloads", "fsync")
# The on/off settings: their key in the database, default, and when a change applies.
SWITCHES = {
    "discovery": ("discovery", "on", "restart the node for it to apply: sidedoor down; "
                                     "sidedoor up"),
    "fsync": (SETTING_FSYNC, "off", "for transfers that start from now on"),
    "direct-writes": (SETTING_DIRECT_WRITES, "on", "for transfers that start from now on"),
}


def _with_db(ctx: Context, fn: Callable[[Database], str]) -> str:
    db = Database(ensure_home(ctx.home))
    try:
        return fn(db)
    finally:
        db.close()


def _trusted(db: Database) -> list[str]:
    return [a for a in (db.get_setting(SETTING_AUTO_ACCEPT, "") or "").split(",") if a]


def _names(db: Database, addresses: list[str]) -> str:
    book = ContactBook(db)
    shown = []
    for address in addresses:
        contact = book.get(PublicIdentity.from_address(address).key)
        shown.append(contact.petname if contact is not None else address[:14] + "…")
    return ", ".join(shown) if shown else "nobody"


@click.group("config")
def config_group() -> None:
    """Read or change a setting of this node.

    \b
    Settings:
      discovery      on | off  announce this node on the LAN and see colleagues there
      downloads      FOLDER    where accepted files go
                               (default: your downloads folder, in a sidedoor subfolder)
      auto-accept    CONTACT   files from this contact are accepted without asking
                               (set adds one contact; unset removes it, or everyone)
      fsync          on | off  on: each received file is written through to the disk
                               before it gets its name (safe from a power cut; slower,
                               about 1 ms more per file). Default off, like cp, scp
                               and rsync
      direct-writes  on | off  on: files of 64 MiB and more go straight to the disk,
                               around the system's file cache: less CPU, and the
                               cache keeps what your programs use. off: through the
                               cache, like cp, scp and rsync, which can be faster
                               onto a disk slower than the network (a USB stick).
                               Default on

    \b
    Example:
      sidedoor config set discovery off
      sidedoor config set downloads ~/Incoming
      sidedoor config set auto-accept bob
      sidedoor config unset auto-accept bob
      sidedoor config get auto-accept
    """


@config_group.command("set")
@click.argument("key", type=click.Choice(KEYS))
@click.argument("value")
@pass_ctx
def config_set(ctx: Context, key: str, value: str) -> None:
    """Change a setting.

    \b
    Example:
      sidedoor config set discovery off
      sidedoor config set downloads /srv/incoming
      sidedoor config set auto-accept bob
    """
    if key in SWITCHES:
        setting, _, applies = SWITCHES[key]
        if value not in ("on", "off"):
            raise click.BadParameter(f"{key} is one of: on, off", param_hint="VALUE")

        def set_switch(db: Database) -> str:
            db.set_setting(setting, value)
            return value

        _with_db(ctx, set_switch)
        out.print(f"{key} = {value} ({applies})")
    elif key == "downloads":
        folder = Path(value).expanduser().absolute()
        if folder.exists() and not folder.is_dir():
            raise click.BadParameter(f"{folder} is not a folder", param_hint="VALUE")

        def set_downloads(db: Database) -> str:
            db.set_setting(SETTING_DOWNLOADS, str(folder))
            return str(folder)

        _with_db(ctx, set_downloads)
        out.print(f"Accepted files will go to {safe(folder)}")
    else:
        def add_trusted(db: Database) -> str:
            contact = ContactBook(db).resolve(value)
            if contact.blocked:
                raise ContactError(f"{contact.petname} is blocked; unblock them first")
            trusted = _trusted(db)
            if contact.public.address not in trusted:
                trusted.append(contact.public.address)
            db.set_setting(SETTING_AUTO_ACCEPT, ",".join(trusted))
            return _names(db, trusted)

        names = _with_db(ctx, add_trusted)
        out.print(f"Files are accepted without asking from: {safe(names)}")


@config_group.command("unset")
@click.argument("key", type=click.Choice(("auto-accept", "downloads")))
@click.argument("value", required=False)
@pass_ctx
def config_unset(ctx: Context, key: str, value: str | None) -> None:
    """Back to the default: downloads to your downloads folder; auto-accept nobody (or one
    contact less).

    \b
    Example:
      sidedoor config unset auto-accept bob
      sidedoor config unset auto-accept
      sidedoor config unset downloads
    """
    if key == "downloads":
        def reset(db: Database) -> str:
            db.set_setting(SETTING_DOWNLOADS, "")
            return ""

        _with_db(ctx, reset)
        out.print(f"Accepted files will go to {safe(default_downloads())}")
        return

    def remove_trusted(db: Database) -> str:
        trusted = _trusted(db)
        if value is None:
            trusted = []
        else:
            address = ContactBook(db).resolve(value).public.address
            trusted = [a for a in trusted if a != address]
        db.set_setting(SETTING_AUTO_ACCEPT, ",".join(trusted))
        return _names(db, trusted)

    names = _with_db(ctx, remove_trusted)
    out.print(f"Files are accepted without asking from: {safe(names)}")


@config_group.command("get")
@click.argument("key", type=click.Choice(KEYS))
@pass_ctx
def config_get(ctx: Context, key: str) -> None:
    """Show a setting.

    \b
    Example:
      sidedoor config get discovery
      sidedoor config get downloads
    """
    def get(db: Database) -> str:
        if key in SWITCHES:
            setting, default, _ = SWITCHES[key]
            return db.get_setting(setting, default) or default
        if key == "downloads":
            return db.get_setting(SETTING_DOWNLOADS) or str(default_downloads())
        return _names(db, _trusted(db))

    click.echo(_with_db(ctx, get))
