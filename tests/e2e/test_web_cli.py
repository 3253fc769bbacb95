"""`sidedoor` with no command and `sidedoor open`, run as a user runs them (subprocesses).

Nodes started here have LAN discovery switched off first (`config set discovery off`),
so nothing is announced on this machine's network.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import as_json, failed, ok, sd, sd_in, stop_node

from sidedoor.cli import web as web_cli
from sidedoor.identity import KEY_FILE

URL = re.compile(r"^http://127\.0\.0\.1:(\d+)/login\?t=[A-Za-z0-9_-]{20,}$", re.MULTILINE)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def login_status(url: str) -> int:
    """The status a browser gets for the login link (303 and a cookie when it is good)."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        if exc.code == 303:
            assert "HttpOnly" in exc.headers["Set-Cookie"]
        return exc.code


@pytest.fixture
def fresh_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "fresh"
    ok(sd_in(home, "config", "set", "discovery", "off"))
    try:
        yield home
    finally:
        stop_node(home)


def test_bare_sidedoor_sets_up_starts_and_prints_a_login_link(fresh_home: Path) -> None:
    assert not (fresh_home / KEY_FILE).exists()
    first = ok(sd(fresh_home, "--no-browser"))
    assert "Welcome" in first.stdout and "running in the background" in first.stdout
    found = URL.search(first.stdout)
    assert found, first.stdout
    ident = as_json(sd_in(fresh_home, "id", "--json"))
    assert ident["name"] == web_cli.os_user_name()  # stdin is not a terminal: the default
    status = as_json(sd_in(fresh_home, "status", "--json"))
    assert status["control_port"] == int(found.group(1))
    assert login_status(found.group(0)) == 303
    assert login_status(found.group(0)) == 403  # once only

    # Run again: the same node, no new identity, just a new link.
    again = ok(sd(fresh_home, "--no-browser"))
    assert "Welcome" not in again.stdout and "running in the background" not in again.stdout
    second = URL.search(again.stdout)
    assert second and second.group(0) != found.group(0)
    assert as_json(sd_in(fresh_home, "status", "--json"))["pid"] == status["pid"]
    assert login_status(second.group(0)) == 303


def test_open_prints_json_for_scripts(fresh_home: Path) -> None:
    ok(sd(fresh_home, "--no-browser"))
    info = as_json(sd(fresh_home, "open", "--no-browser", "--json"))
    assert URL.fullmatch(info["url"]) and info["opened"] is False and info["started"] is False


def test_open_without_a_node_says_how_to_start_one(tmp_path: Path) -> None:
    failed(sd(tmp_path / "none", "open"), "no node is running", "run `sidedoor")


def test_help_is_still_the_group_help(tmp_path: Path) -> None:
    result = ok(sd(tmp_path / "h", "--help"))
    assert "Usage:" in result.stdout and "Commands:" in result.stdout
    assert "open" in result.stdout
    assert not (tmp_path / "h").exists()  # --help does not set anything up


def test_first_run_asks_for_a_name_on_a_terminal(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_cli, "interactive", lambda: True)
    from click.testing import CliRunner

    home = tmp_path / "asked"
    with CliRunner().isolation(input="  Ada \x1b[31mLovelace\n"):
        assert web_cli.ensure_identity(home) is True
    assert as_json(sd_in(home, "id", "--json"))["name"] == "Ada [31mLovelace"
    with CliRunner().isolation(input="\n"):
        assert web_cli.ensure_identity(home) is False  # never asked twice


def test_first_run_takes_the_default_name_on_enter(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_cli, "interactive", lambda: True)
    from click.testing import CliRunner

    home = tmp_path / "enter"
    with CliRunner().isolation(input="\n"):
        web_cli.ensure_identity(home)
    assert as_json(sd_in(home, "id", "--json"))["name"] == web_cli.os_user_name()


def test_no_display_means_no_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert web_cli.browser_available() is False
