"""`sidedoor` with no command, and `sidedoor open`: the way in for people who do not use a CLI.

`sidedoor` creates the identity if there is none (asking only for a display name),
starts the node in the background if it is not running, and opens the web UI through
a one-time login link. Run again, it only opens the UI.
"""

from __future__ import annotations

import getpass
import os
import sys
import webbrowser
from pathlib import Path
from typing import Any

import click

from sidedoor.cli.common import Context, _api, _print_json, _run, err, out, pass_ctx, safe
from sidedoor.daemon import start_detached
from sidedoor.errors import NodeNotRunning
from sidedoor.home import ensure_home
from sidedoor.identity import KEY_FILE, load_or_create_identity
from sidedoor.names import clean_name
from sidedoor.node import DEFAULT_NAME
from sidedoor.storage.db import write_setting

NAME_PROMPT = "Your name, as colleagues will see it"


def os_user_name() -> str:
    """The user's full name from the OS when it has one, else the login name."""
    try:
        import pwd

        full = pwd.getpwuid(os.getuid()).pw_gecos.split(",")[0].strip()
    except (ImportError, KeyError):
        full = ""
    if not full:
        try:
            full = getpass.getuser()
        except (OSError, KeyError):
            full = ""
    return clean_name(full) or DEFAULT_NAME


def interactive() -> bool:
    return sys.stdin.isatty()


def _ask_name() -> str:
    default = os_user_name()
    if not interactive():
        return default  # a script or a launcher: nobody to ask
    for _ in range(3):
        name = clean_name(click.prompt(NAME_PROMPT, default=default))
        if name:
            return name
        err.print("A name is 1 to 64 printable characters.")
    return default


def ensure_identity(home: Path) -> bool:
    """Create the identity (and ask for a name) on first run; True if it was created."""
    ensure_home(home)
    if (home / KEY_FILE).exists():
        load_or_create_identity(home)  # checks the key file is sound and private
        return False
    name = _ask_name()
    _, created = load_or_create_identity(home)
    write_setting(home, "name", name)
    out.print(f"[green]Welcome, {safe(name)}.[/] Your sidedoor identity is ready.")
    return created


def ensure_running(ctx: Context) -> bool:
    """Start the node in the background unless it runs; True if this call started it."""
    try:
        _run(_api(ctx.home, "GET", "/v1/status", timeout=5))
        return False
    except NodeNotRunning:
        pass
    start_detached(ctx.home, host="0.0.0.0", port=None, debug=ctx.debug)
    return True


def browser_available() -> bool:
    # Without a display, webbrowser would fall back to a text browser in this terminal.
    if sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True


def open_ui(ctx: Context, *, no_browser: bool, as_json: bool = False,
            created: bool = False, started: bool = False) -> None:
    login: dict[str, Any] = _run(_api(ctx.home, "POST", "/v1/web/login"))
    url = str(login["url"])
    opened = False
    if not no_browser and browser_available():
        try:
            opened = webbrowser.open(url, new=2)
        except webbrowser.Error:
            opened = False
    if as_json:
        _print_json({"url": url, "opened": opened, "started": started, "created": created,
                     "home": str(ctx.home)})
        return
    if started:
        out.print("[green]sidedoor is running[/] in the background "
                  "(stop it with `sidedoor down`).")
    if opened:
        out.print("sidedoor is open in your browser. If it did not appear, open this link "
                  "(it works once, within a minute):")
    else:
        out.print("Open this link in your browser to use sidedoor "
                  "(it works once, within a minute):")
    click.echo(url)


def start_and_open(ctx: Context, no_browser: bool) -> None:
    """What `sidedoor` with no command does."""
    created = ensure_identity(ctx.home)
    started = ensure_running(ctx)
    open_ui(ctx, no_browser=no_browser, created=created, started=started)


@click.command("open")
@click.option("--no-browser", is_flag=True, help="Print the sign-in link instead of opening it.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def open_command(ctx: Context, no_browser: bool, as_json: bool) -> None:
    """Open the web UI of your running node in your browser.

    The browser signs in with a link that works once, within a minute; without a
    browser (or with --no-browser) the link is printed for you to open.
    To start the node too, run `sidedoor` with no command.

    \b
    Example:
      sidedoor open
      sidedoor open --no-browser
    """
    try:
        open_ui(ctx, no_browser=no_browser, as_json=as_json)
    except NodeNotRunning:
        raise NodeNotRunning(f"no node is running for {ctx.home}; run `sidedoor --home "
                             f"{ctx.home}` to start it and open the UI") from None
