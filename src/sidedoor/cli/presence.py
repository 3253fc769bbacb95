"""`sidedoor away` and `sidedoor back`: tell your contacts whether you are at your desk."""

from __future__ import annotations

import click

from sidedoor.cli.common import Context, _api, _print_json, _run, out, pass_ctx


def register(cli: click.Group) -> None:
    cli.add_command(away_command)
    cli.add_command(back_command)


def _set(ctx: Context, away: bool, as_json: bool) -> None:
    me = _run(_api(ctx.home, "POST", "/v1/presence", {"away": away}))
    if as_json:
        _print_json(me)
    elif away:
        out.print("Your contacts now see you as [bold]away[/]. Messages still arrive; "
                  "`sidedoor back` when you return.")
    else:
        out.print("Your contacts now see you as [bold]online[/].")


@click.command("away")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def away_command(ctx: Context, as_json: bool) -> None:
    """Show your contacts that you are away from your desk.

    Messages and files still arrive as usual; contacts see "away" next to your
    name until you run `sidedoor back` (it lasts across restarts).

    \b
    Example:
      sidedoor away
    """
    _set(ctx, True, as_json)


@click.command("back")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def back_command(ctx: Context, as_json: bool) -> None:
    """Show your contacts that you are back (online) after `sidedoor away`.

    \b
    Example:
      sidedoor back
    """
    _set(ctx, False, as_json)
